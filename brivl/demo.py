"""The README's main job: build the emoji data if missing, load the shipped model, print a per-language
retrieval table and example queries in the nine m9 languages, and save a grid of the hits."""
from __future__ import annotations

from pathlib import Path

import torch

EXAMPLE_QUERIES = [
    ("en", "cat face"), ("zh", "猫"), ("es", "pizza"), ("fr", "cœur rouge"), ("ru", "собака"),
    ("ar", "شمس"), ("ja", "桜"), ("ko", "자동차"), ("it", "luna"),
]


def ensure_data(data: str) -> None:
    if not (Path(data) / "manifest.json").exists():
        from .cli import build_parser

        print(f"building the emoji dataset under {data} ...")
        args = build_parser().parse_args(["data", "emoji", "--out", data])
        args.func(args)


def save_grid(rows: list[tuple[str, list]], out: str | Path, cell: int = 64) -> Path:
    """One row per query: its label, then its hit images."""
    from PIL import Image, ImageDraw

    from .data.datamodule import flatten

    label_w = 220
    k = max(len(h) for _, h in rows)
    grid = Image.new("RGB", (label_w + k * cell, len(rows) * cell), "white")
    draw = ImageDraw.Draw(grid)
    for r, (label, hits) in enumerate(rows):
        draw.text((4, r * cell + cell // 2 - 6), label[:34], fill="black")
        for c, img in enumerate(hits):
            grid.paste(flatten(img, (255, 255, 255)).resize((cell, cell)), (label_w + c * cell, r * cell))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


def run_demo(model_dir: str, data: str, queries: list[str] | None = None, k: int = 3,
             grid: str = "runs/demo/queries.png") -> None:
    from .cli import run_eval
    from .data.datamodule import load_view, to_batch
    from .evaluate import format_table
    from .model import create_model

    ensure_data(data)
    model = create_model(model_dir)
    closed = load_view(data, "closed")  # decoded once: evaluated, then searched below
    for view in ("closed", "test"):
        res = run_eval(model, data, view, None, name=model_dir, loaded=closed if view == "closed" else None)
        print(format_table(res, f"\n{model_dir} text->image / image->text retrieval, view={view} "
                                f"({res['n_images']} emoji)"))
    samples = closed[0]
    mean, std = model.image_mean_std
    image_emb = model.embed_images(to_batch(samples, model.image_size, mean, std))
    qs = [("", q) for q in queries] if queries else EXAMPLE_QUERIES
    text_emb = model.embed_texts([q for _, q in qs])
    scores, idx = (text_emb @ image_emb.T).topk(k, dim=1)
    print(f"\nexample queries (top {k} of {len(samples)} emoji):")
    rows = []
    for n, ((lang, q), sc, ix) in enumerate(zip(qs, scores.tolist(), idx.tolist()), 1):
        hits = [samples[i] for i in ix]
        shown = "  ".join(f"{h['meta'].get('emoji', h['key'])} {h['meta'].get('names', {}).get('en', h['key'])} "
                          f"({s:.2f})" for h, s in zip(hits, sc))
        print(f"  [{lang or '?':>2}] {q:<14} -> {shown}")
        label = q if q.isascii() else f"query {n} (see console)"  # PIL's default font is Latin-only
        rows.append((f"[{lang}] {label}" if lang else label, [h["image"] for h in hits]))
    print(f"grid of hits: {save_grid(rows, grid)}")
