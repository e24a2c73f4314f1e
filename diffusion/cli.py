"""``python -m diffusion``: train an AltDiffusion UNet on a multilingual text tower, export it, generate.

    python -m diffusion fit --config configs/altdiffusion-emoji.yaml
    python -m diffusion export --ckpt runs/altdiffusion-emoji/version_0/checkpoints/last.ckpt \\
        --config runs/altdiffusion-emoji/version_0/config.yaml --out models/altdiffusion-emoji
    python -m diffusion generate --model models/altdiffusion-emoji "一只猫" "a red heart" --out grid.png
    python -m diffusion eval --model models/altdiffusion-emoji --judge models/brivl-emoji --data data/emoji

``export`` writes a diffusers folder (``model_index.json``, ``text_encoder/``, ``tokenizer/``, ``unet/``
with the EMA weights, ``scheduler/`` DDIM) that ``AltDiffusionPipeline.from_pretrained`` loads.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from altclip.cli import lightning_main  # LightningCLI, model and data named by class_path in the config
from brivl.cli import CLIError, read_checkpoint, run_cli


def pipeline_from_checkpoint(ckpt: str, config: str | None = None):
    """The EMA UNet of a training checkpoint (read with ``weights_only=True``) in an AltDiffusionPipeline, with the
    checkpoint's state and hyper-parameters."""
    from .model import build_pipeline, create_unet, load_text_tower, noise_scheduler, text_width

    state, hp = read_checkpoint(ckpt, config)
    text, tokenizer, ctx = load_text_tower(hp["text_tower"])
    unet = create_unet(hp["unet"], text_width(text))
    sd = {k[len("unet_ema."):]: v for k, v in state["state_dict"].items() if k.startswith("unet_ema.")}
    missing, unexpected = unet.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CLIError(f"{ckpt} does not fit the UNet {hp['unet']!r}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    sched = noise_scheduler(hp["num_train_timesteps"], hp["beta_schedule"], hp.get("prediction_type", "epsilon"))
    return build_pipeline(text, tokenizer, unet.eval(), sched.config, ctx), hp, state


def resume_files(state: dict, hp: dict, pipe, config: str | None) -> dict:
    """``training_state.*`` for the exported folder: the online UNet and the history of the run's legs."""
    from .resume import fingerprint, training_state_files

    online = {k[len("unet."):]: v for k, v in state["state_dict"].items() if k.startswith("unet.")}
    saved = state.get("altdiffusion") or {}
    fp = fingerprint(pipe.unet.config, hp["text_tower"], hp.get("prediction_type", "epsilon"),
                     hp["num_train_timesteps"], hp["beta_schedule"])
    steps = int(state.get("global_step", 0))
    leg = {"config": config or "", "init_from": hp.get("init_from") or ""}
    return training_state_files(online, fp, saved.get("before") or {}, steps, int(saved.get("samples_seen", 0)), leg)


def cmd_export(a) -> None:
    from brivl.data.shards import write_folder_atomically

    pipe, hp, state = pipeline_from_checkpoint(a.ckpt, a.config)
    extra = {"trained_with.json": {k: v for k, v in hp.items() if isinstance(v, (str, int, float, list))},
             **resume_files(state, hp, pipe, a.config)}
    if a.config:
        extra["config.yaml"] = Path(a.config).read_text()
        curve = Path(a.config).with_name("loss_curve.png")
        if curve.exists():
            extra["loss_curve.png"] = curve.read_bytes()
    out = write_folder_atomically(a.out, lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True), extra)
    print(f"exported {a.ckpt} -> {out}")


def load_pipeline(folder: str, scheduler: str | None = None):
    """An exported pipeline folder (with ``scheduler`` swapped in), or a one-line error that says how to make one."""
    from .model import set_scheduler
    from .pipeline_alt_diffusion import AltDiffusionPipeline

    if not (Path(folder) / "model_index.json").is_file():
        raise CLIError(f"{folder} is not a pipeline folder (no model_index.json): export one with "
                       "`python -m diffusion export`")
    try:
        # low_cpu_mem_usage=False: accelerate is not a dependency, and diffusers would warn that it is missing
        pipe = AltDiffusionPipeline.from_pretrained(folder, low_cpu_mem_usage=False)
        return set_scheduler(pipe, scheduler) if scheduler else pipe
    except ValueError as e:  # a text tower that does not fit the UNet, an unknown scheduler
        raise CLIError(f"{folder}: {e}") from None


