"""Generates the small Stable Diffusion model huabi's tests and embedded default run on (models/tiny-sd), or an
SD-1.5-shaped model with random weights for benchmarks (--sd15, not committed).

Random weights from a fixed seed, exported to the ONNX layout diffusers/optimum use:
  model_index.json, tokenizer/{vocab.json,merges.txt,tokenizer_config.json,special_tokens_map.json},
  text_encoder/model.onnx, unet/model.onnx, vae_decoder/model.onnx (+ config.json each), scheduler/scheduler_config.json
The tokenizer is the real 49408-token CLIP BPE vocabulary, built from the open_clip_torch wheel's
bpe_simple_vocab_16e6.txt.gz. The VAE has 4 blocks, so the latent scale factor is the real 8.

Usage: python scripts/make_tiny_model.py [--out models/tiny-sd] [--sd15]
Needs: torch==2.15.0 diffusers==0.42.1 transformers==5.24.0 onnx==1.23.2 open_clip_torch (see scripts/requirements-model.txt).
Weights are bit-stable only for the same torch version and construction order (seed 0: unet, vae, text encoder).
"""
import argparse
import gzip
import json
import os
import shutil
from functools import lru_cache

import onnx
import torch
from torch import nn


@lru_cache()
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_tokenizer(out):
    import open_clip

    gz = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    merges = gzip.open(gz).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    d = os.path.join(out, "tokenizer")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    with open(os.path.join(d, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}, f, indent=2)


def export(module, args, path, input_names, output_names, dynamic_axes):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.onnx.export(module, args, path, input_names=input_names, output_names=output_names,
                      dynamic_axes=dynamic_axes, opset_version=17, dynamo=False, do_constant_folding=True)
    folder = os.path.dirname(path)
    tensors = [f for f in os.listdir(folder) if f not in ("model.onnx", "config.json")]
    if tensors:
        # Over 2 GB the exporter writes one file per tensor: gather them into one weights.pb beside model.onnx.
        model = onnx.load(path, load_external_data=True)
        for f in tensors:
            os.remove(os.path.join(folder, f))
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.pb")


def save_config(obj, path):
    with open(path, "w") as f:
        json.dump(dict(obj.config), f, indent=2, default=str)


def main():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    import diffusers

    p = argparse.ArgumentParser()
    p.add_argument("--out", default="models/tiny-sd")
    p.add_argument("--sd15", action="store_true", help="SD-1.5 shapes (3.4 GB UNet); for benchmarks, not committed")
    a = p.parse_args()
    out = a.out
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)

    torch.manual_seed(0)
    if a.sd15:
        unet = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                                    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3, latent_channels=4,
                            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                            layers_per_block=2, sample_size=512)
        te_cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, max_position_embeddings=77, bos_token_id=49406,
                                eos_token_id=49407, pad_token_id=49407, hidden_act="quick_gelu")
        hidden, latent_hw = 768, 64
    else:
        unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
                                    out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                    attention_head_dim=8)
        vae = AutoencoderKL(block_out_channels=[32, 32, 64, 64], in_channels=3, out_channels=3, latent_channels=4,
                            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                            layers_per_block=1, norm_num_groups=16, sample_size=64)
        te_cfg = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=5,
                                num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
                                eos_token_id=49407, pad_token_id=49407)
        hidden, latent_hw = 32, 8
    text_encoder = CLIPTextModel(te_cfg)
    for m in (unet, vae, text_encoder):
        m.eval()

    class TE(nn.Module):
        def __init__(s, m):
            super().__init__()
            s.m = m

        def forward(s, input_ids):
            o = s.m(input_ids=input_ids, return_dict=False)
            return o[0], o[1]

    class UN(nn.Module):
        def __init__(s, m):
            super().__init__()
            s.m = m

        def forward(s, sample, timestep, encoder_hidden_states):
            return s.m(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    class VD(nn.Module):
        def __init__(s, m):
            super().__init__()
            s.m = m

        def forward(s, latent_sample):
            return s.m.decode(latent_sample, return_dict=False)[0]

    with torch.no_grad():
        export(TE(text_encoder), (torch.zeros(1, 77, dtype=torch.int32),), f"{out}/text_encoder/model.onnx",
               ["input_ids"], ["last_hidden_state", "pooler_output"], {"input_ids": {0: "batch", 1: "sequence"}})
        export(UN(unet), (torch.randn(2, 4, latent_hw, latent_hw), torch.tensor([999.0, 999.0]), torch.randn(2, 77, hidden)),
               f"{out}/unet/model.onnx", ["sample", "timestep", "encoder_hidden_states"], ["out_sample"],
               {"sample": {0: "batch", 2: "height", 3: "width"}, "timestep": {0: "batch"},
                "encoder_hidden_states": {0: "batch", 1: "sequence"}})
        export(VD(vae), (torch.randn(1, 4, latent_hw, latent_hw),), f"{out}/vae_decoder/model.onnx", ["latent_sample"],
               ["sample"], {"latent_sample": {0: "batch", 2: "height", 3: "width"}})
    text_encoder.config.to_json_file(f"{out}/text_encoder/config.json")
    save_config(unet, f"{out}/unet/config.json")
    save_config(vae, f"{out}/vae_decoder/config.json")
    write_tokenizer(out)
    os.makedirs(f"{out}/scheduler", exist_ok=True)
    with open(f"{out}/scheduler/scheduler_config.json", "w") as f:
        json.dump({
            "_class_name": "EulerDiscreteScheduler", "_diffusers_version": diffusers.__version__,
            "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "prediction_type": "epsilon", "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False,
            "timestep_spacing": "leading",
        }, f, indent=2)
    with open(f"{out}/model_index.json", "w") as f:
        json.dump({
            "_class_name": "OnnxStableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
            "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
            "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["diffusers", "OnnxRuntimeModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "OnnxRuntimeModel"],
            "vae_decoder": ["diffusers", "OnnxRuntimeModel"], "vae_encoder": [None, None],
        }, f, indent=2)
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
    print(f"wrote {out}: {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
