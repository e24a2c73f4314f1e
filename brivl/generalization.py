"""Generalization on the multi-style emoji data (issue 14): every model on every view, as one table.

The views of a three-style build (``brivl.cli.eval_views``): ``closed`` (every concept in every style: the fit to
the training concepts), ``test`` (held-out concept families, every style), ``style:S`` (every concept in one
style: a style never trained on is the *held-out style*), ``test+style:S`` (held-out families in one style). A
text query counts a hit when any render of its concept is in the top k (clip_benchmark's convention); each cell
is the mean over the languages of text->image R@1 / R@10, with the lowest language beside the closed view. The
issue's targets are checked from the same numbers (:func:`generalization_checks`).
"""
from __future__ import annotations

from typing import Sequence

from .evaluate import mean_over_languages


def lowest_language(result: dict, metric: str = "R@1") -> tuple[str, float]:
    """(language, value) of the lowest text->image ``metric`` among a result's languages."""
    lang = min(result["languages"], key=lambda la: result["languages"][la]["t2i"][metric])
    return lang, result["languages"][lang]["t2i"][metric]


def views_table(results: dict[str, dict[str, dict]], views: Sequence[str]) -> str:
    """A markdown table: a row per model (``results[model][view]`` = a ``run_eval`` result), a column per view
    (mean t2i R@1 / R@10 over the languages; for ``closed`` also the lowest language's R@1), and a chance row."""
    head = "| t2i R@1 / R@10, mean over languages | " + " | ".join(f"`{v}`" for v in views) + " |"
    lines = [head, "|---|" + "---|" * len(views)]
    for name, by_view in results.items():
        cells = []
        for v in views:
            r = by_view.get(v)
            if r is None:
                cells.append("")
                continue
            cell = f"{mean_over_languages(r, 't2i', 'R@1'):.3f} / {mean_over_languages(r, 't2i', 'R@10'):.3f}"
            if v == "closed":
                lang, low = lowest_language(r)
                cell += f" (lowest R@1: {lang} {low:.3f})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    any_model = next(iter(results.values()))
    chance = [f"{any_model[v]['chance']['R@1']:.4f} / {any_model[v]['chance']['R@10']:.4f} (N={any_model[v]['n_images']})"
              if v in any_model else "" for v in views]
    lines.append("| chance | " + " | ".join(chance) + " |")
    return "\n".join(lines)


def generalization_checks(by_view: dict[str, dict], styles: Sequence[str], held_out_style: str | None = None) -> list[str]:
    """The issue's targets, one line each: closed R@1 mean >= 0.90 with no language < 0.85; held-out families
    R@10 mean >= 0.50 in every style; the held-out style's R@10 mean >= 0.50 (when the model has one)."""
    out = []
    if "closed" in by_view:
        r = by_view["closed"]
        mean, (lang, low) = mean_over_languages(r), lowest_language(r)
        ok = mean >= 0.90 and low >= 0.85
        out.append(f"closed, every style: mean R@1 {mean:.3f}, lowest {lang} {low:.3f} "
                   f"(target mean >= 0.90, none < 0.85: {'met' if ok else 'not met'})")
    fam = {st: mean_over_languages(by_view[f"test+style:{st}"], "t2i", "R@10") for st in styles
           if f"test+style:{st}" in by_view}
    if fam:
        ok = all(v >= 0.50 for v in fam.values())
        out.append("held-out families: R@10 " + ", ".join(f"{st} {v:.3f}" for st, v in fam.items())
                   + f" (target >= 0.50 in every style: {'met' if ok else 'not met'})")
    if held_out_style and f"style:{held_out_style}" in by_view:
        v = mean_over_languages(by_view[f"style:{held_out_style}"], "t2i", "R@10")
        out.append(f"held-out style {held_out_style}: R@10 {v:.3f} (target >= 0.50: {'met' if v >= 0.50 else 'not met'})")
    return out
