"""Retrieval and zero-shot evaluation, per language, following clip_benchmark's conventions.

Recall@k: score the whole query x gallery similarity matrix; a query counts 1 when at least one of
its positives is among its top k; average over queries. ``t2i`` = text->image (image retrieval),
``i2t`` = image->text. Zero-shot classification: one class per image concept, the class text
embedding = the mean of its prompt embeddings (name, keyword list), acc@1 / acc@5.
"""
from __future__ import annotations

from typing import Sequence

import torch

KS = (1, 5, 10)


def recall_at_k(scores: torch.Tensor, positives: torch.Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """scores (Q, G) float, positives (Q, G) bool -> {"R@k": fraction of queries with a positive in top k}."""
    if scores.shape != positives.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and positives {tuple(positives.shape)} differ")
    if scores.shape[0] == 0:
        return {f"R@{k}": float("nan") for k in ks}
    out = {}
    topk = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # (Q, kmax)
    hit = positives.gather(1, topk)  # (Q, kmax)
    for k in ks:
        out[f"R@{k}"] = hit[:, :k].any(dim=1).float().mean().item()
    return out


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor,
                      ks: Sequence[int] = KS) -> dict[str, dict[str, float]]:
    """image_emb (N, D), text_emb (T, D) normalized; text_to_image (T,) the image index of each text."""
    sim = text_emb @ image_emb.T  # (T, N)
    pos = torch.zeros_like(sim, dtype=torch.bool)
    pos[torch.arange(len(text_to_image)), text_to_image] = True
    has_text = pos.any(dim=0)  # images with at least one text in this language are i2t queries
    t2i = recall_at_k(sim, pos, ks)
    i2t = recall_at_k(sim.T[has_text], pos.T[has_text], ks)
    for d in (t2i, i2t):
        d["mean"] = sum(d[f"R@{k}"] for k in ks) / len(ks)
    return {"t2i": t2i, "i2t": i2t}


def zeroshot_metrics(image_emb: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """image_emb (N, D), class_emb (C, D), labels (N,) -> acc@1, acc@5 (images of unknown class: label -1 skipped)."""
    keep = labels >= 0
    logits = image_emb[keep] @ class_emb.T  # (N', C)
    pos = torch.zeros_like(logits, dtype=torch.bool)
    pos[torch.arange(int(keep.sum())), labels[keep]] = True
    r = recall_at_k(logits, pos, (1, 5))
    return {"acc@1": r["R@1"], "acc@5": r["R@5"]}


def chance_recall(n_gallery: int, n_pos: int = 1, k: int = 1) -> float:
    """Expected R@k of a random ranking with ``n_pos`` positives among ``n_gallery`` items."""
    from math import comb

    if n_gallery <= 0:
        return float("nan")
    k = min(k, n_gallery)
    return 1.0 - comb(n_gallery - n_pos, k) / comb(n_gallery, k)


def texts_by_language(metas: list[dict], langs: Sequence[str]) -> dict[str, tuple[list[str], list[int]]]:
    """For each language: the captions of every sample and the index of their image."""
    out = {}
    for lang in langs:
        texts, owners = [], []
        for i, m in enumerate(metas):
            for c in (m.get("captions") or {}).get(lang, []):
                texts.append(c)
                owners.append(i)
        out[lang] = (texts, owners)
    return out


def class_prompts(meta: dict, lang: str) -> list[str]:
    prompts = list((meta.get("captions") or {}).get(lang, []))
    kws = (meta.get("keywords") or {}).get(lang)
    if kws:
        prompts.append(" ".join(kws))
    return prompts


@torch.no_grad()
def evaluate_model(model, images: torch.Tensor, metas: list[dict], langs: Sequence[str],
                   zeroshot: bool = True, batch_size: int = 512) -> dict:
    """Per-language retrieval (and zero-shot) metrics of ``model`` (a DualTower) on preprocessed images."""
    model.eval()
    image_emb = model.embed_images(images, batch_size)
    result: dict = {"n_images": len(metas), "languages": {}, "zeroshot": {}}
    for lang, (texts, owners) in texts_by_language(metas, langs).items():
        if not texts:
            continue
        text_emb = model.embed_texts(texts, batch_size)
        m = retrieval_metrics(image_emb, text_emb, torch.tensor(owners))
        m["n_queries"] = len(texts)
        result["languages"][lang] = m
        if zeroshot:
            prompts = [class_prompts(meta, lang) for meta in metas]
            flat = [p for ps in prompts for p in ps]
            emb = model.embed_texts(flat, batch_size)
            cls, labels, j = [], [], 0
            for ps in prompts:
                if ps:
                    cls.append(torch.nn.functional.normalize(emb[j:j + len(ps)].mean(0), dim=-1))
                    labels.append(len(cls) - 1)
                else:
                    labels.append(-1)
                j += len(ps)
            result["zeroshot"][lang] = zeroshot_metrics(image_emb, torch.stack(cls), torch.tensor(labels))
    n = len(metas)
    result["chance"] = {f"R@{k}": chance_recall(n, 1, k) for k in KS}
    return result


def mean_over_languages(result: dict, direction: str = "t2i", metric: str = "R@1") -> float:
    vals = [v[direction][metric] for v in result["languages"].values()]
    return sum(vals) / len(vals) if vals else float("nan")


def format_table(result: dict, title: str = "") -> str:
    """A plain-text table: one row per language, t2i / i2t R@1/5/10 and zero-shot acc@1."""
    head = f"{'lang':<6}{'t2i R@1':>9}{'R@5':>7}{'R@10':>7}{'i2t R@1':>9}{'R@5':>7}{'R@10':>7}{'zs@1':>7}{'zs@5':>7}"
    lines = [title, head] if title else [head]
    rows = result["languages"]
    for lang, m in rows.items():
        zs = result.get("zeroshot", {}).get(lang, {})
        lines.append(f"{lang:<6}{m['t2i']['R@1']:>9.3f}{m['t2i']['R@5']:>7.3f}{m['t2i']['R@10']:>7.3f}"
                     f"{m['i2t']['R@1']:>9.3f}{m['i2t']['R@5']:>7.3f}{m['i2t']['R@10']:>7.3f}"
                     f"{zs.get('acc@1', float('nan')):>7.3f}{zs.get('acc@5', float('nan')):>7.3f}")
    if rows:
        avg = {d: {k: sum(m[d][k] for m in rows.values()) / len(rows) for k in ("R@1", "R@5", "R@10")}
               for d in ("t2i", "i2t")}
        lines.append(f"{'mean':<6}{avg['t2i']['R@1']:>9.3f}{avg['t2i']['R@5']:>7.3f}{avg['t2i']['R@10']:>7.3f}"
                     f"{avg['i2t']['R@1']:>9.3f}{avg['i2t']['R@5']:>7.3f}{avg['i2t']['R@10']:>7.3f}")
    ch = result.get("chance")
    if ch:
        lines.append(f"chance (N={result['n_images']}): R@1 {ch['R@1']:.4f}  R@5 {ch['R@5']:.4f}  R@10 {ch['R@10']:.4f}")
    return "\n".join(lines)
