"""The torch side of scripts/gpu-check, and its report.

  latents  OUT.npy --size S --seed N         huabi's initial latents for seed N (engine::noise), shape [1, 4, S/8, S/8]
  pictures DIFFUSERS OUT_PREFIX --latents F   diffusers' torch pipeline, float32 and float16, from those latents:
                                              OUT_PREFIX-fp32.npy and OUT_PREFIX-fp16.npy, [1, H, W, 3] in 0..1
  bench    DIFFUSERS --size S --steps N --batches 1,4,8 --runs R   one JSON line per batch size (float16, torch SDPA)
  ceiling                                    float16 matrix products on this GPU, TFLOP/s (the device's roof)
  report   DIR [--pictures PNG]              reads what gpu-check left in DIR: gpu-report.json, a table, and the
                                              pictures side by side (huabi GPU, fused, CPU; torch fp16, fp32)

Every torch run uses the weights huabi's ONNX files were exported from (make_models.py --keep-diffusers), the
Euler scheduler of that folder, guidance 7.5, and `output_type="np"` (no PIL, as huabi's bench does no encoding).
"""
import argparse
import glob
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

PROMPT = "a photo of the moon, mid-autumn festival"
NEGATIVE = "blurry"
GUIDANCE = 7.5
# FLOPs (2 x multiply-adds) of SD 1.5 at 512x512, counted by torch's FlopCounterMode (../shared/research/sd.md 5.1):
# one UNet pass 0.803 TFLOP, so 1.607 per image per step with guidance (two passes); the VAE decoder 2.51; the text
# encoder 0.013 per prompt. Scaled by pixels for other sizes.
UNET_STEP_TFLOP_512 = 1.6065
VAE_TFLOP_512 = 2.5145
TEXT_TFLOP = 0.0133
# NVIDIA's dense float16 tensor-core figure for the H100/H200 SXM.
SPEC_TFLOPS = {"H200": 989.4, "H100": 989.4}


def device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pipeline(folder, dtype):
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device())


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def cmd_latents(a):
    from diffusers_reference import Noise

    n = a.size // 8
    np.save(a.out, Noise(a.seed).normals(4 * n * n).reshape(1, 4, n, n))


def cmd_pictures(a):
    import torch

    latents = np.load(a.latents)
    size = latents.shape[-1] * 8
    for name, dtype in [("fp32", torch.float32), ("fp16", torch.float16)]:
        pipe = pipeline(a.diffusers, dtype)
        with torch.no_grad():
            image = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=size, width=size,
                         num_inference_steps=a.steps, guidance_scale=GUIDANCE, output_type="np",
                         latents=torch.from_numpy(latents).to(device(), dtype)).images
        np.save(f"{a.out_prefix}-{name}.npy", np.asarray(image, dtype=np.float32))
        del pipe
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def cmd_bench(a):
    import torch

    pipe = pipeline(a.diffusers, torch.float16 if device() == "cuda" else torch.float32)
    for batch in [int(b) for b in a.batches.split(",")]:
        def run():
            sync()
            started = time.perf_counter()
            with torch.no_grad():
                pipe(prompt=[PROMPT] * batch, negative_prompt=[NEGATIVE] * batch, height=a.size, width=a.size,
                     num_inference_steps=a.steps, guidance_scale=GUIDANCE, output_type="np")
            sync()
            return time.perf_counter() - started

        run()  # warm-up: cuDNN/cuBLAS choose their kernels for this shape
        seconds = statistics.median(run() for _ in range(a.runs))
        print(json.dumps({"batch": batch, "seconds": seconds, "seconds_per_image": seconds / batch,
                          "images_per_sec": batch / seconds}), flush=True)


def cmd_ceiling(_a):
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"device": "cpu", "tflops": None}))
        return
    n = 8192
    x = torch.randn(n, n, device="cuda", dtype=torch.float16)
    y = torch.randn(n, n, device="cuda", dtype=torch.float16)
    for _ in range(3):
        x @ y
    sync()
    started = time.perf_counter()
    for _ in range(10):
        x @ y
    sync()
    tflops = 10 * 2 * n**3 / (time.perf_counter() - started) / 1e12
    print(json.dumps({"device": torch.cuda.get_device_name(0), "tflops": tflops}))


# --- report --------------------------------------------------------------------------------------------------------

