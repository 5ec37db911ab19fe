"""Reference values from diffusers for huabi's engine tests (committed under tests/fixtures/diffusers/).

1. schedulers.json: for each scheduler huabi supports and several spacings/step counts, diffusers' timesteps,
   sigmas, init_noise_sigma, scale_model_input of a known sample, and a 3-step trajectory with a known model output.
2. pipeline-<scheduler>.npy: diffusers' own torch StableDiffusionPipeline output, on the weights models/tiny-sd was
   exported from (scripts/make_models.py rebuilds them from their seed), from fixed initial latents
   (init-latents.npy), 64x64, 6 steps, guidance 7.5 — huabi must match within 1e-3.
3. img2img-<scheduler>.npy: StableDiffusionImg2ImgPipeline on the same weights from photo.png, strength 0.6, the
   noise added from img2img-noise.npy (img2img.json says how).

Random draws (initial latents, and the noise Euler ancestral and LCM add each step) come from huabi's own
generator (SplitMix64 + Box-Muller, re-implemented below), so huabi can reproduce them exactly: diffusers'
randn_tensor is patched to draw from it.

Usage: python scripts/diffusers_reference.py  (needs scripts/requirements-model.txt)
"""
import json
import os

import numpy as np
import torch

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
OUT = "tests/fixtures/diffusers"
MODEL = "models/tiny-sd"
PROMPT = "a photo of the moon, mid-autumn festival"
STEPS = 6
SEED = 42
STRENGTH = 0.6


class Noise:
    """huabi's engine::noise::Noise: SplitMix64 -> uniform (0,1) -> Box-Muller pairs."""

    def __init__(self, seed):
        self.seed = np.uint64(seed)
        self.drawn = 0  # u64 values consumed

    def _u64(self, count):
        with np.errstate(over="ignore"):
            k = np.arange(self.drawn + 1, self.drawn + count + 1, dtype=np.uint64)
            z = self.seed + k * GOLDEN
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
        self.drawn += count
        return z

    def normals(self, n):
        pairs = (n + 1) // 2
        u = ((self._u64(2 * pairs) >> np.uint64(11)).astype(np.float64) + 0.5) / float(2**53)
        u1, u2 = u[0::2], u[1::2]
        r = np.sqrt(-2.0 * np.log(u1))
        out = np.empty(2 * pairs)
        out[0::2] = r * np.cos(2 * np.pi * u2)
        out[1::2] = r * np.sin(2 * np.pi * u2)
        return out[:n].astype(np.float32)


def patch_noise(stream):
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as ea
    import diffusers.schedulers.scheduling_lcm as lcm

    def randn_tensor(shape, generator=None, device=None, dtype=None, **_):
        n = int(np.prod(shape))
        return torch.from_numpy(stream.normals(n).reshape(shape)).to(dtype or torch.float32)

    ea.randn_tensor = randn_tensor
    lcm.randn_tensor = randn_tensor


def schedulers():
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, LCMScheduler

    return {
        "euler": (EulerDiscreteScheduler, {}),
        "euler_a": (EulerAncestralDiscreteScheduler, {}),
        "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
        "ddim": (DDIMScheduler, {}),
        "lcm": (LCMScheduler, {}),
    }


def scheduler_reference(base_config):
    cases = []
    x0 = Noise(7).normals(64).reshape(1, 4, 4, 4)
    c = Noise(8).normals(64).reshape(1, 4, 4, 4)
    for name, (cls, extra) in schedulers().items():
        for spacing in ["leading", "linspace", "trailing"]:
            for n in [1, 4, 20]:
                cfg = dict(base_config, timestep_spacing=spacing, **extra)
                s = cls.from_config(cfg)
                s.set_timesteps(n)
                stream = Noise(9)
                patch_noise(stream)
                x = torch.from_numpy(x0.copy())
                traj = []
                scaled = s.scale_model_input(x, s.timesteps[0]).numpy().ravel().tolist()
                for t in s.timesteps[:3]:
                    eps = 0.3 * x + torch.from_numpy(c)
                    x = s.step(eps, t, x).prev_sample
                    traj.append(x.numpy().ravel().tolist())
                sigmas = getattr(s, "sigmas", None)
                cases.append({
                    "scheduler": name, "spacing": spacing, "steps": n,
                    "timesteps": [float(t) for t in s.timesteps],
                    "sigmas": [float(v) for v in sigmas] if sigmas is not None and name != "ddim" and name != "lcm" else None,
                    "init_noise_sigma": float(s.init_noise_sigma),
                    "scaled_first": scaled,
                    "trajectory": traj,
                })
    return {"x0_seed": 7, "c_seed": 8, "noise_seed": 9, "shape": [1, 4, 4, 4], "model_output": "0.3 * x + c", "cases": cases}


