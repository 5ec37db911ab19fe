"""Makes the small random-weight safety checkers (diffusers' StableDiffusionSafetyChecker, exported to ONNX the way
diffusers' convert script does: forward_onnx, inputs clip_input and images) and the reference values huabi's tests
compare with:

  models/tiny-sd/safety_checker, feature_extractor   a checker whose thresholds no picture reaches (passes all)
  tests/fixtures/safety/random/                      a random checker; cases.json holds, for four pictures,
                                                     CLIPImageProcessor's pixel_values and diffusers' flags and
                                                     concept/special scores
  tests/fixtures/safety/flag-a/                      a concept embedding built from picture A: flags A, passes B
  tests/fixtures/safety/flag-all/                    thresholds every picture passes (flags everything)
  tests/fixtures/safety/pictures/                    the pictures (PNG)
  tests/fixtures/resample/                           a picture resized by Pillow (bilinear, bicubic, Lanczos)

--sd15 DIR adds a checker of Stable Diffusion 1.5's size (CLIP ViT-L/14 vision, 224x224; random weights) to the
model folder DIR, for `huabi bench engine` (not committed).

Usage: .venv-model/bin/python scripts/make_safety.py [--sd15 DIR]   (scripts/requirements-model.txt)
"""
import json
import os
import shutil

import numpy as np
import torch
from PIL import Image

MODEL = "models/tiny-sd"
OUT = "tests/fixtures/safety"
RESAMPLE = "tests/fixtures/resample"
SIZE = 32  # the tiny checker's CLIP vision input


def checker(seed, full=False):
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    torch.manual_seed(seed)
    if full:  # Stable Diffusion 1.5's checker: CLIP ViT-L/14's vision tower, 768-wide projection
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                  num_hidden_layers=24, image_size=224, patch_size=14, projection_dim=768)
        text = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=1,
                              projection_dim=768)
        projection = 768
    else:
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                                  image_size=SIZE, patch_size=4, projection_dim=16)
        text = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                              projection_dim=16)
        projection = 16
    sc = StableDiffusionSafetyChecker(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                                 projection_dim=projection)).eval()
    with torch.no_grad():
        sc.concept_embeds.copy_(torch.randn_like(sc.concept_embeds))
        sc.special_care_embeds.copy_(torch.randn_like(sc.special_care_embeds))
    return sc


def processor(size=SIZE):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, resample=3)


