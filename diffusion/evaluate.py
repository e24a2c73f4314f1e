"""Does a generation look like what was asked for? Generation retrieval, judged by a dual tower.

For ``n`` emoji concepts of a split and each language, the prompt is the concept's name in that language;
one image is generated per (concept, language), each from its own noise (the seed is a hash of the run's
seed, the concept and the language, so the nine languages are nine independent pieces of evidence). A
judge dual tower (``models/brivl-emoji``, trained apart from the generator) embeds the generated images
and the real renders of the whole closed world (every emoji), and the generation counts as found at k
when a real render of its own concept is among its k nearest renders (image -> image, cosine); the
median rank of that render (1 = nearest) is the coarser signal a weak generator still shows. Every R@k
and median comes with a 95% bootstrap interval over the concepts. A concept drawn in several styles
(``data/emoji-3``) has several renders; any of them is a hit (its best rank counts, clip_benchmark's
convention, as in :mod:`brivl.evaluate`), and each concept is prompted once, whatever its styles.

Controls and companions in the same run:

* **shuffled prompts**: each concept generated from another concept's name (a seeded derangement, own
  noise); near chance if the model follows its text;
* **chance**: a random ranking of the gallery (:func:`chance`; k / G and median (G + 1) / 2 with one render a
  concept);
* **copy baseline** (:func:`copy_baseline`): no generation at all, the *training* render that the generator's
  own text tower retrieves for the prompt, judged the same way; what a generator that only recalls the
  nearest training emoji would score. Above it on unseen concepts, a generator composes; at it, it recalls;
* **memorization**: for each generation, the judge-space cosine distance to its nearest *training*
  render and whether that neighbour is the asked-for concept, beside the same distance for the real
  renders of held-out concepts (what a new emoji in the same style is like);
* **cross-lingual consistency** (:func:`cross_lingual_consistency`): one concept and one noise prompted
  in the nine languages, the mean pairwise cosine of the nine images' judge embeddings, against nine
  different concepts with the same noise; per CLDR emoji category.
"""
from __future__ import annotations

import hashlib
import random
import statistics
from collections import Counter
from typing import Sequence

import torch
import torch.nn.functional as F

from brivl import stats

KS = (1, 10)


