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
    """image_emb (N, D), text_emb (T, D) normalized; text_to_image: (T,) the image index of each text, or
    a (T, N) bool matrix of positives (a concept drawn in several styles: any of its renders is a hit)."""
    sim = text_emb @ image_emb.T  # (T, N)
    if text_to_image.dim() == 2:
        pos = text_to_image.to(torch.bool)
    else:
        pos = torch.zeros_like(sim, dtype=torch.bool)
        pos[torch.arange(len(text_to_image)), text_to_image] = True
    has_text = pos.any(dim=0)  # images with at least one text in this language are i2t queries
    t2i = recall_at_k(sim, pos, ks)
    i2t = recall_at_k(sim.T[has_text], pos.T[has_text], ks)
    for d in (t2i, i2t):
        d["mean"] = sum(d[f"R@{k}"] for k in ks) / len(ks)
    return {"t2i": t2i, "i2t": i2t}


def t2i_by_group(image_emb: torch.Tensor, text_emb: torch.Tensor, positives: torch.Tensor,
                 groups: dict[str, torch.Tensor], ks: Sequence[int] = KS) -> dict[str, dict[str, float]]:
    """Text->image R@k of each group of queries (``groups[name]``: a (T,) bool mask) against the whole gallery:
    on the closed view, the training concepts' fit apart from the held-out concepts that share its gallery."""
    sim = text_emb @ image_emb.T  # (T, N)
    out = {}
    for name, m in groups.items():
        if m.any():
            out[name] = recall_at_k(sim[m], positives[m], ks) | {"n_queries": int(m.sum())}
    return out


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


def concept_of(metas: list[dict]) -> list[int]:
    """The concept index of each sample: samples with the same ``id`` in their metadata (one emoji drawn in
    several styles) are one concept; a sample without an id is its own."""
    ids: dict = {}
    return [ids.setdefault(m.get("id", ("#", i)), len(ids)) for i, m in enumerate(metas)]


def first_sample(concept: list[int]) -> dict[int, int]:
    """Concept index -> its first sample (whose captions and prompts stand for the concept)."""
    first: dict[int, int] = {}
    for i, c in enumerate(concept):
        first.setdefault(c, i)
    return first


def texts_by_language(metas: list[dict], langs: Sequence[str]) -> dict[str, tuple[list[str], torch.Tensor]]:
    """For each language: the captions of every concept (once per concept, from its first sample) and the
    (T, N) bool matrix of their positives: every image of the caption's concept (clip_benchmark's
    convention: a text query is answered by any render of its concept)."""
    concept_list = concept_of(metas)
    concept, first = torch.tensor(concept_list), first_sample(concept_list)
    out = {}
    for lang in langs:
        texts, owners = [], []
        for c, i in first.items():
            for cap in (metas[i].get("captions") or {}).get(lang, []):
                texts.append(cap)
                owners.append(c)
        pos = torch.tensor(owners, dtype=torch.long)[:, None] == concept[None, :] if owners else \
            torch.zeros(0, len(metas), dtype=torch.bool)
        out[lang] = (texts, pos)
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
    concept = concept_of(metas)
    first = first_sample(concept)
    split_of = {c: metas[i].get("split") for c, i in first.items()}
    split_names = [sp for sp in ("train", "val", "test") if sp in split_of.values()]
    for lang, (texts, owners) in texts_by_language(metas, langs).items():
        if not texts:
            continue
        text_emb = model.embed_texts(texts, batch_size)
        m = retrieval_metrics(image_emb, text_emb, owners)
        m["n_queries"] = len(texts)
        if len(split_names) > 1:  # a view mixing splits (closed): the queries of each split apart
            owner = [concept[i] for i in owners.float().argmax(dim=1).tolist()]  # each query's concept
            groups = {sp: torch.tensor([split_of[c] == sp for c in owner]) for sp in split_names}
            m["t2i_by_split"] = t2i_by_group(image_emb, text_emb, owners, groups)
        result["languages"][lang] = m
        if zeroshot:  # one class per concept (prompts from its first sample); every render is labelled with it
            prompts = {c: class_prompts(metas[i], lang) for c, i in first.items()}
            flat = [p for ps in prompts.values() for p in ps]
            emb = model.embed_texts(flat, batch_size)
            cls, label_of, j = [], {}, 0
            for c, ps in prompts.items():
                if ps:
                    cls.append(torch.nn.functional.normalize(emb[j:j + len(ps)].mean(0), dim=-1))
                    label_of[c] = len(cls) - 1
                j += len(ps)
            labels = torch.tensor([label_of.get(c, -1) for c in concept])
            result["zeroshot"][lang] = zeroshot_metrics(image_emb, torch.stack(cls), labels)
    n = len(metas)
    per_concept = n / max(1, len(first))  # renders per concept: the positives of a text query
    result["chance"] = {f"R@{k}": chance_recall(n, round(per_concept), k) for k in KS}
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
