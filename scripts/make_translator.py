"""Makes the small random-weight zh→en translation model (the Marian encoder-decoder of the public opus-mt ONNX
exports) huabi's translation tests run on, exported by optimum with the key/value cache, and the token ids
transformers' greedy generate gives for a set of Chinese prompts:

  models/translate/tiny-zh-en/   encoder_model.onnx, decoder_model.onnx, decoder_with_past_model.onnx,
                                 tokenizer.json, config.json, generation_config.json
  tests/fixtures/translate/cases.json              the cases, and cases decoded with other generation options
  tests/fixtures/translate/decoder_model_merged.onnx   the same decoder merged (use_cache_branch)

--opus DIR writes a model of opus-mt-zh-en's size (d_model 512, 6+6 layers, 65001 tokens; random weights) for the
translation benchmark instead (not committed).

Usage: .venv-model/bin/python scripts/make_translator.py   (scripts/requirements-model.txt)
"""
import argparse
import json
import os
import shutil
import tempfile

import torch

OUT = "models/translate/tiny-zh-en"
FIXTURES = "tests/fixtures/translate"
CASES = ["月下的桂花树", "一只猫在月亮上", "嫦娥抱着玉兔看灯笼", "中秋节的夜晚，一家人团圆", "长城上的烟花",
         "湖边的荷花和星星", "a cat 在 the moon", "月"]
WORDS = ["月亮 星星 夜空 灯笼 桂花 团圆 家人 小孩 猫 狗 湖 荷花 烟花 长城 故宫 月饼 玉兔 嫦娥",
                  "the moon the stars the night sky lanterns osmanthus family reunion child cat dog lake lotus",
                  "fireworks great wall forbidden city mooncakes rabbit goddess a painting of"]


def tokenizer():
    """A SentencePiece-style (Unigram, ▁-prefixed) tokenizer like Marian's, with </s> appended to every input: the
    corpus's words and characters, scored so that longer pieces win (built, not trained, so every run is alike)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for line in WORDS for w in line.split()})
    chars = sorted({c for line in WORDS + CASES for c in line if not c.isspace()} | {"\u2581"})
    pieces = [("\u2581" + w, -1.0) for w in words] + [(w, -2.0) for w in words if len(w) > 1]
    pieces += [(c, -4.0) for c in chars]
    tok = Tokenizer(models.Unigram([("</s>", 0.0), ("<unk>", 0.0)] + pieces, unk_id=1))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.add_special_tokens(["</s>", "<unk>", "<pad>"])  # <pad> is the last id, as Marian's
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A $B </s>",
                                                       special_tokens=[("</s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


def model(tok, d_model, layers, heads, ffn, positions, seed, init_std=0.02):
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(seed)
    pad = tok.pad_token_id
    config = MarianConfig(vocab_size=len(tok), decoder_vocab_size=len(tok), d_model=d_model, encoder_layers=layers,
                          decoder_layers=layers, encoder_attention_heads=heads, decoder_attention_heads=heads,
                          encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, max_position_embeddings=positions,
                          pad_token_id=pad, eos_token_id=tok.eos_token_id, decoder_start_token_id=pad,
                          forced_eos_token_id=tok.eos_token_id, share_encoder_decoder_embeddings=True,
                          scale_embedding=True, init_std=init_std)
    m = MarianMTModel(config).eval()
    m.generation_config.bad_words_ids = [[pad]]
    m.generation_config.max_length = 24
    m.generation_config.num_beams = 1
    return m


KEEP = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx", "tokenizer.json", "config.json",
        "generation_config.json")


def export(m, tok, out, merged_to=None):
    """optimum's export with the cache: the two decoders into `out`; with `merged_to`, the merged decoder (one graph,
    switched by use_cache_branch) is written there too."""
    from optimum.exporters.onnx import main_export

    work = tempfile.mkdtemp(prefix="huabi-marian-")
    try:
        m.save_pretrained(work)
        tok.save_pretrained(work)
        if os.path.exists(out):
            shutil.rmtree(out)
        main_export(work, output=out, task="text2text-generation-with-past", device="cpu", do_validation=False,
                    no_post_process=True)
        for f in os.listdir(out):
            if f not in KEEP:
                os.remove(os.path.join(out, f))
        if merged_to:
            merged = os.path.join(work, "merged")
            main_export(work, output=merged, task="text2text-generation-with-past", device="cpu",
                        do_validation=False)
            shutil.copy(os.path.join(merged, "decoder_model_merged.onnx"), merged_to)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--opus", metavar="DIR", help="write an opus-mt-sized model here instead (benchmarks)")
    a = p.parse_args()
    if a.opus:
        tok = tokenizer()
        # opus-mt-zh-en: 65001 tokens; the embedding is what makes the model large, so size it as the real one.
        m = model(tok, 512, 6, 8, 2048, 512, seed=0)
        m.resize_token_embeddings(65001)
        m.config.vocab_size = m.config.decoder_vocab_size = 65001
        export(m, tok, a.opus)
        return
    tok = tokenizer()
    # Random Marians repeat one token until max_length; wide weights and a bias towards </s> make the answers differ
    # by prompt and some stop early, so the parity covers both ends of greedy decoding.
    m = model(tok, 64, 2, 4, 128, 64, seed=2, init_std=0.6)
    with torch.no_grad():
        m.final_logits_bias[0, tok.eos_token_id] = 14.0
    os.makedirs(FIXTURES, exist_ok=True)
    export(m, tok, OUT, merged_to=f"{FIXTURES}/decoder_model_merged.onnx")

    def generate(text, **options):
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            out = m.generate(ids, num_beams=1, do_sample=False, **options)[0].tolist()
        return {"text": text, "input_ids": ids[0].tolist(), "output_ids": out,
                "translation": tok.decode(out, skip_special_tokens=True)}

    cases = [generate(text) for text in CASES]
    # The other processors transformers applies, on the same model: each variant's options override the config.
    variants = [{"options": options, "cases": [generate(text, **options) for text in CASES[:4]]}
                for options in ({"no_repeat_ngram_size": 2}, {"repetition_penalty": 1.5},
                                {"min_new_tokens": 4, "max_new_tokens": 8})]
    assert len({tuple(c["output_ids"]) for c in cases}) > 3, "the random model answers everything alike"
    lengths = {len(c["output_ids"]) for c in cases}
    assert any(2 < n < m.generation_config.max_length for n in lengths) and 24 in lengths, lengths
    for v in variants:
        assert [c["output_ids"] for c in v["cases"]] != [c["output_ids"] for c in cases[:4]], v["options"]
    with open(f"{FIXTURES}/cases.json", "w") as f:
        json.dump({"cases": cases, "variants": variants}, f, ensure_ascii=False, indent=1)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {OUT}: {total / 1e6:.1f} MB; {len(cases)} cases")
    for c in cases[:3]:
        print(c["text"], c["output_ids"][:12])


if __name__ == "__main__":
    main()
