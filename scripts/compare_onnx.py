"""Compares two ONNX model folders component by component on the same random inputs (for scripts/test-convert):
prints the largest difference per component and exits 1 when one exceeds the tolerance.

Usage: python scripts/compare_onnx.py A_DIR B_DIR [--tolerance 1e-4]
"""
import argparse
import os
import sys

import numpy as np
import onnxruntime as ort

TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
         "tensor(int32)": np.int32}


def feed(session, rng):
    inputs = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else {"sequence_length": 77}.get(d, 2 if "batch" in d else 8)
                 for d in i.shape]
        dtype = TYPES[i.type]
        if np.issubdtype(dtype, np.integer):
            inputs[i.name] = rng.integers(0, 49407, size=shape).astype(dtype)
        elif i.name == "timestep":
            inputs[i.name] = np.array(500, dtype=dtype).reshape(shape)
        elif i.name == "time_ids":
            inputs[i.name] = np.tile(np.array([64, 64, 0, 0, 64, 64], dtype=dtype), (shape[0], 1))
        else:
            inputs[i.name] = rng.standard_normal(shape).astype(dtype)
    return inputs


def main():
    p = argparse.ArgumentParser()
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--tolerance", type=float, default=1e-4)
    args = p.parse_args()
    worst = 0.0
    for component in ["text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder"]:
        pa, pb = (os.path.join(d, component, "model.onnx") for d in (args.a, args.b))
        if not os.path.exists(pa):
            continue
        sa, sb = ort.InferenceSession(pa), ort.InferenceSession(pb)
        inputs = feed(sa, np.random.default_rng(0))
        if component == "unet" and "encoder_hidden_states" in inputs:
            inputs["encoder_hidden_states"] = inputs["encoder_hidden_states"][:, :77]
        ya, yb = sa.run(None, inputs)[0], sb.run(None, inputs)[0]
        diff = float(np.abs(ya.astype(np.float32) - yb.astype(np.float32)).max())
        scale = float(np.abs(ya).max())
        print(f"{component}: max |a - b| = {diff:.3g} (outputs up to {scale:.3g})")
        worst = max(worst, diff / max(scale, 1.0))
    sys.exit(0 if worst <= args.tolerance else 1)


if __name__ == "__main__":
    main()
