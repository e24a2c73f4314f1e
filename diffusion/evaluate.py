"""Does a generation look like what was asked for? Generation retrieval, judged by a dual tower.

For ``n`` emoji concepts of a split and each language, the prompt is the concept's name in that language;
one image is generated per prompt. A judge dual tower (``models/brivl-emoji``, trained independently of
the generator) embeds the generated images and the real renders of the whole closed world (every emoji),
and the generation counts as found at k when the real render of its own concept is among its k nearest
renders (image -> image, cosine; :func:`brivl.evaluate.recall_at_k`); the median rank of that render
(1 = nearest) is the coarser signal that a weak generator still shows. Controls in the same run: the
same concepts generated from *shuffled* prompts (another concept's name; near chance if the model
follows its text) and chance itself (k / gallery size).
"""
from __future__ import annotations

import random
import statistics
from typing import Sequence

import torch
import torch.nn.functional as F


def judge_embed(judge, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] ``(B, 3, H, W)`` -> the judge's normalised image embeddings ``(B, D)``."""
    size, (mean, std) = judge.image_size, judge.image_mean_std
    x = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return judge.encode_image(x, normalize=True)


def pick_concepts(samples: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` samples of a split, reproducibly (sorted by key, then a seeded sample)."""
    ordered = sorted(samples, key=lambda s: s["key"])
    return random.Random(seed).sample(ordered, min(n, len(ordered)))


def generate(pipe, prompts: list[str], steps: int, guidance: float, seed: int, batch: int) -> torch.Tensor:
    """One image per prompt, ``(N, 3, H, W)`` in [0, 1]; image i always uses the generator seeded seed + i."""
    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(seed + j) for j in range(i, min(len(prompts), i + batch))]
        out.append(pipe(prompts[i:i + batch], num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                        output_type="pt").images.cpu())
    return torch.cat(out)


def generation_recall(pipe, judge, gallery_images: torch.Tensor, gallery_keys: list[str], concepts: list[dict],
                      langs: Sequence[str], steps: int = 50, guidance: float = 7.5, seed: int = 0,
                      batch: int = 64, ks: Sequence[int] = (1, 10), progress: bool = True) -> dict:
    """R@k of generations among the real renders, per language, plus the shuffled-prompt control.

    ``gallery_images``: the real renders in [0, 1] ``(G, 3, H, W)`` with their ``gallery_keys``;
    ``concepts``: samples (``key``, ``meta``) to generate. A language is scored on the concepts that have
    a name in it."""
    from tqdm.auto import tqdm

    from brivl.evaluate import recall_at_k

    gallery = judge_embed(judge, gallery_images)  # (G, D)
    col = {k: i for i, k in enumerate(gallery_keys)}
    missing = [c["key"] for c in concepts if c["key"] not in col]
    if missing:
        raise ValueError(f"concepts {missing[:3]} are not in the gallery: the gallery must hold every concept")

    bar = tqdm(total=len(langs) + 1, desc="generate + judge", unit="prompt set", disable=not progress)

    def score(prompts: list[str], keys: list[str], base_seed: int) -> dict:
        emb = judge_embed(judge, generate(pipe, prompts, steps, guidance, base_seed, batch))  # (N, D)
        scores = emb @ gallery.T  # (N, G)
        own = torch.tensor([col[k] for k in keys])
        positives = torch.zeros(len(keys), len(gallery_keys), dtype=torch.bool)
        positives[torch.arange(len(keys)), own] = True
        rank = (scores > scores[torch.arange(len(keys)), own][:, None]).sum(1) + 1  # 1 = nearest
        return {**recall_at_k(scores, positives, ks), "median_rank": float(statistics.median(rank.tolist())),
                "n": len(keys)}

    result = {"languages": {}, "steps": steps, "guidance": guidance, "gallery": len(gallery_keys)}
    for lang in langs:
        named = [c for c in concepts if (c["meta"].get("captions") or {}).get(lang)]
        if named:
            result["languages"][lang] = score([c["meta"]["captions"][lang][0] for c in named],
                                              [c["key"] for c in named], seed)
        bar.update()
    en = [c for c in concepts if (c["meta"].get("captions") or {}).get("en")]
    shift = [en[(i + 1) % len(en)] for i in range(len(en))]  # each concept gets the next one's name
    result["shuffled_en"] = score([c["meta"]["captions"]["en"][0] for c in shift], [c["key"] for c in en], seed)
    bar.update()
    bar.close()
    result["chance"] = {**{f"R@{k}": min(1.0, k / len(gallery_keys)) for k in ks},
                        "median_rank": (len(gallery_keys) + 1) / 2}
    return result


def format_generation_table(result: dict) -> str:
    ks = [k for k in next(iter(result["languages"].values())) if k.startswith("R@")]
    head = "| generation -> real render | " + " | ".join(ks) + " | median rank | n |"
    lines = [head, "|---|" + "---|" * (len(ks) + 2)]
    rows = [*result["languages"].items(), ("en, shuffled prompts", result["shuffled_en"])]
    for name, r in rows:
        lines.append(f"| {name} | " + " | ".join(f"{r[k]:.3f}" for k in ks) + f" | {r['median_rank']:g} | {r['n']} |")
    ch = result["chance"]
    lines.append("| chance | " + " | ".join(f"{ch[k]:.3f}" for k in ks) + f" | {ch['median_rank']:g} | "
                 f"{result['gallery']} |")
    return "\n".join(lines)
