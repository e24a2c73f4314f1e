"""The concept x language grid: the same concepts prompted in each language, one noise per concept row.

Row r is one emoji concept; column 0 its real render (for reference), then one generation per language
from the concept's CLDR name in that language, all from the same starting noise, so what changes along a
row is only the language of the prompt (AltDiffusion's claim: one model, one meaning, many languages).
"""
from __future__ import annotations

from typing import Sequence

# nine concepts of the training split (seen by the generator), one per common emoji category
DEFAULT_KEYS = ("2764", "1f431", "1f436", "1f34f", "1f355", "1f338", "1f319", "1f697", "1f680")


def concept_language_grid(pipe, samples: Sequence[dict], langs: Sequence[str], steps: int = 25,
                          guidance: float = 3.0, seed: int = 0, cell: int = 64):
    """A labelled PIL grid: rows = ``samples`` (decoded emoji samples with ``image`` and ``meta``), columns =
    the real render, then ``langs``. Returns the grid image."""
    from PIL import Image, ImageDraw

    from brivl.data.transforms import flatten
    from index.grid import draw_label

    from .evaluate import generate, noise_seed

    missing = [(s["key"], lang) for s in samples for lang in langs if not (s["meta"].get("captions") or {}).get(lang)]
    if missing:
        raise ValueError(f"no CLDR name for {missing[:3]}: pick concepts named in every language of {list(langs)}")
    prompts = [s["meta"]["captions"][lang][0] for s in samples for lang in langs]
    seeds = [noise_seed(seed, s["key"], "grid") for s in samples for _ in langs]  # one noise per row
    images = generate(pipe, prompts, seeds, steps, guidance, batch=len(langs) * 3)  # (R*L, 3, H, W) in [0, 1]
    label_w, head_h = 140, 22
    grid = Image.new("RGB", (label_w + cell * (len(langs) + 1), head_h + cell * len(samples)), "white")
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(["real", *langs]):
        draw_label(draw, (label_w + j * cell + 4, 3), name, size=13)
    for r, s in enumerate(samples):
        y = head_h + r * cell
        draw_label(draw, (4, y + cell // 2 - 8), s["meta"]["captions"]["en"][0], size=13, max_width=label_w - 8)
        real = flatten(s["image"], (255, 255, 255)).resize((cell, cell), Image.Resampling.BICUBIC)
        grid.paste(real, (label_w, y))
        for j in range(len(langs)):
            x = (images[r * len(langs) + j].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
            grid.paste(Image.fromarray(x).resize((cell, cell), Image.Resampling.NEAREST), (label_w + (j + 1) * cell, y))
    return grid
