"""Generation speed and sampler quality, measured side by side in one run.

1. **Pipeline overhead** (seconds per image, interleaved rounds, median):
   * the shipped pixel-space model (``models/altdiffusion-emoji``): ``AltDiffusionPipeline.__call__`` vs
     the bare loop over the same UNet calls (encode once, guidance, ``scheduler.step``, no checks, no
     progress bar); target overhead <= 5%;
   * a latent model in the released AltDiffusion layout (random, seeded: XLM-R-like
     ``RobertaSeriesModelWithTransformation`` text encoder, a UNet, a small VAE): ours vs diffusers' own
     deprecated ``AltDiffusionPipeline`` on the same components; target <= 1.0x.
2. **Samplers vs DDPM 1000** on the shipped model: generation R@10 of seen concepts (English names,
   judged by ``models/brivl-emoji``, same concepts and noise seeds for every sampler) for SDE-DPM-Solver++
   (the default, picked on val) at 10 / 20 steps, DPM-Solver++ (2M, ODE) at 20, DDIM at 25 / 50 and DDPM at
   1000; target: DPM-Solver++ 20 within 2 points of DDPM 1000.

    python benchmarks/generate.py [--rounds 5] [--n 50] [--skip-samplers]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def bare_loop(pipe, prompts: list[str], steps: int, guidance: float, seed: int) -> torch.Tensor:
    """The same UNet calls as the pipeline, written out with nothing else (the overhead baseline)."""
    from diffusion.pipeline_alt_diffusion import denoiser_inputs, encode_texts

    with torch.no_grad():
        states, mask = encode_texts(pipe.tokenizer, pipe.text_encoder, [""] * len(prompts) + prompts,
                                    pipe.config.tokenizer_max_length, "cpu")
        kwargs = denoiser_inputs(pipe.unet, states, mask)
        sched = pipe.scheduler
        sched.set_timesteps(steps)
        shape = (len(prompts), pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * sched.init_noise_sigma
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([x, x]), t)
            uncond, cond = pipe.unet(inp, t, **kwargs).sample.chunk(2)
            x = sched.step(uncond + guidance * (cond - uncond), t, x).prev_sample
        return pipe.decode(x)


def timed(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def side_by_side(sides: dict, rounds: int, per_call: int) -> dict[str, float]:
    """Median seconds per image of each side, rounds interleaved (A B A B ...) after one warm-up call each."""
    for fn in sides.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            times[name] += timed(fn, 1)
    return {k: statistics.median(v) / per_call for k, v in times.items()}


def released_layout_components(seed: int = 0):
    """Random components in BAAI/AltDiffusion's layout, small enough for a CPU run."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
        RobertaSeriesConfig, RobertaSeriesModelWithTransformation)
    from transformers import XLMRobertaTokenizerFast

    torch.manual_seed(seed)
    tok = XLMRobertaTokenizerFast(tokenizer_file=str(REPO / "models" / "altclip-emoji" / "tokenizer.json"),
                                  model_max_length=77)  # both pipelines pad to 77 tokens
    text = RobertaSeriesModelWithTransformation(RobertaSeriesConfig(
        vocab_size=len(tok), hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=512,
        project_dim=128, max_position_embeddings=90, pad_token_id=tok.pad_token_id)).eval()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(64, 128, 128),
        norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=128,
        attention_head_dim=32).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                        layers_per_block=1, norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32).eval()
    return dict(text_encoder=text, tokenizer=tok, unet=unet, vae=vae,
                scheduler=DDIMScheduler(num_train_timesteps=1000, clip_sample=False))


