"""Generalization on the multi-style emoji data (issue 14): every model on every view, as one table.

The views of a three-style build (``brivl.cli.eval_views``): ``closed`` (every concept in every style: the fit to
the training concepts), ``test`` (held-out concept families, every style), ``style:S`` (every concept in one
style: a style never trained on is the *held-out style*), ``test+style:S`` (held-out families in one style). A
text query counts a hit when any render of its concept is in the top k (clip_benchmark's convention); each cell
is the mean over the languages of text->image R@1 / R@10, with the lowest language beside the closed view. The
issue's targets are checked from the same numbers (:func:`generalization_checks`).
"""
from __future__ import annotations

import re
import unicodedata
from typing import Sequence

import torch

from .evaluate import mean_over_languages, t2i_by_group, texts_by_language

NO_SPACE = {"zh", "yue", "ja", "th", "lo", "km", "my"}  # scripts written without spaces: a word is a character


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


def closed_by_split(result: dict) -> dict[str, dict[str, float]]:
    """The closed view's queries split by their concept's split (``t2i_by_split`` of each language), averaged over
    languages: R@1, R@10, queries, and ``R@1 if train = 1``: the closed R@1 a model would score with every training
    query a hit and the held-out ones as they are (the ceiling that fitting alone can reach). {} for a result
    without the breakdown."""
    langs = [la for la in result["languages"].values() if "t2i_by_split" in la]
    if not langs:
        return {}
    splits = [sp for sp in ("train", "val", "test") if all(sp in la["t2i_by_split"] for la in langs)]
    out = {sp: {m: sum(la["t2i_by_split"][sp][m] for la in langs) / len(langs) for m in ("R@1", "R@10", "n_queries")}
           for sp in splits}
    if "train" in out:
        ceil = []
        for la in langs:
            by = la["t2i_by_split"]
            n = sum(by[sp]["n_queries"] for sp in splits)
            held = sum(by[sp]["R@1"] * by[sp]["n_queries"] for sp in splits if sp != "train")
            ceil.append((by["train"]["n_queries"] + held) / n)
        out["R@1 if train = 1"] = sum(ceil) / len(ceil)
    return out


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
        by = closed_by_split(r)
        if by:
            parts = [f"{sp} R@1 {v['R@1']:.3f} / R@10 {v['R@10']:.3f} ({v['n_queries']:.0f} queries)"
                     for sp, v in by.items() if isinstance(v, dict)]
            line = "closed, queries by split: " + "; ".join(parts)
            if "R@1 if train = 1" in by:
                line += f"; with every training query a hit the closed R@1 would be {by['R@1 if train = 1']:.3f}"
            out.append(line)
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


def name_words(text: str, lang: str) -> list[str]:
    """The words of a name (NFKC, lower-cased): ``\\w+`` runs, or single characters in a script written without
    spaces (:data:`NO_SPACE`)."""
    text = unicodedata.normalize("NFKC", text).lower()
    if lang in NO_SPACE:
        return [c for c in text if c.isalnum()]
    return re.findall(r"\w+", text)


def training_words(samples: list[dict], langs: Sequence[str]) -> dict[str, set[str]]:
    """Per language, every word of the names and keywords of ``samples`` (the training split)."""
    vocab: dict[str, set[str]] = {lang: set() for lang in langs}
    for s in samples:
        meta = s["meta"]
        for lang in langs:
            for text in (meta.get("captions") or {}).get(lang, []) + (meta.get("keywords") or {}).get(lang, []):
                vocab[lang].update(name_words(text, lang))
    return vocab


@torch.no_grad()
def word_coverage(model, images: torch.Tensor, metas: list[dict], langs: Sequence[str], vocab: dict[str, set[str]],
                  batch_size: int = 512) -> dict[str, dict]:
    """Text->image R@k of a (held-out) view's queries split by vocabulary: ``seen words`` (every word of the name
    is in the training text, ``vocab`` from :func:`training_words`) and ``new word`` (at least one is not), each
    against the whole gallery. A new concept whose name is made of known words can be composed from them; one
    with a word never read cannot, whatever the model."""
    model.eval()
    image_emb = model.embed_images(images, batch_size)  # (N, D)
    out = {}
    for lang, (texts, pos) in texts_by_language(metas, langs).items():
        if not texts:
            continue
        seen = torch.tensor([all(w in vocab.get(lang, ()) for w in name_words(t, lang)) for t in texts])
        out[lang] = t2i_by_group(image_emb, model.embed_texts(texts, batch_size), pos,
                                 {"seen words": seen, "new word": ~seen})
    return out


def word_coverage_line(view: str, by_lang: dict[str, dict], metric: str = "R@10") -> str:
    """One line: the share of queries with only seen words and the ``metric`` of each group, pooled over the
    languages' queries."""
    n = {g: sum(r[g]["n_queries"] for r in by_lang.values() if g in r) for g in ("seen words", "new word")}
    hits = {g: sum(r[g][metric] * r[g]["n_queries"] for r in by_lang.values() if g in r) for g in n}
    cells = [f"{g} {metric} {hits[g] / n[g]:.3f}" if n[g] else f"{g} -" for g in n]
    return (f"{view}, queries by vocabulary: {n['seen words']} of {sum(n.values())} names have every word in the "
            f"training text; " + ", ".join(cells) + " (pooled over languages)")
