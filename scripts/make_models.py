"""Makes the small random-weight models, LoRAs and diffusers reference pictures huabi's tests run on.

Random diffusers pipelines (fixed seeds) are exported to ONNX by optimum, exactly as an operator's model would be
(scripts/convert_model.py), so the tests load what real exports look like:

  models/tiny-sd/      SD 1.x layout (one text encoder), 4-block VAE (scale factor 8), vae_encoder too
  models/tiny-sdxl/    SDXL layout (two text encoders, pooled embeddings, time ids), linear projections
  models/loras/        tiny-sd-kohya, tiny-sd-peft, tiny-sdxl-kohya (SGM block names), tiny-sdxl-peft
  tests/fixtures/lora/ cases.json + one picture per case from diffusers' own torch pipeline with
                       load_lora_weights / set_adapters, from the same initial latents (init-*.npy)

The LoRAs have alpha != rank, touch attention (MatMul), feed-forward, 1x1 and 3x3 convolutions, a Gemm
(time_emb_proj) and the text encoders. In tiny-sd, attn1's to_k and to_v in down_blocks.1.attentions.0 hold identical
weights, so the exporter stores them once (an initializer shared through Identity); the kohya LoRA changes to_k only.

--sd15 DIR / --sdxl-full DIR make full-size random models for benchmarks instead (not committed).

Usage: .venv-model/bin/python scripts/make_models.py   (scripts/requirements-model.txt; run from the repository root)
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from convert_model import export_onnx  # noqa: E402
from diffusers_reference import Noise  # noqa: E402

TOKENIZER = "scripts/convert-configs/tokenizer"
PROMPT = "a photo of the moon, mid-autumn festival"
NEGATIVE = "blurry"
SIZE = 64
STEPS = 4
GUIDANCE = 7.5
SEED = 7


def tokenizer(pad="<|endoftext|>"):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(f"{TOKENIZER}/vocab.json", f"{TOKENIZER}/merges.txt", pad_token=pad, model_max_length=77)


def scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                  timestep_spacing="leading")


def vae(sdxl=False):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[32, 32, 64, 64], in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                         layers_per_block=1, norm_num_groups=16, sample_size=64,
                         scaling_factor=0.13025 if sdxl else 0.18215)


def tiny_sd():
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=5,
                                      num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
                                      eos_token_id=49407, pad_token_id=49407))
    with torch.no_grad():
        attn = unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1
        attn.to_v.weight.copy_(attn.to_k.weight)  # one shared initializer after export
    return StableDiffusionPipeline(unet=unet, vae=vae(), text_encoder=te, tokenizer=tokenizer(), scheduler=scheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def tiny_sdxl():
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(1)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                                projection_class_embeddings_input_dim=6 * 8 + 16, cross_attention_dim=32)
    config = dict(vocab_size=49408, hidden_size=16, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
                  max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                  hidden_act="gelu", projection_dim=16)
    te = CLIPTextModel(CLIPTextConfig(**config))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**config))
    return StableDiffusionXLPipeline(unet=unet, vae=vae(sdxl=True), text_encoder=te, text_encoder_2=te2,
                                     tokenizer=tokenizer(), tokenizer_2=tokenizer(pad="!"), scheduler=scheduler(),
                                     force_zeros_for_empty_prompt=True)


def full_sd15():
    """SD 1.5 shapes with random weights, from the shipped configs (for benchmarks)."""
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(0)
    return random_from_configs(StableDiffusionPipeline, "scripts/convert-configs/sd15")


def full_sdxl():
    from diffusers import StableDiffusionXLPipeline

    torch.manual_seed(0)
    return random_from_configs(StableDiffusionXLPipeline, "scripts/convert-configs/sdxl")


def random_from_configs(cls, folder):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    parts = {"unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(f"{folder}/unet")),
             "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(f"{folder}/vae")),
             "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(f"{folder}/text_encoder")),
             "tokenizer": CLIPTokenizer.from_pretrained(f"{folder}/tokenizer"), "scheduler": scheduler()}
    if os.path.isdir(f"{folder}/text_encoder_2"):
        parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(f"{folder}/text_encoder_2"))
        parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(f"{folder}/tokenizer_2")
    else:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return cls(**parts)


# --- LoRAs ---------------------------------------------------------------------------------------------------------

def add_lora(model, targets, rank, alpha, seed):
    """A PEFT LoRA on `targets` with random, non-zero A and B."""
    from peft import LoraConfig

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False)
    model.add_adapter(config, adapter_name="fixture")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(2.0)  # strong enough that a wrong alpha or a missed layer is far outside the tolerance
    return config


def peft_state(model):
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(model, adapter_name="fixture").items()}


def kohya_name(module, prefix, sgm=None):
    name = module.replace(".", "_")
    if sgm is not None:
        name = sgm(name)
    return f"{prefix}_{name}"


def to_kohya(states, alpha, sgm=None):
    """PEFT state dicts {part: state} -> kohya keys (lora_unet_ / lora_te_ or lora_te1_ / lora_te2_) with .alpha."""
    out = {}
    for part, (prefix, state) in states.items():
        for key, tensor in state.items():
            module, kind = key.rsplit(".lora_", 1)
            use_sgm = sgm if part == "unet" else None
            base = kohya_name(module, prefix, use_sgm)
            if kind.startswith("A"):
                out[f"{base}.lora_down.weight"] = tensor
                out[f"{base}.alpha"] = torch.tensor(float(alpha))
            else:
                out[f"{base}.lora_up.weight"] = tensor
    return out


def sgm_names(layers_per_block, up_attention):
    """diffusers -> SGM UNet block names (underscored), the inverse of diffusers' _maybe_map_sgm_blocks_to_diffusers."""
    resnet = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
              "conv_shortcut": "skip_connection"}
    n = layers_per_block

    def rename(name):
        parts = name.split("_blocks_", 1)
        if name.startswith("down_blocks_"):
            b, kind, rest = name[len("down_blocks_"):].split("_", 2)
            b = int(b)
            if kind == "resnets":
                layer, inner = rest.split("_", 1)
                return f"input_blocks_{1 + b * (n + 1) + int(layer)}_0_{resnet[inner]}"
            layer, inner = rest.split("_", 1)
            return f"input_blocks_{1 + b * (n + 1) + int(layer)}_1_{inner}"
        if name.startswith("up_blocks_"):
            b, kind, rest = name[len("up_blocks_"):].split("_", 2)
            b = int(b)
            layer, inner = rest.split("_", 1)
            if kind == "resnets":
                return f"output_blocks_{b * (n + 1) + int(layer)}_0_{resnet[inner]}"
            return f"output_blocks_{b * (n + 1) + int(layer)}_1_{inner}"
        if name.startswith("mid_block_"):
            kind, rest = name[len("mid_block_"):].split("_", 1)
            layer, inner = rest.split("_", 1)
            if kind == "attentions":
                return f"middle_block_1_{inner}"
            return f"middle_block_{2 * int(layer)}_{resnet[inner]}"
        raise ValueError(f"no SGM name for {name} ({parts})")

    return rename