def generate_grid(pipe, prompts: list[str], per_prompt: int, steps: int, guidance: float, seed: int, scale: int,
                  out: str) -> int:
    """``per_prompt`` images of each prompt (image i from seed + i) saved as a grid, a row per prompt; returns the
    number of images."""
    import torch

    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts) * per_prompt)]
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, num_images_per_prompt=per_prompt,
                  generator=gens).images
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, len(prompts), per_prompt, scale).save(out)
    return len(images)


def picked_guidance(model: str, fallback: float = 3.0) -> float:
    """The guidance scale the model's ``eval.json`` reports (the one picked on val), else ``fallback``."""
    import json

    try:
        return float(next(iter(json.loads((Path(model) / "eval.json").read_text())["train"]["by_guidance"])))
    except (OSError, ValueError, KeyError, StopIteration):
        return fallback


def cmd_generate(a) -> None:
    a.guidance = picked_guidance(a.model) if a.guidance is None else a.guidance
    if a.steps < 1 or a.per_prompt < 1:
        raise CLIError(f"--steps and --per-prompt must be >= 1 (got {a.steps}, {a.per_prompt})")
    pipe = load_pipeline(a.model, a.scheduler)
    prompts = list(a.prompt)
    n = generate_grid(pipe, prompts, a.per_prompt, a.steps, a.guidance, a.seed, a.scale, a.out)
    print(f"{n} images ({len(prompts)} prompts x {a.per_prompt}) -> {a.out}")


def cmd_samples(a) -> None:
    from brivl.data.views import load_view
    from brivl.data.emoji import M9

    from .samples import DEFAULT_KEYS, concept_language_grid

    a.keys = a.keys or list(DEFAULT_KEYS)
    a.guidance = picked_guidance(a.model) if a.guidance is None else a.guidance
    if a.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {a.steps}")
    pipe = load_pipeline(a.model, a.scheduler)
    by_key = {s["key"]: s for s in load_view(a.data, "closed")[0]}
    unknown = [k for k in a.keys if k not in by_key]
    if unknown:
        raise CLIError(f"keys {unknown} are not in {a.data} (keys are code points, e.g. 1f431)")
    try:
        grid = concept_language_grid(pipe, [by_key[k] for k in a.keys], a.langs or list(M9), a.steps, a.guidance,
                                     a.seed)
    except ValueError as e:
        raise CLIError(str(e)) from None
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    grid.save(a.out)
    print(f"{len(a.keys)} concepts x {len(a.langs or M9)} languages -> {a.out}")


def cmd_demo(a) -> None:
    """The main job's generation step: the demo's nine example queries as prompts, a grid beside the search grid."""
    import time

    from brivl.demo import EXAMPLE_QUERIES

    a.guidance = picked_guidance(a.model) if a.guidance is None else a.guidance
    if a.steps < 1 or a.per_prompt < 1:
        raise CLIError(f"--steps and --per-prompt must be >= 1 (got {a.steps}, {a.per_prompt})")
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()  # the demo prints its own summary; no loading bars
    transformers.utils.logging.disable_progress_bar()
    pipe = load_pipeline(a.model, "dpm++sde")
    pipe.set_progress_bar_config(disable=True)
    t = time.perf_counter()
    n = generate_grid(pipe, [q for _, q in EXAMPLE_QUERIES], a.per_prompt, a.steps, a.guidance, 0, 2, a.out)
    print(f"\ngeneration ({a.model}, SDE-DPM-Solver++ {a.steps} steps, guidance {a.guidance:g}): {n} images "
          f"in {time.perf_counter() - t:.1f} s, a row per prompt:")
    for i, (lang, q) in enumerate(EXAMPLE_QUERIES):
        print(f"  row {i + 1}: [{lang}] {q}")
    print(f"grid of generations: {a.out}")


