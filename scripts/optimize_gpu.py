"""Fuses a float32 ONNX export for ONNX Runtime's CUDA provider and converts it to float16, with ONNX Runtime's own
Stable Diffusion optimizer (onnxruntime.transformers.models.stable_diffusion.optimize_pipeline): attention as one
MultiHeadAttention node (flash / memory-efficient kernels), GroupNorm, NHWC convolutions, BiasSplitGelu, BiasAdd,
packed QKV; float16 inputs and outputs. The fused operators run on the CUDA provider only, and LoRAs cannot be merged
into the result (fused weights lose their layer names): it is a model for GPU nodes that paint without LoRAs.

ONNX Runtime 1.30's attention fusion calls int() on one-element arrays, which NumPy 2 refuses; the one method that
does is replaced here by the same logic with .item().

Usage: python scripts/optimize_gpu.py FP32_DIR OUT_DIR [--cpu-safe]   (or scripts/convert-model SRC NAME --fused)
  --cpu-safe  leave out the fusions only the CUDA provider runs (for trying the result on the CPU)
"""
import logging
import sys

import numpy as np
from onnxruntime.transformers.models.stable_diffusion import optimize_pipeline

import fusion_attention_unet  # importable once optimize_pipeline's package put ONNX Runtime's folder on sys.path

CUDA_ONLY = ["--disable_group_norm", "--disable_skip_group_norm", "--disable_nhwc_conv", "--disable_bias_splitgelu",
             "--disable_bias_add", "--disable_packed_qkv", "--disable_packed_kv"]


def get_num_heads(self, reshape_q, is_torch2=False):
    """FusionAttentionUnet.get_num_heads: num_heads from the shape [0, 0, num_heads, head_size] Q is reshaped to."""
    if is_torch2:
        parent = self.model.get_parent(reshape_q, 1)
        if parent and parent.op_type == "Concat" and len(parent.input) == 4:
            value = self.model.get_constant_value(parent.input[2])
            if isinstance(value, np.ndarray) and list(value.shape) == [1]:
                return max(int(value.item()), 0)
        return 0
    value = self.model.get_constant_value(reshape_q.input[1])
    if isinstance(value, np.ndarray) and list(value.shape) == [4]:
        return max(int(value[2].item()), 0)
    return 0


def optimize(fp32_dir, out_dir, cpu_safe=False):
    """Writes the fused float16 model made from the float32 export in `fp32_dir` to `out_dir`."""
    fusion_attention_unet.FusionAttentionUnet.get_num_heads = get_num_heads
    extra = CUDA_ONLY if cpu_safe else []
    optimize_pipeline.main(["-i", fp32_dir, "-o", out_dir, "--float16", "--overwrite"] + extra)


def main():
    args = [a for a in sys.argv[1:] if a != "--cpu-safe"]
    if len(args) != 2:
        raise SystemExit(__doc__)
    logging.basicConfig(format="%(funcName)20s: %(message)s", level=logging.INFO)
    optimize(args[0], args[1], cpu_safe="--cpu-safe" in sys.argv)


if __name__ == "__main__":
    main()
