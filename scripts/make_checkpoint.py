"""Writes a small random SD 1.x checkpoint as one .safetensors file in the original (CompVis/LDM) key layout — the
form operators download — plus the diffusers config folder it is read against, for testing scripts/convert-model
on a single file. The weights are scripts/make_models.py's tiny SD (same seed), so the converted model must paint
what models/tiny-sd paints.

Usage: .venv-model/bin/python scripts/make_checkpoint.py OUT.safetensors CONFIG_DIR
"""
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from make_models import tiny_sd  # noqa: E402


def unet_names(config):
    """diffusers prefix -> LDM prefix for a UNet of this config (any number of blocks)."""
    layers = config.layers_per_block
    down_attn = ["CrossAttn" in t for t in config.down_block_types]
    up_attn = ["CrossAttn" in t for t in config.up_block_types]
    names = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
             ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
             ("mid_block.attentions.0.", "middle_block.1.")]
    for j in range(2):
        names.append((f"mid_block.resnets.{j}.", f"middle_block.{2 * j}."))
    for i in range(len(down_attn)):
        for j in range(layers):
            n = 1 + i * (layers + 1) + j
            names.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{n}.0."))
            if down_attn[i]:
                names.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{n}.1."))
        if i < len(down_attn) - 1:
            names.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (layers + 1)}.0.op."))
    for i in range(len(up_attn)):
        for j in range(layers + 1):
            n = i * (layers + 1) + j
            names.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{n}.0."))
            if up_attn[i]:
                names.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{n}.1."))
        if i < len(up_attn) - 1:
            n = i * (layers + 1) + layers
            names.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{n}.{2 if up_attn[i] else 1}."))
    return names


RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
          ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]


def ldm_unet(state, config):
    out = {}
    names = sorted(unet_names(config), key=lambda p: -len(p[0]))
    for key, tensor in state.items():
        for hf, sd in names:
            if key.startswith(hf):
                rest = key[len(hf):]
                if ".resnets." in hf or hf.startswith("mid_block.resnets"):
                    for a, b in RESNET:
                        if rest.startswith(a + "."):
                            rest = b + rest[len(a):]
                out["model.diffusion_model." + sd + rest] = tensor
                break
        else:
            raise SystemExit(f"no LDM name for UNet key {key}")
    return out


def ldm_vae(state, config):
    blocks = len(config.block_out_channels)
    names = [("encoder.mid_block.attentions.0.", "encoder.mid.attn_1."),
             ("decoder.mid_block.attentions.0.", "decoder.mid.attn_1."),
             ("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for side in ("encoder", "decoder"):
        for j in range(2):
            names.append((f"{side}.mid_block.resnets.{j}.", f"{side}.mid.block_{j + 1}."))
    for i in range(blocks):
        for j in range(config.layers_per_block):
            names.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
        for j in range(config.layers_per_block + 1):
            names.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{blocks - 1 - i}.block.{j}."))
        if i < blocks - 1:
            names.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
            names.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{blocks - 1 - i}.upsample."))
    names.sort(key=lambda p: -len(p[0]))
    attention = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]
    out = {}
    for key, tensor in state.items():
        new = key
        for hf, sd in names:
            if key.startswith(hf):
                new = sd + key[len(hf):]
                break
        new = new.replace("conv_shortcut", "nin_shortcut")
        if ".attn_1." in new:
            for a, b in attention:
                new = new.replace(".attn_1." + a, ".attn_1." + b)
            if new.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")) and tensor.dim() == 2:
                tensor = tensor.reshape(*tensor.shape, 1, 1)  # LDM keeps these as 1x1 convolutions
        out["first_stage_model." + new] = tensor
    return out


def main():
    out, config_dir = sys.argv[1], sys.argv[2]
    pipe = tiny_sd()
    state = {}
    state.update(ldm_unet(pipe.unet.state_dict(), pipe.unet.config))
    state.update(ldm_vae(pipe.vae.state_dict(), pipe.vae.config))
    for key, tensor in pipe.text_encoder.state_dict().items():
        state["cond_stage_model.transformer." + key] = tensor
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, out)
    # The config folder: the same pipeline saved, then its weights removed (configs and tokenizer stay).
    work = tempfile.mkdtemp(prefix="huabi-ckpt-")
    try:
        pipe.save_pretrained(work)
        if os.path.exists(config_dir):
            shutil.rmtree(config_dir)
        shutil.copytree(work, config_dir, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out} ({len(state)} tensors) and {config_dir}")


if __name__ == "__main__":
    main()