# --- references ----------------------------------------------------------------------------------------------------

def initial_latents(seed):
    return Noise(seed).normals(4 * (SIZE // 8) * (SIZE // 8)).reshape(1, 4, SIZE // 8, SIZE // 8)


def reference(pipe, latents, sdxl):
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt=PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                  latents=torch.from_numpy(latents.copy()), output_type="np")
    if not sdxl:
        kwargs["negative_prompt"] = NEGATIVE
    with torch.no_grad():
        return pipe(**kwargs).images[0].astype(np.float32)


def lora_cases(pipe_factory, model_name, sdxl, loras, out):
    """Writes each case's reference picture; returns the case list."""
    latents = initial_latents(SEED)
    np.save(f"{out}/init-{model_name}.npy", latents)
    cases = []
    base = None
    for case_name, stack in [(f"{model_name}-base", [])] + loras:
        pipe = pipe_factory()
        names = []
        for lora_name, scale in stack:
            pipe.load_lora_weights(f"models/loras/{lora_name}.safetensors", adapter_name=lora_name.replace("-", "_"))
            names.append((lora_name.replace("-", "_"), scale))
        if names:
            pipe.set_adapters([n for n, _ in names], adapter_weights=[s for _, s in names])
        image = reference(pipe, latents, sdxl)
        if names:
            # The picture must not hinge on rounding: diffusers' own fused LoRA paints the same within 1e-4.
            pipe.fuse_lora(adapter_names=[n for n, _ in names])
            fused = reference(pipe, latents, sdxl)
            wobble = float(np.abs(fused - image).max())
            assert wobble < 1e-4, f"{case_name}: fused and unfused differ by {wobble}; make the LoRA gentler"
        if base is None:
            base = image
        else:
            change = float(np.abs(image - base).max())
            assert change > 0.02, f"{case_name} changes the picture by only {change}"
            print(f"{case_name}: max change from the base picture {change:.4f}")
        np.save(f"{out}/{case_name}.npy", image)
        cases.append({"name": case_name, "model": model_name, "loras": [[n, s] for n, s in stack],
                      "latents": f"init-{model_name}.npy", "negative": "" if sdxl else NEGATIVE})
    return cases


def make_tiny(models, fixtures):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    os.makedirs(f"{models}/loras", exist_ok=True)
    os.makedirs(fixtures, exist_ok=True)
    work = tempfile.mkdtemp(prefix="huabi-models-")
    try:
        sd_dir, sdxl_dir = f"{work}/tiny-sd", f"{work}/tiny-sdxl"
        tiny_sd().save_pretrained(sd_dir)
        tiny_sdxl().save_pretrained(sdxl_dir)
        export_onnx(sd_dir, f"{models}/tiny-sd", sdxl=False)
        export_onnx(sdxl_dir, f"{models}/tiny-sdxl", sdxl=True)

        def sd():
            return StableDiffusionPipeline.from_pretrained(sd_dir, safety_checker=None, requires_safety_checker=False)

        def sdxl():
            return StableDiffusionXLPipeline.from_pretrained(sdxl_dir)

        unet_targets = ["to_q", "to_k", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "conv1", "time_emb_proj"]
        te_targets = ["q_proj", "v_proj", "fc1"]

        # tiny-sd, PEFT (diffusers' save_lora_weights, alpha in the metadata), rank 4, alpha 8.
        p = sd()
        unet_cfg = add_lora(p.unet, unet_targets, 4, 8, seed=10)
        te_cfg = add_lora(p.text_encoder, te_targets, 4, 8, seed=11)
        StableDiffusionPipeline.save_lora_weights(
            f"{work}/peft", unet_lora_layers=peft_state(p.unet), text_encoder_lora_layers=peft_state(p.text_encoder),
            unet_lora_adapter_metadata=unet_cfg.to_dict(), text_encoder_lora_adapter_metadata=te_cfg.to_dict(),
            safe_serialization=True)
        shutil.copy(f"{work}/peft/pytorch_lora_weights.safetensors", f"{models}/loras/tiny-sd-peft.safetensors")

        # tiny-sd, kohya: rank 4, alpha 2; down_blocks.1.attentions.0's to_k (a shared weight) but not to_v.
        p = sd()
        add_lora(p.unet, ["attn1.to_k", "attn2.to_q", "to_v", "proj_out", "conv2", "conv_shortcut"], 4, 2, seed=12)
        add_lora(p.text_encoder, ["k_proj", "out_proj", "fc2"], 4, 2, seed=13)
        state = peft_state(p.unet)
        state = {k: v for k, v in state.items() if "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v" not in k}
        save_file(to_kohya({"unet": ("lora_unet", state), "te": ("lora_te", peft_state(p.text_encoder))}, alpha=2),
                  f"{models}/loras/tiny-sd-kohya.safetensors")

        # tiny-sdxl, PEFT with text_encoder_2, rank 4, alpha 6.
        p = sdxl()
        unet_cfg = add_lora(p.unet, ["to_q", "to_v", "proj_in", "ff.net.2", "conv1", "time_emb_proj"], 4, 6, seed=20)
        te_cfg = add_lora(p.text_encoder, ["q_proj", "fc1"], 4, 6, seed=21)
        te2_cfg = add_lora(p.text_encoder_2, ["k_proj", "fc2"], 4, 6, seed=22)
        StableDiffusionXLPipeline.save_lora_weights(
            f"{work}/peftxl", unet_lora_layers=peft_state(p.unet), text_encoder_lora_layers=peft_state(p.text_encoder),
            text_encoder_2_lora_layers=peft_state(p.text_encoder_2), unet_lora_adapter_metadata=unet_cfg.to_dict(),
            text_encoder_lora_adapter_metadata=te_cfg.to_dict(), text_encoder_2_lora_adapter_metadata=te2_cfg.to_dict(),
            safe_serialization=True)
        shutil.copy(f"{work}/peftxl/pytorch_lora_weights.safetensors", f"{models}/loras/tiny-sdxl-peft.safetensors")

        # tiny-sdxl, kohya with SGM (original SD) block names, rank 4, alpha 3.
        p = sdxl()
        add_lora(p.unet, ["to_k", "to_out.0", "proj_out", "ff.net.0.proj", "conv2", "time_emb_proj"], 4, 3, seed=23)
        add_lora(p.text_encoder, ["v_proj", "out_proj"], 4, 3, seed=24)
        add_lora(p.text_encoder_2, ["q_proj", "out_proj"], 4, 3, seed=25)
        states = {"unet": ("lora_unet", peft_state(p.unet)), "te1": ("lora_te1", peft_state(p.text_encoder)),
                  "te2": ("lora_te2", peft_state(p.text_encoder_2))}
        save_file(to_kohya(states, alpha=3, sgm=sgm_names(2, [True, False])),
                  f"{models}/loras/tiny-sdxl-kohya.safetensors")

        cases = lora_cases(sd, "tiny-sd", False, [
            ("tiny-sd-peft", [("tiny-sd-peft", 1.0)]),
            ("tiny-sd-kohya", [("tiny-sd-kohya", 0.8)]),
            ("tiny-sd-stacked", [("tiny-sd-kohya", 0.8), ("tiny-sd-peft", 0.5)]),
        ], fixtures)
        cases += lora_cases(sdxl, "tiny-sdxl", True, [
            ("tiny-sdxl-peft", [("tiny-sdxl-peft", 0.7)]),
            ("tiny-sdxl-kohya", [("tiny-sdxl-kohya", 1.0)]),
        ], fixtures)
        with open(f"{fixtures}/cases.json", "w") as f:
            json.dump({"prompt": PROMPT, "size": SIZE, "steps": STEPS, "guidance": GUIDANCE, "scheduler": "euler",
                       "seed": SEED, "cases": cases}, f, indent=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_benchmark_lora(pipe, path):
    """A rank-16 LoRA like the community's: attention, feed-forward and projections of the UNet, and the text
    encoder(s)."""
    unet_cfg = add_lora(pipe.unet, ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in",
                                    "proj_out"], 16, 8, seed=30)
    layers = {"unet_lora_layers": peft_state(pipe.unet), "unet_lora_adapter_metadata": unet_cfg.to_dict()}
    te_cfg = add_lora(pipe.text_encoder, ["q_proj", "k_proj", "v_proj", "out_proj"], 16, 8, seed=31)
    layers.update(text_encoder_lora_layers=peft_state(pipe.text_encoder),
                  text_encoder_lora_adapter_metadata=te_cfg.to_dict())
    folder = tempfile.mkdtemp(prefix="huabi-lora-")
    try:
        type(pipe).save_lora_weights(folder, safe_serialization=True, **layers)
        shutil.copy(f"{folder}/pytorch_lora_weights.safetensors", path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="models")
    p.add_argument("--fixtures", default="tests/fixtures/lora")
    p.add_argument("--sd15", metavar="DIR", help="write an SD-1.5-shaped random model here instead (benchmarks)")
    p.add_argument("--sdxl-full", metavar="DIR", help="write an SDXL-shaped random model here instead (benchmarks)")
    p.add_argument("--fp16", action="store_true", help="with --sd15/--sdxl-full: float16 weights")
    p.add_argument("--keep-fp32", metavar="DIR", help="with --fp16: also keep the float32 export here")
    p.add_argument("--keep-diffusers", metavar="DIR", help="with --sd15/--sdxl-full: keep the diffusers folder the "
                   "export was made from here (the same weights, for torch)")
    p.add_argument("--lora", metavar="FILE", help="with --sd15/--sdxl-full: also write a random PEFT LoRA (rank 16, "
                   "attention, feed-forward and text encoder) for benchmarks")
    a = p.parse_args()
    if a.sd15 or a.sdxl_full:
        work = a.keep_diffusers or tempfile.mkdtemp(prefix="huabi-models-")
        try:
            pipe = full_sd15() if a.sd15 else full_sdxl()
            pipe.save_pretrained(work)
            if a.lora:
                write_benchmark_lora(pipe, a.lora)
            export_onnx(work, a.sd15 or a.sdxl_full, sdxl=bool(a.sdxl_full), fp16=a.fp16,
                        fp32_copy=a.keep_fp32 if a.fp16 else None)
        finally:
            if not a.keep_diffusers:
                shutil.rmtree(work, ignore_errors=True)
        return
    make_tiny(a.models, a.fixtures)


if __name__ == "__main__":
    main()