def overhead(a) -> None:
    from diffusers.pipelines.deprecated.alt_diffusion import AltDiffusionPipeline as DiffusersAltDiffusion

    from diffusion.cli import load_pipeline
    from diffusion.pipeline_alt_diffusion import AltDiffusionPipeline

    prompts = ["一只猫", "a red heart", "кошка", "corazón rojo"]
    steps, g = a.steps, 3.0
    pipe = load_pipeline(a.model, "ddim")
    pipe.set_progress_bar_config(disable=True)

    def ours():
        gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
        return pipe(prompts, num_inference_steps=steps, guidance_scale=g, generator=gens, output_type="pt").images

    t = side_by_side({"ours": ours, "bare": lambda: bare_loop(pipe, prompts, steps, g, 0)}, a.rounds, len(prompts))
    print(f"shipped model {a.model}, DDIM {steps} steps, guidance {g}, batch {len(prompts)}:")
    print(f"  ours (AltDiffusionPipeline)   {t['ours'] * 1000:8.1f} ms/image")
    print(f"  bare loop, same UNet calls    {t['bare'] * 1000:8.1f} ms/image")
    print(f"  pipeline overhead: {100 * (t['ours'] / t['bare'] - 1):+.1f}% (target <= 5%)")

    parts = released_layout_components()
    ours_l = AltDiffusionPipeline(**parts, tokenizer_max_length=77)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = DiffusersAltDiffusion(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    for p in (ours_l, theirs):
        p.set_progress_bar_config(disable=True)

    def run(p):
        gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
        return p(prompts, num_inference_steps=steps, guidance_scale=g, generator=gens, output_type="np").images

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = side_by_side({"ours": lambda: run(ours_l), "diffusers": lambda: run(theirs)}, a.rounds, len(prompts))
    print(f"released layout (random, latent 16x16 -> 32 px, {steps} steps, guidance {g}, batch {len(prompts)}):")
    print(f"  ours (AltDiffusionPipeline)                 {t['ours'] * 1000:8.1f} ms/image")
    print(f"  diffusers' deprecated AltDiffusionPipeline  {t['diffusers'] * 1000:8.1f} ms/image")
    print(f"  ratio ours/diffusers = {t['ours'] / t['diffusers']:.2f} (target <= 1.0)")


def samplers(a) -> None:
    from brivl.data.transforms import to_batch
    from brivl.data.views import load_view
    from brivl.factory import create_model
    from diffusion.cli import load_pipeline
    from diffusion.evaluate import generation_recall, pick_concepts

    judge = create_model(a.judge).eval()
    gallery, _ = load_view(a.data, "closed")
    images = to_batch(gallery, judge.image_size, (0.0,) * 3, (1.0,) * 3)
    keys = [s["key"] for s in gallery]
    concepts = pick_concepts(load_view(a.data, "train")[0], a.n, 0)
    print(f"\nsamplers: seen concepts (train split), English names, n = {len(concepts)}, guidance {a.guidance}, "
          f"judge {a.judge}, gallery {len(keys)} (chance R@10 {10 / len(keys):.4f})")
    rows = {}
    for name, steps in (("dpm++sde", 10), ("dpm++sde", 20), ("dpm++", 20), ("ddim", 25), ("ddim", 50),
                        ("ddpm", 1000)):
        pipe = load_pipeline(a.model, name)
        pipe.set_progress_bar_config(disable=True)
        t0 = time.perf_counter()
        r = generation_recall(pipe, judge, images, keys, concepts, ["en"], steps=steps, guidance=a.guidance,
                              shuffled=False, progress=False)["languages"]["en"]
        rows[(name, steps)] = r
        print(f"  {name:6s} {steps:5d} steps: R@10 {r['R@10']:.3f} [{r['R@10_ci'][0]:.3f}, {r['R@10_ci'][1]:.3f}]  "
              f"R@1 {r['R@1']:.3f}  median rank {r['median_rank']:g}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    for name in ("dpm++sde", "dpm++"):
        gap = rows[(name, 20)]["R@10"] - rows[("ddpm", 1000)]["R@10"]
        print(f"{name} 20 - DDPM 1000: {100 * gap:+.1f} points R@10 (target >= -2)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "models" / "altdiffusion-emoji"))
    p.add_argument("--judge", default=str(REPO / "models" / "brivl-emoji"))
    p.add_argument("--data", default=str(REPO / "data" / "emoji"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--n", type=int, default=50, help="concepts for the sampler comparison")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-samplers", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    overhead(a)
    if not a.skip_samplers:
        samplers(a)


if __name__ == "__main__":
    main()