def difference(a, b):
    """Max and mean absolute difference (0..1 scale) and PSNR in dB."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return {"error": f"shapes differ: {list(a.shape)} and {list(b.shape)}"}
    d = np.abs(a - b)
    mse = float((d ** 2).mean())
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
            "psnr_db": float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))}


def picture_check(d, gpu="huabi-gpu"):
    """huabi's GPU picture (`gpu`.npy) against its CPU float32 picture, judged by what float16 does to diffusers'."""
    files = {k: f"{d}/{k}.npy" for k in [gpu, "huabi-cpu", "torch-fp16", "torch-fp32"]}
    if not all(os.path.exists(f) for f in files.values()):
        return {"verdict": "not run", "missing": [k for k, f in files.items() if not os.path.exists(f)]}
    p = {k: np.load(f) for k, f in files.items()}
    pairs = {
        f"{gpu} vs huabi cpu fp32": difference(p[gpu], p["huabi-cpu"]),
        "torch fp16 vs torch fp32": difference(p["torch-fp16"], p["torch-fp32"]),
        "huabi cpu fp32 vs torch fp32": difference(p["huabi-cpu"], p["torch-fp32"]),
        f"{gpu} vs torch fp16": difference(p[gpu], p["torch-fp16"]),
    }
    ours, theirs = pairs[f"{gpu} vs huabi cpu fp32"], pairs["torch fp16 vs torch fp32"]
    if "error" in ours or "error" in theirs:
        return {"verdict": "FAIL", "pairs": pairs}
    finite = bool(np.isfinite(p[gpu]).all())
    # float16 moves pictures; huabi's move must stay within twice what it does to diffusers' own, or 2/255.
    tolerance = max(2 * theirs["mean_abs"], 2 / 255)
    verdict = "PASS" if finite and ours["mean_abs"] <= tolerance else "FAIL"
    return {"verdict": verdict, "tolerance_mean_abs": tolerance, "finite": finite, "pairs": pairs}


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip().startswith("{")]


def median_by_batch(rows, key):
    out = {}
    for b in sorted({r["batch"] for r in rows if "batch" in r}):
        out[b] = statistics.median(r[key] for r in rows if r.get("batch") == b)
    return out


def best_batch(rows, budget):
    """The batch size with the most images/s whose batch takes at most `budget` seconds (median), or None."""
    seconds, ips = median_by_batch(rows, "seconds"), median_by_batch(rows, "images_per_sec")
    fitting = [b for b in ips if seconds[b] <= budget]
    if not fitting:
        return None
    b = max(fitting, key=lambda b: ips[b])
    return {"batch": b, "images_per_sec": ips[b], "seconds": seconds[b]}


def cmd_report(a):
    d = a.dir
    with open(f"{d}/settings.json") as f:
        settings = json.load(f)
    ceiling = (read_jsonl(f"{d}/ceiling.jsonl") or [{}])[0]
    huabi, torch_rows = read_jsonl(f"{d}/huabi.jsonl"), read_jsonl(f"{d}/diffusers.jsonl")
    stages = read_jsonl(f"{d}/stages.jsonl")
    size, steps = settings["size"], settings["steps"]
    tflop_per_image = (UNET_STEP_TFLOP_512 * steps + VAE_TFLOP_512) * size * size / (512 * 512) + 2 * TEXT_TFLOP
    gpu = ceiling.get("device") or "cpu"
    spec = next((v for k, v in SPEC_TFLOPS.items() if k in gpu), None)
    rows = []
    h_ips, t_ips = median_by_batch(huabi, "images_per_sec"), median_by_batch(torch_rows, "images_per_sec")
    h_parts = {k: median_by_batch(huabi, k) for k in ["text", "denoise", "decode"]}
    for b in sorted(set(h_ips) | set(t_ips)):
        hi, ti = h_ips.get(b), t_ips.get(b)
        rows.append({
            "batch": b, "huabi_images_per_sec": hi, "diffusers_fp16_images_per_sec": ti,
            "huabi_vs_diffusers": hi / ti if hi and ti else None,
            "huabi_tflops": hi * tflop_per_image if hi else None,
            "huabi_share_of_spec": hi * tflop_per_image / spec if hi and spec else None,
            "huabi_share_of_measured_ceiling": hi * tflop_per_image / ceiling["tflops"]
            if hi and ceiling.get("tflops") else None,
            "huabi_seconds_text_denoise_decode": [h_parts[k].get(b) for k in ["text", "denoise", "decode"]],
        })
    variants = []
    rows_by_label = {}
    for r in read_jsonl(f"{d}/huabi-variants.jsonl"):
        rows_by_label.setdefault(r["label"], []).append(r)
    for label, label_rows in rows_by_label.items():
        for b, ips in median_by_batch(label_rows, "images_per_sec").items():
            variants.append({"variant": label, "batch": b, "huabi_images_per_sec": ips,
                             "vs_huabi": ips / h_ips[b] if h_ips.get(b) else None,
                             "vs_diffusers": ips / t_ips[b] if t_ips.get(b) else None,
                             "share_of_measured_ceiling": ips * tflop_per_image / ceiling["tflops"]
                             if ceiling.get("tflops") else None})
    latency_budget = float(os.environ.get("GPU_CHECK_LATENCY", "10"))
    contenders = {"huabi": huabi, "diffusers": torch_rows, **rows_by_label}
    best_batches = {name: best_batch(rows, latency_budget) for name, rows in contenders.items()}
    report = {"settings": settings, "variants": variants, "latency_budget_seconds": latency_budget,
              "best_batch_within_budget": best_batches, "gpu": gpu, "spec_fp16_tflops": spec, "measured_fp16_tflops": ceiling.get("tflops"),
              "tflop_per_image": tflop_per_image, "picture_check": picture_check(d), "fused_picture_check": picture_check(d, "huabi-fused"), "throughput": rows,
              "stages": stages}
    with open(f"{d}/gpu-report.json", "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nhuabi gpu-check on {gpu}: {size}x{size}, {steps} steps, huabi {settings['huabi_commit'][:10]}")
    for title, check in [("picture check", report["picture_check"]),
                         ("fused model's picture check", report["fused_picture_check"])]:
        print(f"{title}: {check['verdict']}", end="")
        if "pairs" in check:
            print(f" (mean |diff| must be <= {check['tolerance_mean_abs']:.4f})")
            for name, diff in check["pairs"].items():
                if "error" in diff:
                    print(f"  {name:<32} {diff['error']}")
                else:
                    print(f"  {name:<32} mean {diff['mean_abs']:.4f}  max {diff['max_abs']:.4f}  "
                          f"PSNR {diff['psnr_db']:.1f} dB")
        else:
            print(f" (missing {', '.join(check['missing'])})")
    fmt = lambda v, spec=".2f": "-" if v is None else format(v, spec)
    print(f"\n{'batch':>5} {'huabi img/s':>12} {'diffusers fp16':>15} {'ratio':>6} {'TFLOP/s':>13} "
          f"{'of spec':>8} {'of measured':>12}   huabi text/denoise/decode s")
    for r in rows:
        parts = "/".join(fmt(v, ".3f") for v in r["huabi_seconds_text_denoise_decode"])
        print(f"{r['batch']:>5} {fmt(r['huabi_images_per_sec']):>12} {fmt(r['diffusers_fp16_images_per_sec']):>15} "
              f"{fmt(r['huabi_vs_diffusers']):>6} {fmt(r['huabi_tflops'], '.1f'):>13} "
              f"{fmt(r['huabi_share_of_spec'], '.1%'):>8} {fmt(r['huabi_share_of_measured_ceiling'], '.1%'):>12}   "
              f"{parts}")
    if variants:
        print(f"\n{'huabi variant':<36} {'batch':>5} {'img/s':>7} {'vs huabi':>9} {'vs diffusers':>13} {'of measured':>12}")
    for v in variants:
        print(f"{v['variant']:<36} {v['batch']:>5} {fmt(v['huabi_images_per_sec']):>7} {fmt(v['vs_huabi']):>9} "
              f"{fmt(v['vs_diffusers']):>13} {fmt(v['share_of_measured_ceiling'], '.1%'):>12}")
    print(f"\nbest batch size within {latency_budget:.0f} s a batch (GPU_CHECK_LATENCY; engine.max_batch): " +
          ", ".join(f"{name} {v['batch']} ({v['images_per_sec']:.2f} img/s, {v['seconds']:.2f} s)" if v else
                    f"{name} none" for name, v in best_batches.items()))
    print(f"\nfloat16 matrix products measured here: {fmt(ceiling.get('tflops'), '.0f')} TFLOP/s"
          f" (spec {fmt(spec, '.0f')}); one image is ~{tflop_per_image:.1f} TFLOP (UNet with guidance, VAE, text)")
    print("stages: " + ", ".join(f"{s['stage']} {s['seconds']:.0f} s" + ("" if s["ok"] else " (failed)")
                                 for s in stages))
    if a.pictures:
        side_by_side(d, a.pictures)


def side_by_side(d, path):
    from PIL import Image

    names = ["huabi-gpu", "huabi-fused", "huabi-cpu", "torch-fp16", "torch-fp32"]
    shown = [np.load(f"{d}/{n}.npy")[0] for n in names if os.path.exists(f"{d}/{n}.npy")]
    if shown:
        row = np.concatenate([np.nan_to_num(p).clip(0, 1) for p in shown], axis=1)
        Image.fromarray((row * 255).round().astype(np.uint8)).save(path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("latents")
    s.add_argument("out")
    s.add_argument("--size", type=int, required=True)
    s.add_argument("--seed", type=int, required=True)
    s = sub.add_parser("pictures")
    s.add_argument("diffusers")
    s.add_argument("out_prefix")
    s.add_argument("--latents", required=True)
    s.add_argument("--steps", type=int, required=True)
    s = sub.add_parser("bench")
    s.add_argument("diffusers")
    s.add_argument("--size", type=int, required=True)
    s.add_argument("--steps", type=int, required=True)
    s.add_argument("--batches", required=True)
    s.add_argument("--runs", type=int, required=True)
    sub.add_parser("ceiling")
    s = sub.add_parser("report")
    s.add_argument("dir")
    s.add_argument("--pictures", help="write the pictures side by side into this PNG")
    a = p.parse_args()
    {"latents": cmd_latents, "pictures": cmd_pictures, "bench": cmd_bench, "ceiling": cmd_ceiling,
     "report": cmd_report}[a.command](a)


if __name__ == "__main__":
    main()
