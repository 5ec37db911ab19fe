"""The Python peer of `huabi bench engine`: the same pipeline (CLIP tokenizer, text encoder with the unconditional
rows in the same batch, seeded latents, Euler with classifier-free guidance as one batched UNet call per step, VAE
decode one item at a time as diffusers does) with Python onnxruntime on the same ONNX files and the same thread count.
Prints one JSON line per batch size with the fields huabi prints.

Usage: python scripts/bench_engine.py MODEL_DIR --threads 2 --width 64 --height 64 --steps 4 --batches 1,2,4 --runs 5
Needs: onnxruntime==1.31.1, numpy, transformers (for CLIPTokenizer).
"""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort
from transformers import CLIPTokenizer


def euler_schedule(cfg, steps):
    T = cfg.get("num_train_timesteps", 1000)
    betas = np.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, T, dtype=np.float32) ** 2
    ac = np.cumprod(1.0 - betas, dtype=np.float32)
    table = ((1 - ac) / ac) ** 0.5
    spacing = cfg.get("timestep_spacing", "linspace")
    if spacing == "leading":
        ts = (np.arange(steps) * (T // steps)).round()[::-1].astype(np.float32) + cfg.get("steps_offset", 0)
    elif spacing == "trailing":
        ts = np.arange(T, 0, -T / steps).round().astype(np.float32) - 1
    else:
        ts = np.linspace(0, T - 1, steps, dtype=np.float32)[::-1].copy()
    sigmas = np.concatenate([np.interp(ts, np.arange(T), table), [0.0]]).astype(np.float32)
    init = sigmas.max() if spacing in ("linspace", "trailing") else (sigmas.max() ** 2 + 1) ** 0.5
    return ts, sigmas, np.float32(init)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batches", default="1,2,4")
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    load = lambda c: ort.InferenceSession(f"{a.model}/{c}/model.onnx", opts, providers=["CPUExecutionProvider"])
    te, unet, vae = load("text_encoder"), load("unet"), load("vae_decoder")
    tok = CLIPTokenizer.from_pretrained(f"{a.model}/tokenizer")
    cfg = json.load(open(f"{a.model}/scheduler/scheduler_config.json"))
    vae_cfg = json.load(open(f"{a.model}/vae_decoder/config.json"))
    f = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    scaling = vae_cfg.get("scaling_factor", 0.18215)
    ids_type = np.int32 if te.get_inputs()[0].type == "tensor(int32)" else np.int64
    t_in = next(i for i in unet.get_inputs() if i.name == "timestep")
    t_type = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}[t_in.type]
    h, w = a.height // f, a.width // f

    def generate(b):
        t0 = time.perf_counter()
        texts = [""] * b + ["a photo of the moon, mid-autumn festival"] * b
        ids = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids.astype(ids_type)
        emb = te.run(None, {"input_ids": ids})[0]
        t1 = time.perf_counter()
        ts, sigmas, init = euler_schedule(cfg, a.steps)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((b, 4, h, w)).astype(np.float32) * init
        for i, t in enumerate(ts):
            s = sigmas[i]
            inp = np.concatenate([x, x]) / np.float32((s * s + 1) ** 0.5)
            tt = np.array([t] * (2 * b) if t_in.shape and t_in.shape[0] != 1 else [t], dtype=t_type)
            eps = unet.run(None, {"sample": inp, "timestep": tt, "encoder_hidden_states": emb})[0]
            u, c = eps[:b], eps[b:]
            eps = u + np.float32(7.5) * (c - u)
            x0 = x - s * eps
            x = x + (x - x0) / s * (sigmas[i + 1] - s)
        t2 = time.perf_counter()
        images = [np.clip(vae.run(None, {"latent_sample": x[j : j + 1] / np.float32(scaling)})[0] / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1) for j in range(b)]
        t3 = time.perf_counter()
        return t3 - t0, t1 - t0, t2 - t1, t3 - t2, images

    for b in [int(v) for v in a.batches.split(",")]:
        generate(b)
        runs = [generate(b)[:4] for _ in range(max(1, a.runs))]
        med = lambda k: float(np.median([r[k] for r in runs]))
        total = med(0)
        print(json.dumps({"batch": b, "seconds": total, "seconds_per_image": total / b, "images_per_sec": b / total,
                          "text": med(1), "denoise": med(2), "decode": med(3)}))


if __name__ == "__main__":
    main()