def judge_embed(judge, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Images in [0, 1] ``(B, 3, H, W)`` -> the judge's normalised image embeddings ``(B, D)``."""
    size, (mean, std) = judge.image_size, judge.image_mean_std
    out = []
    for i in range(0, len(images), batch):
        x = F.interpolate(images[i:i + batch].float(), size=(size, size), mode="bicubic", align_corners=False)
        x = (x.clamp(0, 1) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            out.append(judge.encode_image(x, normalize=True))
    return torch.cat(out)


def concept_id(sample: dict) -> str:
    """The concept a sample draws (the emoji id: the styles of one emoji share it), else its key."""
    return (sample.get("meta") or {}).get("id", sample["key"])


def pick_concepts(samples: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` concepts of a split (all of them if it has fewer), reproducibly: one sample a concept (the first by
    key), sorted by key, then a seeded sample."""
    first: dict[str, dict] = {}
    for s in sorted(samples, key=lambda s: s["key"]):
        first.setdefault(concept_id(s), s)
    ordered = list(first.values())
    return random.Random(seed).sample(ordered, min(n, len(ordered)))


def noise_seed(seed: int, *parts: str) -> int:
    """A 63-bit seed from the run's seed and a tuple of names (concept key, language, control)."""
    h = hashlib.blake2b("\x1f".join([str(seed), *parts]).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch: int) -> torch.Tensor:
    """One image per prompt, ``(N, 3, H, W)`` in [0, 1]; image i starts from the noise of ``seeds[i]``, so an
    image does not depend on the batch it was generated in."""
    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i:i + batch]]
        out.append(pipe(prompts[i:i + batch], num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                        output_type="pt").images.cpu())
    return torch.cat(out)


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n) with no fixed point (n >= 2)."""
    rng = random.Random(seed)
    while True:
        p = list(range(n))
        rng.shuffle(p)
        if all(i != j for i, j in enumerate(p)):
            return p


def own_mask(asked: Sequence[str], gallery_concepts: Sequence[str]) -> torch.Tensor:
    """``(N, G)`` bool: gallery item j draws the concept row i asks for."""
    col: dict[str, list[int]] = {}
    for j, c in enumerate(gallery_concepts):
        col.setdefault(c, []).append(j)
    missing = [c for c in asked if c not in col]
    if missing:
        raise ValueError(f"concepts {missing[:3]} are not in the gallery: the gallery must hold every concept")
    mask = torch.zeros(len(asked), len(gallery_concepts), dtype=torch.bool)
    for i, c in enumerate(asked):
        mask[i, col[c]] = True
    return mask


def own_ranks(emb: torch.Tensor, gallery: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """Rank (1 = nearest) of each row's best own gallery item among all gallery items by cosine; ``own`` is the
    ``(N, G)`` mask of :func:`own_mask`. Other items of the own concept do not push it down."""
    scores = emb @ gallery.T  # (N, G)
    best = scores.masked_fill(~own, float("-inf")).max(dim=1, keepdim=True).values  # (N, 1)
    return ((scores > best) & ~own).sum(1) + 1


def rank_summary(ranks: Sequence[int], ks: Sequence[int] = KS, n_boot: int = 1000, seed: int = 0) -> dict:
    """R@k = fraction of ranks <= k, and the median rank, each with a 95% bootstrap interval over concepts."""
    ranks = [int(r) for r in ranks]
    out: dict = {"n": len(ranks)}
    for k in ks:
        hits = [float(r <= k) for r in ranks]
        out[f"R@{k}"] = sum(hits) / len(hits)
        out[f"R@{k}_ci"] = stats.bootstrap_ci(hits, stats.mean, n_boot, seed)
    out["median_rank"] = float(statistics.median(ranks))
    out["median_rank_ci"] = stats.bootstrap_ci(ranks, stats.median, n_boot, seed)
    return out


def nearest_train(emb: torch.Tensor, train_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosine distance to the nearest training render ``(N,)``, its index ``(N,)``)."""
    sim, idx = (emb @ train_emb.T).max(dim=1)
    return 1 - sim, idx


def memorization(emb: torch.Tensor, keys: list[str], train_emb: torch.Tensor, train_keys: list[str]) -> dict:
    """Judge-space distance of each generation to its nearest training render, and how often that render is
    the asked-for concept (possible only for concepts seen in training)."""
    dist, idx = nearest_train(emb, train_emb)
    is_own = [train_keys[int(j)] == k for j, k in zip(idx, keys)]
    return {"nn_distance_median": float(dist.median()), "nn_distance_mean": float(dist.mean()),
            "nn_is_asked_concept": sum(is_own) / len(is_own), "n": len(keys)}


def generation_recall(pipe, judge, gallery_images: torch.Tensor, gallery_keys: list[str], concepts: list[dict],
                      langs: Sequence[str], train_keys: Sequence[str] = (), steps: int = 25, guidance: float = 3.0,
                      seed: int = 0, batch: int = 100, ks: Sequence[int] = KS, n_boot: int = 1000,
                      shuffled: bool = True, progress: bool = True,
                      gallery_concepts: Sequence[str] | None = None) -> dict:
    """R@k and median rank of generations among the real renders, per language, with the shuffled-prompt
    control, chance and memorization.

    ``gallery_images``: the real renders in [0, 1] ``(G, 3, H, W)`` with their ``gallery_keys`` and the concept
    each draws, ``gallery_concepts`` (default: the keys, one render a concept); ``concepts``: samples (``key``,
    ``meta``) to generate, one a concept; ``train_keys``: the gallery keys the generator was trained on (for
    memorization); ``shuffled=False`` skips the shuffled-prompt control. A language is scored on the concepts
    that have a name in it."""
    from tqdm.auto import tqdm

    gallery = judge_embed(judge, gallery_images)  # (G, D)
    gallery_concepts = list(gallery_concepts or gallery_keys)
    own_mask([concept_id(c) for c in concepts], gallery_concepts)  # every concept is in the gallery
    col = {k: i for i, k in enumerate(gallery_keys)}
    train_cols = [col[k] for k in train_keys if k in col]
    train_emb, train_list = gallery[train_cols], [gallery_concepts[i] for i in train_cols]
    bar = tqdm(total=len(langs) + 1, desc="generate + judge", unit="prompt set", disable=not progress)
    result: dict = {"languages": {}, "memorization": {}, "steps": steps, "guidance": guidance,
                    "gallery": len(gallery_keys), "n_concepts": len(concepts)}

    def run(prompts: list[str], asked: list[str], tag: str) -> tuple[dict, torch.Tensor]:
        seeds = [noise_seed(seed, c, tag) for c in asked]
        emb = judge_embed(judge, generate(pipe, prompts, seeds, steps, guidance, batch))  # (N, D)
        ranks = own_ranks(emb, gallery, own_mask(asked, gallery_concepts)).tolist()
        return {**rank_summary(ranks, ks, n_boot, seed), "keys": asked, "ranks": ranks}, emb

    for lang in langs:
        named = [c for c in concepts if (c["meta"].get("captions") or {}).get(lang)]
        if named:
            asked = [concept_id(c) for c in named]
            result["languages"][lang], emb = run([c["meta"]["captions"][lang][0] for c in named], asked, lang)
            if train_cols:
                result["memorization"][lang] = memorization(emb, asked, train_emb, train_list)
        bar.update()
    en = [c for c in concepts if (c["meta"].get("captions") or {}).get("en")]
    if shuffled and len(en) >= 2:
        perm = derangement(len(en), seed)  # concept i is generated from concept perm[i]'s name
        result["shuffled_en"], _ = run([en[j]["meta"]["captions"]["en"][0] for j in perm],
                                       [concept_id(c) for c in en], "shuffled")
    bar.update()
    bar.close()
    result["chance"] = chance(len(gallery_keys), ks, positives(concepts, gallery_concepts))
    if train_cols:
        result["memorization"]["reference"] = real_render_reference(gallery, gallery_keys, set(train_keys))
    return result


def copy_baseline(tower, judge_gallery: torch.Tensor, gallery_images: torch.Tensor, gallery_keys: list[str],
                  concepts: list[dict], langs: Sequence[str], train_keys: Sequence[str], ks: Sequence[int] = KS,
                  n_boot: int = 1000, seed: int = 0, gallery_concepts: Sequence[str] | None = None) -> dict:
    """Per language, the rank summary of the copy baseline: for each concept's name, the training render nearest
    to it in ``tower``'s own space (``tower.embed_texts`` against ``tower``'s image embeddings of the training
    renders) stands in for the generation and is ranked among ``judge_gallery`` ``(G, D)`` like one
    (``gallery_concepts`` as in :func:`generation_recall`)."""
    gallery_concepts = list(gallery_concepts or gallery_keys)
    col = {k: i for i, k in enumerate(gallery_keys)}
    train_cols = [col[k] for k in train_keys if k in col]
    if not train_cols:
        raise ValueError("the copy baseline needs the training renders in the gallery (train_keys)")
    train_img = judge_embed(tower, gallery_images[train_cols])  # (T, D') in the tower's own space
    out = {}
    for lang in langs:
        named = [c for c in concepts if (c["meta"].get("captions") or {}).get(lang)]
        if not named:
            continue
        with torch.no_grad():
            text = tower.embed_texts([c["meta"]["captions"][lang][0] for c in named])  # (N, D'), normalised
        copied = (text @ train_img.T).argmax(dim=1)  # (N,) index into train_cols
        emb = judge_gallery[[train_cols[int(j)] for j in copied]]
        asked = [concept_id(c) for c in named]
        ranks = own_ranks(emb, judge_gallery, own_mask(asked, gallery_concepts)).tolist()
        out[lang] = {**rank_summary(ranks, ks, n_boot, seed), "keys": asked, "ranks": ranks,
                     "copied": [gallery_keys[train_cols[int(j)]] for j in copied]}
    return out


def copy_agreement(gen: dict, copy: dict, near: int = 100, n_boot: int = 1000, seed: int = 0) -> dict:
    """Does the generator succeed where its text tower already points at the right image? Per language, over the
    concepts both runs ranked (their ``keys`` and ``ranks``): Spearman's correlation of the generation's rank
    with the copy baseline's (95% bootstrap interval over concepts, pairs resampled together), and the
    generation's median rank on the concepts whose copied training render ranks within ``near`` (the tower's
    text embedding lands near the concept) apart from the others. A generator that composes new concepts does
    well on both groups; one bounded by its text tower only on the first."""
    out = {}
    for lang, g in gen.items():
        c = copy.get(lang)
        if not c:
            continue
        copy_rank = dict(zip(c["keys"], c["ranks"]))
        pairs = [(r, copy_rank[k]) for k, r in zip(g["keys"], g["ranks"]) if k in copy_rank]
        if len(pairs) < 3:
            continue
        a, b = [p[0] for p in pairs], [p[1] for p in pairs]
        row = {"n": len(pairs), "spearman": float(stats.spearman(torch.tensor(a), torch.tensor(b))),
               "spearman_ci": stats.paired_ci(a, b, stats.spearman, n_boot, seed), "near": near}
        for name, group in (("copy_near", [x for x, y in pairs if y <= near]),
                            ("copy_far", [x for x, y in pairs if y > near])):
            row[name] = {"n": len(group), "median_rank": float(statistics.median(group)) if group else None}
        out[lang] = row
    return out


def ranks_by_vocabulary(gen: dict, names: dict[str, dict[str, str]], vocab: dict[str, set[str]],
                        ks: Sequence[int] = KS, n_boot: int = 1000, seed: int = 0) -> dict:
    """The generation ranks of every language pooled and split by the prompt's vocabulary: ``seen words`` (every
    word of the prompt, ``names[concept][lang]``, is in the training text ``vocab[lang]``,
    :func:`brivl.generalization.training_words`) and ``new word``; a rank summary of each group."""
    from brivl.generalization import name_words

    groups: dict[str, list[int]] = {"seen words": [], "new word": []}
    for lang, g in gen.items():
        for key, rank in zip(g["keys"], g["ranks"]):
            prompt = names.get(key, {}).get(lang)
            if prompt is not None:
                seen = all(w in vocab.get(lang, ()) for w in name_words(prompt, lang))
                groups["seen words" if seen else "new word"].append(rank)
    return {name: rank_summary(r, ks, n_boot, seed) for name, r in groups.items() if r}


def format_copy_agreement(agreement: dict) -> str:
    near = next(iter(agreement.values()))["near"]
    lines = [f"| generation vs copy baseline | Spearman of ranks [95% CI] | generation median rank where copy rank "
             f"<= {near} (n) | where copy rank > {near} (n) |", "|---|---|---|---|"]
    for lang, r in agreement.items():
        lo, hi = r["spearman_ci"]
        cells = [f"{r[g]['median_rank']:g} ({r[g]['n']})" if r[g]["n"] else "- (0)" for g in ("copy_near", "copy_far")]
        lines.append(f"| {lang} | {r['spearman']:.2f} [{lo:.2f}, {hi:.2f}] | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def positives(concepts: list[dict], gallery_concepts: Sequence[str]) -> list[int]:
    """How many gallery renders draw each concept (its styles)."""
    count: dict[str, int] = {}
    for c in gallery_concepts:
        count[c] = count.get(c, 0) + 1
    return [count[concept_id(c)] for c in concepts]


def chance(gallery: int, ks: Sequence[int] = KS, positives: Sequence[int] | None = None) -> dict:
    """R@k and median rank of a generation that lands anywhere at random among ``gallery`` renders, of which
    ``positives[i]`` draw concept i (default one each: k / G and (G + 1) / 2): R@k is the mean over concepts of
    :func:`brivl.evaluate.chance_recall`, the median the smallest rank that mean reaches 1/2 at."""
    from brivl.evaluate import chance_recall

    if not positives or set(positives) == {1}:
        return {**{f"R@{k}": min(1.0, k / gallery) for k in ks}, "median_rank": (gallery + 1) / 2}

    weights = Counter(positives)  # renders a concept -> how many concepts

    def cdf(r: int) -> float:  # P(best own rank <= r), averaged over the concepts
        return sum(w * chance_recall(gallery, m, r) for m, w in weights.items()) / len(positives)

    lo, hi = 1, gallery  # cdf is increasing in r
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if cdf(mid) >= 0.5 else (mid + 1, hi)
    return {**{f"R@{k}": cdf(k) for k in ks}, "median_rank": float(lo)}


def real_render_reference(gallery: torch.Tensor, gallery_keys: list[str], train_keys: set) -> dict:
    """The same distance for the real renders of concepts *not* trained on: how far a genuinely new emoji in
    the same style lies from the nearest training render."""
    held = [i for i, k in enumerate(gallery_keys) if k not in train_keys]
    train = [i for i, k in enumerate(gallery_keys) if k in train_keys]
    if not held or not train:
        return {}
    dist, _ = nearest_train(gallery[held], gallery[train])
    return {"real_heldout_nn_distance_median": float(dist.median()), "n": len(held)}


def cross_lingual_consistency(pipe, judge, concepts: list[dict], langs: Sequence[str], categories: dict[str, str],
                              steps: int = 25, guidance: float = 3.0, seed: int = 0, batch: int = 100) -> dict:
    """Each concept prompted in every language of ``langs`` from one shared noise: the mean pairwise cosine of
    the judge embeddings of its images ("same concept"), against groups of as many *different* concepts,
    one per language, from the same noise ("different concepts"); overall and per category."""
    named = [c for c in concepts if all((c["meta"].get("captions") or {}).get(lang) for lang in langs)]
    if len(named) < len(langs):
        raise ValueError(f"cross-lingual consistency needs at least {len(langs)} concepts named in every language")
    prompts = [c["meta"]["captions"][lang][0] for c in named for lang in langs]
    shared = noise_seed(seed, "consistency")
    emb = judge_embed(judge, generate(pipe, prompts, [shared] * len(prompts), steps, guidance, batch))
    emb = emb.view(len(named), len(langs), -1)  # (C, L, D)
    n, m = len(named), len(langs)
    same = [mean_pairwise_cos(emb[i]) for i in range(n)]
    # group i of different concepts: concept (i + j * stride) mod n in language j (all distinct)
    stride = max(1, n // m)
    diff = [mean_pairwise_cos(torch.stack([emb[(i + j * stride) % n, j] for j in range(m)])) for i in range(n)]
    out = {"overall": consistency_row(same, diff), "by_category": {}, "languages": list(langs), "steps": steps,
           "guidance": guidance}
    by: dict[str, list[int]] = {}
    for i, c in enumerate(named):
        by.setdefault(categories.get(concept_id(c), "other"), []).append(i)
    for cat, idx in sorted(by.items()):
        out["by_category"][cat] = consistency_row([same[i] for i in idx], [diff[i] for i in idx])
    return out


def mean_pairwise_cos(x: torch.Tensor) -> float:
    """Mean cosine over the distinct pairs of rows of normalised ``x`` ``(m, D)``."""
    sim = x @ x.T
    m = len(x)
    return float((sim.sum() - sim.diagonal().sum()) / (m * (m - 1)))


def consistency_row(same: list[float], diff: list[float]) -> dict:
    return {"same_concept": statistics.fmean(same), "different_concepts": statistics.fmean(diff), "n": len(same),
            "same_concept_ci": stats.bootstrap_ci(same)}  # n = 1: the point itself


def format_generation_table(result: dict, copy: dict | None = None) -> str:
    """The per-language table of :func:`generation_recall`'s result, with the controls, and the rows of
    :func:`copy_baseline` (``copy``) when given."""
    first = next(iter(result["languages"].values()), None) or next(iter((copy or {}).values()))
    ks = [k for k in first if k.startswith("R@") and not k.endswith("_ci")]
    # (per-concept "keys" and "ranks" stay in the JSON: a generation can be re-made from its key and seed)
    head = ("| generation -> real render | " + " | ".join(f"{k} [95% CI]" for k in ks)
            + " | median rank [95% CI] | n | NN train dist | NN = asked |")
    lines = [head, "|---|" + "---|" * (len(ks) + 4)]
    mem = result.get("memorization", {})
    rows = [*result["languages"].items()]
    if "shuffled_en" in result:
        rows.append(("en, shuffled prompts", result["shuffled_en"]))
    rows += [(f"{lang}, copy baseline", r) for lang, r in (copy or {}).items()]
    for name, r in rows:
        m = mem.get(name, {})
        cells = [f"{r[k]:.3f} [{r[k + '_ci'][0]:.3f}, {r[k + '_ci'][1]:.3f}]" for k in ks]
        lo, hi = r["median_rank_ci"]
        mcells = [f"{m['nn_distance_median']:.3f}", f"{m['nn_is_asked_concept']:.3f}"] if m else ["", ""]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['median_rank']:g} [{lo:g}, {hi:g}] | {r['n']} | "
                     + " | ".join(mcells) + " |")
    ch = result["chance"]
    lines.append("| chance | " + " | ".join(f"{ch[k]:.3f}" for k in ks) + f" | {ch['median_rank']:g} | "
                 f"{result['gallery']} | | |")
    if copy:
        lines.append("\ncopy baseline: no generation, the training render the text tower retrieves for the prompt")
        agreement = copy_agreement(result["languages"], copy)
        if agreement:
            lines.append("\n" + format_copy_agreement(agreement))
    ref = mem.get("reference") or {}
    if ref:
        lines.append(f"\nNN train dist: judge cosine distance of a generation to its nearest training render (median); "
                     f"the {ref['n']} real renders of concepts not trained on: {ref['real_heldout_nn_distance_median']:.3f}")
    return "\n".join(lines)


def format_consistency_table(result: dict) -> str:
    m = len(result["languages"])
    lines = [f"| cross-lingual consistency (judge cosine) | same concept, {m} languages [95% CI] | {m} different "
             "concepts | n |", "|---|---|---|---|"]
    for name, r in [("all", result["overall"]), *result["by_category"].items()]:
        lo, hi = r["same_concept_ci"]
        lines.append(f"| {name} | {r['same_concept']:.3f} [{lo:.3f}, {hi:.3f}] | {r['different_concepts']:.3f} | {r['n']} |")
    return "\n".join(lines)