def pipeline_reference(base_config):
    from make_models import tiny_sd

    latents = Noise(SEED).normals(4 * 8 * 8).reshape(1, 4, 8, 8)
    np.save(f"{OUT}/init-latents.npy", latents)
    summary = {}
    pipe = tiny_sd()  # the torch pipeline models/tiny-sd was exported from (same seed, same weights)
    pipe.set_progress_bar_config(disable=True)
    for name, (cls, extra) in schedulers().items():
        pipe.scheduler = cls.from_config(dict(base_config, **extra))
        stream = Noise(SEED)
        stream.normals(4 * 8 * 8)  # the initial latents come first in the item's stream
        patch_noise(stream)
        with torch.no_grad():
            image = pipe(PROMPT, negative_prompt="", height=64, width=64, num_inference_steps=STEPS,
                         guidance_scale=7.5, latents=torch.from_numpy(latents.copy()), output_type="np").images[0]
        np.save(f"{OUT}/pipeline-{name}.npy", image.astype(np.float32))
        summary[name] = {"mean": float(image.mean()), "std": float(image.std())}
    return summary


def img2img_reference(base_config):
    """diffusers' StableDiffusionImg2ImgPipeline on the same weights, from a 64x96 photo (huabi crops its centre
    64x64; diffusers is given that crop), strength 0.6 of 6 steps. Its random draws, in its order: the VAE
    posterior's sample (huabi: the item's stream after the first block), the noise added (img2img-noise.npy, as
    huabi's --init-latents), then the schedulers' own (the stream goes on)."""
    import diffusers.models.autoencoders.vae as vae_module
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as img2img_module
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image
    from make_models import tiny_sd

    y, x = np.mgrid[0:96, 0:64]
    photo = np.stack([x * 4, y * 2, 255 - x * 2 - y], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(photo).save(f"{OUT}/photo.png")
    crop = Image.fromarray(photo).crop((0, 16, 64, 80))
    n = 4 * 8 * 8
    noise = Noise(99).normals(n).reshape(1, 4, 8, 8)
    np.save(f"{OUT}/img2img-noise.npy", noise)
    pipe = StableDiffusionImg2ImgPipeline(**tiny_sd().components)
    pipe.set_progress_bar_config(disable=True)
    summary = {}
    for name, (cls, extra) in schedulers().items():
        pipe.scheduler = cls.from_config(dict(base_config, **extra))
        stream = Noise(SEED)
        stream.normals(n)  # huabi's stream: the noise block first (replaced by the file), then the VAE's sample
        queue = [stream.normals(n).reshape(1, 4, 8, 8), noise]

        def randn_tensor(shape, generator=None, device=None, dtype=None, **_):
            values = queue.pop(0) if queue else stream.normals(int(np.prod(shape))).reshape(shape)
            return torch.from_numpy(np.asarray(values, dtype=np.float32).reshape(shape)).to(dtype or torch.float32)

        patch_noise(stream)
        vae_module.randn_tensor = randn_tensor
        img2img_module.randn_tensor = randn_tensor
        import diffusers.schedulers.scheduling_euler_ancestral_discrete as ea
        import diffusers.schedulers.scheduling_lcm as lcm
        ea.randn_tensor = randn_tensor
        lcm.randn_tensor = randn_tensor
        with torch.no_grad():
            image = pipe(PROMPT, image=crop, strength=STRENGTH, negative_prompt="", num_inference_steps=STEPS,
                         guidance_scale=7.5, output_type="np").images[0]
        assert not queue, "diffusers drew fewer values than expected"
        np.save(f"{OUT}/img2img-{name}.npy", image.astype(np.float32))
        summary[name] = {"mean": float(image.mean()), "std": float(image.std())}
    return summary


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(f"{MODEL}/scheduler/scheduler_config.json") as f:
        base = json.load(f)
    base = {k: v for k, v in base.items() if not k.startswith("_")}
    with open(f"{OUT}/schedulers.json", "w") as f:
        json.dump(scheduler_reference(base), f)
    summary = pipeline_reference(base)
    with open(f"{OUT}/pipeline.json", "w") as f:
        json.dump({"prompt": PROMPT, "negative": "", "steps": STEPS, "guidance": 7.5, "width": 64, "height": 64,
                   "seed": SEED, "images": summary}, f, indent=2)
    img2img = img2img_reference(base)
    with open(f"{OUT}/img2img.json", "w") as f:
        json.dump({"prompt": PROMPT, "negative": "", "steps": STEPS, "guidance": 7.5, "width": 64, "height": 64,
                   "seed": SEED, "strength": STRENGTH, "photo": "photo.png", "noise": "img2img-noise.npy",
                   "images": img2img}, f, indent=2)
    print(json.dumps({"txt2img": summary, "img2img": img2img}, indent=2))


if __name__ == "__main__":
    main()