def image_grid(images, rows: int, cols: int, scale: int = 1):
    """PIL images -> one grid, row-major (a row per prompt), each image enlarged ``scale`` times."""
    from PIL import Image

    if len(images) != rows * cols:
        raise ValueError(f"{len(images)} images do not fill a {rows} x {cols} grid")
    w, h = images[0].size[0] * scale, images[0].size[1] * scale
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im.resize((w, h), Image.Resampling.NEAREST), ((i % cols) * w, (i // cols) * h))
    return grid


def copy_tower(model: str) -> str | None:
    """The dual tower the generator's text tower comes from (``trained_with.json``), when it is a folder here."""
    import json

    try:
        tower = json.loads((Path(model) / "trained_with.json").read_text())["text_tower"]
    except (OSError, ValueError, KeyError):
        return None
    return tower if Path(tower).is_dir() else None


def report_text(result: dict) -> str:
    """The tables of a ``diffusion eval`` result: generation retrieval per guidance (with the copy baseline and
    the generation's agreement with it) and the cross-lingual consistency."""
    from .evaluate import format_consistency_table, format_generation_table

    parts = [f"\n{result['split']} concepts, {result['scheduler']} {result['steps']} steps, guidance {g}:\n"
             + format_generation_table(r, result.get("copy_baseline")) for g, r in result["by_guidance"].items()]
    if "consistency" in result:
        parts.append(f"\nguidance {result['consistency']['guidance']:g}:\n"
                     + format_consistency_table(result["consistency"]))
    return "\n".join(parts)


def print_ranks_by_vocabulary(parts: dict[str, dict], data: str) -> None:
    """``report --data``: each generation's rank split by whether every word of its prompt is in the training text
    of ``data`` (its train split's names and keywords), every language pooled."""
    from brivl.data.views import load_view
    from brivl.generalization import training_words

    from .evaluate import concept_id, ranks_by_vocabulary

    train, names = load_view(data, "train")[0], {}
    for split in {r["split"] for r in parts.values()}:
        for s in load_view(data, split)[0]:
            names.setdefault(concept_id(s), {la: c[0] for la, c in (s["meta"].get("captions") or {}).items() if c})
    langs = sorted({la for r in parts.values() for g in r["by_guidance"].values() for la in g["languages"]})
    vocab = training_words(train, langs)
    lines = ["| prompts by vocabulary (every language pooled) | R@10 [95% CI] | median rank [95% CI] | n |",
             "|---|---|---|---|"]
    for r in parts.values():
        for g, res in r["by_guidance"].items():
            for group, row in ranks_by_vocabulary(res["languages"], names, vocab).items():
                lo, hi = row["median_rank_ci"]
                ci = row.get("R@10_ci", [float("nan")] * 2)
                lines.append(f"| {r['split']}, guidance {g}, {group} | {row.get('R@10', float('nan')):.3f} "
                             f"[{ci[0]:.3f}, {ci[1]:.3f}] | {row['median_rank']:g} [{lo:g}, {hi:g}] | {row['n']} |")
    print("\n" + "\n".join(lines) + f"\n(seen words: every word of the prompt is in the names and keywords of "
          f"{data}'s train split; n counts prompts, a concept once a language, and the intervals resample prompts, "
          f"so they are narrower than a concept resample would give)")


def cmd_report(a) -> None:
    """Re-print a saved ``diffusion eval --out`` result's tables (new columns included) without generating."""
    import json

    try:
        result = json.loads(Path(a.result).read_text())
    except OSError as e:
        raise CLIError(f"cannot read {a.result}: {e.strerror}; give the JSON that `diffusion eval --out` wrote") from None
    except ValueError:
        raise CLIError(f"{a.result} is not JSON; give the file that `diffusion eval --out` wrote") from None
    # one result, or a model folder's eval.json: one result per split ({"train": ..., "test": ...})
    parts = {"": result} if isinstance(result, dict) and "by_guidance" in result else \
        {k: v for k, v in result.items() if isinstance(v, dict) and "by_guidance" in v} if isinstance(result, dict) else {}
    if not parts:
        raise CLIError(f"{a.result} is not a `diffusion eval` result (no by_guidance)")
    print("\n".join(report_text(r) for r in parts.values()))
    if a.data:
        print_ranks_by_vocabulary(parts, a.data)


def cmd_eval(a) -> None:
    import json

    from brivl.data.transforms import to_batch

    from brivl.data.views import load_view
    from brivl.data.emoji import M9, emoji_categories
    from brivl.data.shards import atomic_write_json
    from brivl.factory import create_model

    from .evaluate import (chance, concept_id, copy_baseline, cross_lingual_consistency, format_generation_table,
                           generation_recall, judge_embed, pick_concepts, positives)

    if a.n < 1 or a.steps < 1 or a.consistency < 0:
        raise CLIError(f"--n and --steps must be >= 1 and --consistency >= 0 (got {a.n}, {a.steps}, {a.consistency})")
    if any(g < 0 for g in a.guidance):
        raise CLIError(f"--guidance must be >= 0, got {a.guidance}")
    pipe = load_pipeline(a.model, a.scheduler)
    pipe.set_progress_bar_config(disable=True)  # one bar over the prompt sets instead (generation_recall)
    judge = create_model(a.judge).eval()
    gallery, _ = load_view(a.data, "closed")
    images = to_batch(gallery, judge.image_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # real renders in [0, 1]
    keys = [s["key"] for s in gallery]
    drawn = [concept_id(s) for s in gallery]  # the concept of each render (several styles: several renders)
    train_keys = [s["key"] for s in gallery if s["meta"].get("split") == "train"]
    concepts = pick_concepts(load_view(a.data, a.split)[0], a.n, a.seed)
    langs = a.langs or list(M9)
    result = {"model": a.model, "judge": a.judge, "split": a.split, "scheduler": a.scheduler, "steps": a.steps,
              "seed": a.seed, "by_guidance": {}}
    for g in ([] if a.skip_generation else a.guidance):
        result["by_guidance"][f"{g:g}"] = generation_recall(pipe, judge, images, keys, concepts, langs, train_keys,
                                                            a.steps, g, a.seed, progress=not a.json,
                                                            gallery_concepts=drawn)
    tower = copy_tower(a.model) if a.copy_tower == "auto" else a.copy_tower
    if tower and tower != "none":
        result["copy_baseline"] = copy_baseline(create_model(tower).eval(), judge_embed(judge, images), images, keys,
                                                concepts, langs, train_keys, seed=a.seed, gallery_concepts=drawn)
        result["copy_tower"] = tower
    if a.consistency and not a.skip_generation:
        picked = pick_concepts(concepts, a.consistency, a.seed + 1)
        result["consistency"] = cross_lingual_consistency(pipe, judge, picked, langs, emoji_categories(), a.steps,
                                                          a.guidance[0], a.seed)
    if a.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(report_text(result))
        if a.skip_generation and "copy_baseline" in result:
            rows = {"languages": {}, "chance": chance(len(keys), positives=positives(concepts, drawn)),
                    "gallery": len(keys)}
            print(f"\n{a.split} concepts, no generation:\n" + format_generation_table(rows, result["copy_baseline"]))
    if a.out:
        atomic_write_json(a.out, result)
        if not a.json:
            print(f"-> {a.out}")


def build_parser() -> argparse.ArgumentParser:
    from .model import SCHEDULERS

    sampler_help = f"sampler: {', '.join(SCHEDULERS)}"
    p = argparse.ArgumentParser(prog="python -m diffusion", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for c in ("fit", "validate"):
        sub.add_parser(c, help=f"Lightning {c} (LightningCLI; --config configs/altdiffusion-*.yaml)")
    e = sub.add_parser("export", help="training checkpoint -> AltDiffusionPipeline folder (EMA UNet)")
    e.add_argument("--ckpt", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--config", default=None, help="the run's config.yaml, copied into the folder")
    e.set_defaults(func=cmd_export)
    g = sub.add_parser("generate", help="prompts in any of the text tower's languages -> an image grid")
    g.add_argument("prompt", nargs="+")
    g.add_argument("--model", default="models/altdiffusion-emoji")
    g.add_argument("--out", default="runs/generate/grid.png")
    g.add_argument("--steps", type=int, default=25)
    g.add_argument("--guidance", type=float, default=None,
                   help="default: the scale the model's eval.json reports (picked on val), else 3")
    g.add_argument("--scheduler", default="dpm++sde", help=sampler_help)
    g.add_argument("--per-prompt", type=int, default=4)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--scale", type=int, default=4, help="enlarge each image this many times in the grid")
    g.set_defaults(func=cmd_generate)
    s = sub.add_parser("samples", help="the concept x language grid: each concept's name in each language, one noise a row")
    s.add_argument("--model", default="models/altdiffusion-emoji")
    s.add_argument("--data", default="data/emoji")
    s.add_argument("--keys", nargs="+", default=None, help="emoji keys (code points); default: nine seen concepts")
    s.add_argument("--langs", nargs="+", default=None)
    s.add_argument("--steps", type=int, default=25)
    s.add_argument("--guidance", type=float, default=None,
                   help="default: the scale the model's eval.json reports (picked on val), else 3")
    s.add_argument("--scheduler", default="dpm++sde", help=sampler_help)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="runs/generate/samples.png")
    s.set_defaults(func=cmd_samples)
    d = sub.add_parser("demo", help="the demo's nine example queries as prompts -> a grid (runs/demo/generations.png)")
    d.add_argument("--model", default="models/altdiffusion-emoji")
    d.add_argument("--steps", type=int, default=20)
    d.add_argument("--guidance", type=float, default=None,
                   help="default: the scale the model's eval.json reports (picked on val), else 3")
    d.add_argument("--per-prompt", type=int, default=4)
    d.add_argument("--out", default="runs/demo/generations.png")
    d.set_defaults(func=cmd_demo)
    v = sub.add_parser("eval", help="generation retrieval: generated images vs the real renders, judged by a dual tower")
    v.add_argument("--model", default="models/altdiffusion-emoji")
    v.add_argument("--judge", default="models/brivl-emoji", help="the dual tower that embeds images")
    v.add_argument("--data", default="data/emoji")
    v.add_argument("--split", default="train", help="where the concepts come from (train: seen in training)")
    v.add_argument("--n", type=int, default=200, help="concepts (all of the split if it has fewer)")
    v.add_argument("--langs", nargs="+", default=None)
    v.add_argument("--steps", type=int, default=25)
    v.add_argument("--guidance", type=float, nargs="+", default=[3.0], help="one or more scales (a sweep)")
    v.add_argument("--scheduler", default="dpm++sde", help=sampler_help)
    v.add_argument("--consistency", type=int, default=45,
                   help="concepts for the cross-lingual consistency run (0: skip)")
    v.add_argument("--copy-tower", default="auto",
                   help="the dual tower of the copy baseline (the training render it retrieves for each prompt, "
                        "judged like a generation); auto: the model's text tower (trained_with.json); none: skip")
    v.add_argument("--skip-generation", action="store_true",
                   help="only the controls that need no generation (the copy baseline, chance)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.add_argument("--out", default=None, help="write the result as JSON here")
    v.set_defaults(func=cmd_eval)
    r = sub.add_parser("report", help="re-print the tables of a saved `diffusion eval --out` JSON (no generation)")
    r.add_argument("result", help="the JSON that `diffusion eval --out` wrote")
    r.add_argument("--data", default=None,
                   help="also split the generations by whether every word of the prompt is in this data folder's "
                        "training text (the folder the eval used)")
    r.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(list(sys.argv[1:] if argv is None else argv), lightning_main, build_parser())
