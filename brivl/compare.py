"""Two or more dual towers on one view, with a paired concept bootstrap: is the difference more than the noise?

A held-out view holds ~100 concepts, so a mean R@1 moves by several points when the concepts change. The
comparison resamples *concepts* (with every language's queries of a drawn concept together, so the nine
languages are not nine independent pieces of evidence) and draws the same resample for every model (paired), so
the interval of a difference is the interval of that difference, not of two separate means (Efron & Tibshirani,
1993, the percentile bootstrap). The statistic is the one the tables report: text->image R@k per language (a hit:
any render of the query's concept in the top k), averaged over languages.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .evaluate import concept_of, texts_by_language
from .stats import percentile_ci, resample_counts


@torch.no_grad()
def query_hits(model, images: torch.Tensor, metas: list[dict], langs: Sequence[str], k: int = 1,
               batch_size: int = 512) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per language: the text->image hit@k of every query (Q,) and the concept index of each query (Q,)."""
    model.eval()
    image_emb = model.embed_images(images, batch_size)  # (N, D)
    concept = torch.tensor(concept_of(metas))
    out = {}
    for lang, (texts, pos) in texts_by_language(metas, langs).items():
        if not texts:
            continue
        sim = model.embed_texts(texts, batch_size) @ image_emb.T  # (Q, N)
        top = sim.topk(min(k, sim.shape[1]), dim=1).indices  # (Q, k)
        hits = pos.gather(1, top).any(dim=1).float()  # (Q,)
        owner = concept[pos.float().argmax(dim=1)]  # the concept of each query's (first) positive render
        out[lang] = (hits, owner)
    return out


def mean_recall(hits: dict[str, tuple[torch.Tensor, torch.Tensor]], weights: torch.Tensor) -> torch.Tensor:
    """R@k averaged over languages, each language's queries weighted by their concept's weight.
    ``weights`` (B, C): one row per resample (a concept's count in it); (B,) out. All ones: the plain mean."""
    per_lang = []
    for h, owner in hits.values():
        w = weights[:, owner]  # (B, Q)
        per_lang.append((w * h).sum(1) / w.sum(1).clamp_min(1e-12))
    return torch.stack(per_lang).mean(0)


def paired_bootstrap(runs: dict[str, dict], n_concepts: int, n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean R@k of every run with a 95% interval, and of every run minus the first, over the same resamples of
    ``n_concepts`` concepts (``runs``: name -> :func:`query_hits` output)."""
    weights = resample_counts(n_concepts, n_boot, seed)  # (B, C): each concept's count in each resample
    ones = torch.ones(1, n_concepts)

    def ci(v: torch.Tensor) -> list[float]:
        return [round(x, 4) for x in percentile_ci(v)]

    boots = {name: mean_recall(h, weights) for name, h in runs.items()}
    first = next(iter(runs))
    out = {"n_concepts": n_concepts, "n_boot": n_boot, "runs": {}}
    for name, h in runs.items():
        row = {"mean": round(float(mean_recall(h, ones)), 4), "ci95": ci(boots[name])}
        if name != first:
            row["minus_first"] = round(float(mean_recall(h, ones) - mean_recall(runs[first], ones)), 4)
            row["minus_first_ci95"] = ci(boots[name] - boots[first])
        out["runs"][name] = row
    return out


def format_comparison(res: dict, k: int, view: str) -> str:
    names = list(res["runs"])
    lines = [f"text->image R@{k}, mean over languages, view {view}: n = {res['n_concepts']} concepts, "
             f"95% paired bootstrap over concepts ({res['n_boot']} resamples)"]
    for name, r in res["runs"].items():
        line = f"  {name:<40} {r['mean']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
        if "minus_first" in r:
            line += f"   - {names[0]}: {r['minus_first']:+.3f} [{r['minus_first_ci95'][0]:+.3f}, " \
                    f"{r['minus_first_ci95'][1]:+.3f}]"
        lines.append(line)
    return "\n".join(lines)
