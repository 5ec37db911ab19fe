"""Makes a small random BERT text encoder with a Chinese WordPiece vocabulary — the layout of the Chinese SD 1.5
variants (Taiyi-Stable-Diffusion-1B-Chinese: BertModel + BertTokenizer) — and diffusers' picture from it on the
tiny-sd UNet and VAE:

  tests/fixtures/chinese-encoder/text_encoder/   model.onnx (optimum's feature-extraction export: input_ids,
                                                 attention_mask, token_type_ids → last_hidden_state), config.json
  tests/fixtures/chinese-encoder/tokenizer/      vocab.txt, tokenizer.json, tokenizer_config.json (32 tokens)
  tests/fixtures/chinese-encoder/reference.json  the prompt, its token ids, the settings
  tests/fixtures/chinese-encoder/picture.npy     diffusers' StableDiffusionPipeline output (euler, 6 steps, the
                                                 latents of tests/fixtures/diffusers/init-latents.npy)

The test builds the model folder from models/tiny-sd with this encoder and tokenizer in place of CLIP's.

Usage: .venv-model/bin/python scripts/make_chinese_encoder.py   (scripts/requirements-model.txt)
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))

OUT = "tests/fixtures/chinese-encoder"
PROMPT = "月下的桂花树，一只玉兔"
NEGATIVE = "模糊"
LENGTH = 32
CORPUS = "月下的桂花树一只玉兔嫦娥中秋节灯笼夜晚家人团圆猫狗湖边荷花星星长城烟花模糊，。"


def tokenizer(folder):
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(CORPUS)) + [
        "a", "cat", "moon", "the", "##s", "lantern"]
    os.makedirs(folder, exist_ok=True)
    with open(f"{folder}/vocab.txt", "w") as f:
        f.write("\n".join(words) + "\n")
    tok = BertTokenizerFast(vocab_file=f"{folder}/vocab.txt", model_max_length=LENGTH, tokenize_chinese_chars=True)
    tok.save_pretrained(folder)
    return tok


def encoder(tok):
    from transformers import BertConfig, BertModel

    torch.manual_seed(5)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64, pad_token_id=0)
    return BertModel(config, add_pooling_layer=False).eval()


def export(te, tok, folder):
    from optimum.exporters.onnx import main_export

    work = tempfile.mkdtemp(prefix="huabi-bert-")
    try:
        te.save_pretrained(work)
        tok.save_pretrained(work)
        out = os.path.join(work, "onnx")
        main_export(work, output=out, task="feature-extraction", device="cpu", do_validation=False)
        os.makedirs(folder, exist_ok=True)
        shutil.copy(os.path.join(out, "model.onnx"), f"{folder}/model.onnx")
        shutil.copy(os.path.join(work, "config.json"), f"{folder}/config.json")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from make_models import tiny_sd

    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    tok = tokenizer(f"{OUT}/tokenizer")
    te = encoder(tok)
    export(te, tok, f"{OUT}/text_encoder")
    base = tiny_sd()
    pipe = StableDiffusionPipeline(unet=base.unet, vae=base.vae, text_encoder=te, tokenizer=tok,
                                   scheduler=EulerDiscreteScheduler.from_config(base.scheduler.config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    latents = np.load("tests/fixtures/diffusers/init-latents.npy")
    with torch.no_grad():
        image = pipe(PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=6,
                     guidance_scale=7.5, latents=torch.from_numpy(latents), output_type="np").images[0]
    np.save(f"{OUT}/picture.npy", image.astype(np.float32))
    ids = tok(PROMPT, padding="max_length", max_length=LENGTH, truncation=True).input_ids
    assert tok.unk_token_id not in ids, ids
    with open(f"{OUT}/reference.json", "w") as f:
        json.dump({"prompt": PROMPT, "negative": NEGATIVE, "input_ids": ids, "steps": 6, "guidance": 7.5,
                   "scheduler": "euler", "width": 64, "height": 64, "latents": "../diffusers/init-latents.npy"},
                  f, ensure_ascii=False, indent=1)
    print("ids", ids, "picture mean", float(image.mean()))


if __name__ == "__main__":
    main()
