"""Converts an operator's Stable Diffusion model into the ONNX folder huabi paints with, through the ecosystem's own
tools: diffusers reads the checkpoint, optimum exports it (torch's TorchScript exporter, which names every node after
its module, so LoRAs can be merged later), ONNX Runtime's own float16 converter makes fp16 weights on request (it
keeps node and weight names, so LoRAs still merge; no operator fusion, which would hide the layers).

  SRC   a single-file checkpoint (.safetensors, or .ckpt loaded with weights_only) or a diffusers folder
  NAME  the model's name: the result is MODELS/NAME

Offline: single files are read against the configs and tokenizers shipped in scripts/convert-configs/ (SD 1.5 and
SDXL; --config DIR names another diffusers folder of configs). Weights never come from a hub.

Usage: scripts/convert-model SRC NAME [--sdxl] [--fp16 | --fused] [--config DIR] [--models DIR]
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "convert-configs")
COMPONENTS = ["text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder"]
# Above this, a component's weights go to model.onnx_data beside model.onnx (protobuf's 2 GB limit).
EXTERNAL_DATA_BYTES = 1_800_000_000


def load_single_file(src, sdxl, config):
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    config = config or os.path.join(CONFIGS, "sdxl" if sdxl else "sd15")
    return cls.from_single_file(src, config=config, local_files_only=True, torch_dtype=torch.float32)


def to_fp16(folder):
    """Weights to float16, inputs and outputs kept float32 (huabi reads the element types from the sessions)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    for component in COMPONENTS:
        path = os.path.join(folder, component, "model.onnx")
        if not os.path.isfile(path):
            continue
        # Types are inferred from the file: the converter's own inference serialises the model, which protobuf
        # refuses beyond 2 GB (an SD 1.5 UNet in float32 is 3.4 GB).
        inferred = os.path.join(os.path.dirname(path), "inferred.onnx")
        onnx.shape_inference.infer_shapes_path(path, inferred)
        model = onnx.load(inferred, load_external_data=True)
        model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
        for f in os.listdir(os.path.dirname(path)):
            if f != "config.json":
                os.remove(os.path.join(os.path.dirname(path), f))
        save(model, path)


def save(model, path):
    import onnx

    if model.ByteSize() > EXTERNAL_DATA_BYTES:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx_data")
    else:
        onnx.save_model(model, path)


def export_fused(diffusers_dir, out, sdxl):
    """diffusers folder -> a float32 export -> ONNX Runtime's fused float16 model for the CUDA provider at `out`."""
    from optimize_gpu import optimize

    work = tempfile.mkdtemp(prefix="huabi-fp32-")
    try:
        export_onnx(diffusers_dir, work, sdxl)
        if os.path.exists(out):
            shutil.rmtree(out)
        optimize(work, out)
        check(out, sdxl)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def export_onnx(diffusers_dir, out, sdxl, fp16=False, fp32_copy=None):
    """diffusers folder -> huabi's ONNX folder at `out` (replaced); with fp16, `fp32_copy` (replaced) keeps the
    float32 export too."""
    from optimum.exporters.onnx import main_export

    if os.path.exists(out):
        shutil.rmtree(out)
    main_export(diffusers_dir, output=out, task="text-to-image", library_name="diffusers", device="cpu",
                do_validation=False)
    index = os.path.join(out, "model_index.json")
    with open(index) as f:
        meta = json.load(f)
    meta.pop("_name_or_path", None)  # the temporary folder it was read from
    with open(index, "w") as f:
        json.dump(meta, f, indent=2)
    if fp16:
        if fp32_copy:
            if os.path.exists(fp32_copy):
                shutil.rmtree(fp32_copy)
            shutil.copytree(out, fp32_copy)
            check(fp32_copy, sdxl)
        to_fp16(out)
    check(out, sdxl)


def check(out, sdxl):
    required = ["model_index.json", "tokenizer", "text_encoder/model.onnx", "unet/model.onnx",
                "vae_decoder/model.onnx", "scheduler/scheduler_config.json"]
    if sdxl:
        required += ["tokenizer_2", "text_encoder_2/model.onnx"]
    missing = [r for r in required if not os.path.exists(os.path.join(out, r))]
    if missing:
        raise SystemExit(f"the export in {out} lacks {', '.join(missing)}")
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
    print(f"wrote {out}: {total / 1e6:.1f} MB")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("name")
    p.add_argument("--sdxl", action="store_true", help="the checkpoint is SDXL (two text encoders)")
    p.add_argument("--fp16", action="store_true", help="float16 weights (half the size; for GPUs)")
    p.add_argument("--fused", action="store_true", help="float16 with ONNX Runtime's fused operators (CUDA provider "
                   "only; no LoRAs): scripts/optimize_gpu.py")
    p.add_argument("--config", help="a diffusers folder of configs and tokenizers to read a single file against")
    p.add_argument("--models", default="models", help="the model catalogue (HUABI__ENGINE__MODELS_DIR)")
    a = p.parse_args()
    if not a.name or "/" in a.name or a.name.startswith(".") or a.name == "loras":
        raise SystemExit(f"model name {a.name!r}: use a plain folder name (letters, digits, - and _)")
    out = os.path.join(a.models, a.name)

    def export(folder, sdxl):
        if a.fused:
            export_fused(folder, out, sdxl)
        else:
            export_onnx(folder, out, sdxl, a.fp16)

    if os.path.isdir(a.src):
        with open(os.path.join(a.src, "model_index.json")) as f:
            sdxl = a.sdxl or "XL" in json.load(f).get("_class_name", "")
        export(a.src, sdxl)
        return
    if not os.path.isfile(a.src):
        raise SystemExit(f"{a.src}: no such file or folder")
    work = tempfile.mkdtemp(prefix="huabi-convert-")
    try:
        load_single_file(a.src, a.sdxl, a.config).save_pretrained(work)
        export(work, a.sdxl)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