def pictures():
    """Four 64x64 pictures: a red gradient (A), blue stripes (B), two of random noise."""
    y, x = np.mgrid[0:64, 0:64]
    a = np.stack([200 + x // 2, x * 2, y], -1)
    b = np.stack([y % 7 * 10, 40 + (x % 9) * 5, 255 - y], -1)
    rng = np.random.default_rng(5)
    noise = [rng.integers(0, 256, (64, 64, 3)) for _ in range(2)]
    return [p.clip(0, 255).astype(np.uint8) for p in [a, b] + noise]


def embeds(sc, pixel_values):
    with torch.no_grad():
        pooled = sc.vision_model(torch.from_numpy(pixel_values))[1]
        return sc.visual_projection(pooled)


def scores(sc, pixel_values):
    """forward_onnx's arithmetic, kept: special scores, concept scores (with the special-care adjustment), flags."""
    from diffusers.pipelines.stable_diffusion.safety_checker import cosine_distance

    with torch.no_grad():
        e = embeds(sc, pixel_values)
        special = cosine_distance(e, sc.special_care_embeds) - sc.special_care_embeds_weights
        adjustment = (torch.any(special > 0, dim=1) * 0.01).unsqueeze(1)
        concept = cosine_distance(e, sc.concept_embeds) - sc.concept_embeds_weights + adjustment
        return special.numpy(), concept.numpy(), torch.any(concept > 0, dim=1).numpy()


def export(sc, folder, size=SIZE):
    sc = sc.eval()
    sc.forward = sc.forward_onnx
    os.makedirs(f"{folder}/safety_checker", exist_ok=True)
    os.makedirs(f"{folder}/feature_extractor", exist_ok=True)
    clip = torch.randn(1, 3, size, size)
    images = torch.rand(1, 64, 64, 3)
    torch.onnx.export(sc, (clip, images), f"{folder}/safety_checker/model.onnx",
                      input_names=["clip_input", "images"], output_names=["out_images", "has_nsfw_concepts"],
                      dynamic_axes={"clip_input": {0: "batch", 1: "channels", 2: "height", 3: "width"},
                                    "images": {0: "batch", 1: "height", 2: "width", 3: "channels"}},
                      opset_version=14, dynamo=False)
    processor(size).save_pretrained(f"{folder}/feature_extractor")


def set_weights(sc, concept, special):
    with torch.no_grad():
        sc.concept_embeds_weights.copy_(torch.as_tensor(concept, dtype=torch.float32))
        sc.special_care_embeds_weights.copy_(torch.as_tensor(special, dtype=torch.float32))


def resample_fixtures():
    os.makedirs(RESAMPLE, exist_ok=True)
    rng = np.random.default_rng(11)
    source = Image.fromarray(rng.integers(0, 256, (23, 37, 3)).astype(np.uint8))
    source.save(f"{RESAMPLE}/source.png")
    cases = []
    for name, number in (("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC), ("lanczos", Image.LANCZOS)):
        for size in ((50, 31), (12, 9), (37, 64), (5, 23), (37, 23)):
            file = f"{name}-{size[0]}x{size[1]}.png"
            source.resize(size, resample=number).save(f"{RESAMPLE}/{file}")
            cases.append({"filter": name, "width": size[0], "height": size[1], "file": file})
    with open(f"{RESAMPLE}/cases.json", "w") as f:
        json.dump({"source": "source.png", "cases": cases}, f, indent=1)


def main():
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--sd15", metavar="DIR", help="add an SD-1.5-sized checker to this model folder instead")
    a = p.parse_args()
    if a.sd15:
        sc = checker(30, full=True)
        set_weights(sc, np.full(17, 2.0), np.full(3, 2.0))
        export(sc, a.sd15, size=224)
        return
    os.makedirs(f"{OUT}/pictures", exist_ok=True)
    pics = pictures()
    names = ["a.png", "b.png", "noise-1.png", "noise-2.png"]
    for name, p in zip(names, pics):
        Image.fromarray(p).save(f"{OUT}/pictures/{name}")
    # diffusers' run_safety_checker: numpy_to_pil, then the feature extractor.
    pixel_values = processor()([Image.fromarray(p) for p in pics], return_tensors="np").pixel_values

    # A random checker, thresholds between what the pictures score, so some are flagged and some are not, and
    # picture 0 sets off a special-care concept.
    sc = checker(21)
    from diffusers.pipelines.stable_diffusion.safety_checker import cosine_distance
    with torch.no_grad():
        e = embeds(sc, pixel_values)
        cos = cosine_distance(e, sc.concept_embeds).numpy()
        special_cos = cosine_distance(e, sc.special_care_embeds).numpy()
    special_w = np.full(special_cos.shape[1], 2.0)
    top = np.sort(special_cos[:, 0])[::-1]
    special_w[0] = (top[0] + top[1]) / 2  # one picture sets off special-care concept 0
    adjusted = cos + 0.01 * (special_cos[:, :1] > special_w[0])
    # Per concept, the threshold sits in the widest gap between the pictures' scores: some match, some do not.
    ranked = np.sort(adjusted, axis=0)
    gaps = ranked[1:] - ranked[:-1]
    widest = gaps.argmax(axis=0)
    concept_w = (ranked[widest, np.arange(17)] + ranked[widest + 1, np.arange(17)]) / 2
    # Only pictures A and B may be flagged: concepts the noise pictures would match are raised out of reach.
    for j in range(17):
        if (adjusted[2:, j] > concept_w[j]).any():
            concept_w[j] = adjusted[:, j].max() + 0.05
    set_weights(sc, concept_w, special_w)
    special, concept, flags = scores(sc, pixel_values)
    with torch.no_grad():
        _, torch_flags = sc(images=np.zeros((4, 64, 64, 3), np.float32), clip_input=torch.from_numpy(pixel_values))
    assert list(torch_flags) == list(flags), (torch_flags, flags)
    assert flags[:2].any() and not flags[2:].any(), flags
    assert np.abs(concept).min() > 1e-3 and np.abs(special).min() > 1e-3, "a score too close to 0"
    export(sc, f"{OUT}/random")
    print("flags of the random checker:", [bool(v) for v in flags])
    with open(f"{OUT}/cases.json", "w") as f:
        json.dump({"pictures": names, "pixel_values": pixel_values.tolist(), "flags": [bool(v) for v in flags],
                   "concept_scores": concept.tolist(), "special_scores": special.tolist()}, f)

    # Concept 3 is picture A's embedding; the threshold sits halfway between A's similarity (1) and B's.
    sc = checker(22)
    with torch.no_grad():
        e = embeds(sc, pixel_values)
        sc.concept_embeds[3].copy_(e[0])
        cos = cosine_distance(e, sc.concept_embeds).numpy()
    concept_w = np.full(17, 2.0)
    concept_w[3] = (cos[0, 3] + cos[1, 3]) / 2
    set_weights(sc, concept_w, np.full(3, 2.0))
    _, concept, flags = scores(sc, pixel_values[:2])
    assert list(flags) == [True, False], (flags, concept)
    export(sc, f"{OUT}/flag-a")
    with open(f"{OUT}/flag-a/expected.json", "w") as f:
        json.dump({"flags": {"a.png": True, "b.png": False}, "threshold": float(concept_w[3])}, f)

    sc = checker(23)
    set_weights(sc, np.full(17, -2.0), np.full(3, 2.0))
    export(sc, f"{OUT}/flag-all")

    sc = checker(24)
    set_weights(sc, np.full(17, 2.0), np.full(3, 2.0))
    for sub in ("safety_checker", "feature_extractor"):
        shutil.rmtree(f"{MODEL}/{sub}", ignore_errors=True)
    export(sc, MODEL)
    index_path = f"{MODEL}/model_index.json"
    with open(index_path) as f:
        index = json.load(f)
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    index["requires_safety_checker"] = True
    with open(index_path, "w") as f:
        json.dump(index, f, indent=2)

    resample_fixtures()


if __name__ == "__main__":
    main()
