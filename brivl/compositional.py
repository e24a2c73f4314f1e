"""The compositional tier of the evaluation ladder, Winoground-style (Thrush et al., 2022), on the emoji data.

A group is two images and two captions that use the same words or the same concept and differ in one thing:

* **attribute binding** (from CLDR names): the same object in two colours (``red heart`` / ``blue heart``,
  circles, squares, books, apples), the same arrow in two directions (``up arrow`` / ``down arrow``), the same
  person in two genders (``man pilot`` / ``woman pilot``). Each caption is the emoji's CLDR name in the language.
  Skin tones need the derived sequences (``brivl data emoji --derived``), which the default build leaves out.
* **relations**: two emoji composed side by side in one image, ``A left of B`` vs ``B left of A`` (and
  ``above``), captioned with one hand-written template per m9 language (:data:`TEMPLATES`).

For training (NegCLIP's fix), :func:`relation_sample` makes the same kind of composed image from two training
renders, with its caption and its hard negative (the caption with the order swapped).

Scores per group (``s(c, i)``: the model's cosine of caption c and image i), as Winoground defines them:
text score = each image prefers its own caption; image score = each caption prefers its own image; group
score = both. Chance: 1/4, 1/4, 1/6. On ``--view test`` a group uses only held-out concepts.
"""
from __future__ import annotations

import itertools
import random
import re

import torch

from .data.emoji import M9
from .stats import bootstrap_ci

CHANCE = {"text": 0.25, "image": 0.25, "group": 1 / 6}
COLOURS = "red|orange|yellow|green|blue|purple|brown|black|white"
COLOUR_RE = re.compile(rf"^({COLOURS}) (heart|circle|square|apple|book|small square|large square)$")
ARROW_RE = re.compile(r"^(up|down|left|right|up-right|up-left|down-right|down-left) arrow$")
GENDER_RE = re.compile(r"^(man|woman) (.+)$")

# one short phrase per m9 language, written by hand: {a} and {b} are CLDR names
TEMPLATES = {
    "left of": {"en": "{a} to the left of {b}", "zh": "{a}在{b}的左边", "es": "{a} a la izquierda de {b}",
                "fr": "{a} à gauche de {b}", "ru": "{a} слева от {b}", "ar": "{a} على يسار {b}",
                "ja": "{b}の左に{a}", "ko": "{b} 왼쪽에 {a}", "it": "{a} a sinistra di {b}"},
    "above": {"en": "{a} above {b}", "zh": "{a}在{b}的上面", "es": "{a} encima de {b}", "fr": "{a} au-dessus de {b}",
              "ru": "{a} над {b}", "ar": "{a} فوق {b}", "ja": "{b}の上に{a}", "ko": "{b} 위에 {a}",
              "it": "{a} sopra {b}"},
}


def winoground_scores(sim: torch.Tensor) -> dict[str, torch.Tensor]:
    """sim (G, 2, 2): ``sim[g, c, i]`` = score of caption c with image i (caption 0 belongs to image 0) ->
    per-group booleans ``text``, ``image``, ``group``."""
    c0i0, c0i1, c1i0, c1i1 = sim[:, 0, 0], sim[:, 0, 1], sim[:, 1, 0], sim[:, 1, 1]
    text = (c0i0 > c1i0) & (c1i1 > c0i1)
    image = (c0i0 > c0i1) & (c1i1 > c1i0)
    return {"text": text, "image": image, "group": text & image}


def attribute_groups(samples: list[dict]) -> dict[str, list[tuple[int, int]]]:
    """Pairs of sample indices that differ in one attribute, by kind (``colour``, ``direction``, ``gender``),
    read off the English CLDR names."""
    by_name = {s["meta"].get("names", {}).get("en"): i for i, s in enumerate(samples)}
    kinds: dict[str, list[tuple[int, int]]] = {"colour": [], "direction": [], "gender": []}
    nouns: dict[str, list[int]] = {}
    arrows: list[int] = []
    for name, i in sorted((n, i) for n, i in by_name.items() if n):
        if m := COLOUR_RE.match(name):
            nouns.setdefault(m.group(2), []).append(i)
        elif ARROW_RE.match(name):
            arrows.append(i)
        elif (m := GENDER_RE.match(name)) and m.group(1) == "man":
            other = by_name.get(f"woman {m.group(2)}")
            if other is not None:
                kinds["gender"].append((i, other))
    for members in nouns.values():
        kinds["colour"] += list(itertools.combinations(members, 2))
    kinds["direction"] = list(itertools.combinations(arrows, 2))
    return kinds


def compose(a, b, relation: str, size: int, background: tuple[int, int, int, int] = (255, 255, 255, 255)):
    """``a`` left of ``b`` (or above it) on a square of ``size`` px (white; transparent for training, where the
    augmentation paints the background), each at half the side."""
    from PIL import Image

    half = size // 2
    canvas = Image.new("RGBA", (size, size), background)
    ia, ib = a.convert("RGBA").resize((half, half)), b.convert("RGBA").resize((half, half))
    if relation == "left of":
        pos_a, pos_b = (0, size // 4), (half, size // 4)
    else:
        pos_a, pos_b = (size // 4, 0), (size // 4, half)
    canvas.alpha_composite(ia, pos_a)
    canvas.alpha_composite(ib, pos_b)
    return canvas


def relation_sample(a, b, names_a: dict, names_b: dict, langs: list[str], rng: random.Random,
                    relation: str | None = None):
    """A composed training image of two renders ``a`` and ``b`` (transparent background), its relation (drawn
    with ``rng`` unless given) and, per language in ``langs`` (those with a template and both names), the
    relation caption and its hard negative (the same words, the order swapped); ``None`` when no language fits."""
    ok = [lang for lang in langs if lang in TEMPLATES["above"] and names_a.get(lang) and names_b.get(lang)]
    if not ok:
        return None
    relation = relation or rng.choice(sorted(TEMPLATES))
    image = compose(a, b, relation, max(a.size[0], b.size[0], 32), background=(0, 0, 0, 0))
    caps = []
    for lang in ok:
        t = TEMPLATES[relation][lang]
        caps.append((t.format(a=names_a[lang], b=names_b[lang]), t.format(a=names_b[lang], b=names_a[lang]), lang))
    return image, caps, relation


def relation_pairs(n_samples: int, n_relations: int, seed: int = 0) -> list[tuple[int, int]]:
    """The ordered sample pairs (a, b) composed into relation groups: ``n_relations`` drawn with ``seed``."""
    pairs = list(itertools.permutations(range(n_samples), 2))
    return random.Random(seed).sample(pairs, min(n_relations, len(pairs)))


@torch.no_grad()
def order_agreement(model, samples: list[dict], langs=M9, n_relations: int = 100, seed: int = 0,
                    reference: str = "en") -> dict:
    """Which order does the text tower read in each language's relation caption? For the groups' pairs (a, b):
    the share whose caption "a REL b" in ``lang`` lies closer to the ``reference`` caption of the same meaning
    than to the swapped one ("b REL a"), and the two mean cosines. 1.0: the languages agree on the order;
    0.0: the tower reads every caption of ``lang`` the other way round; ~0.5: it cannot tell."""
    model.eval()
    names = lambda i, lang: (samples[i]["meta"].get("names") or {}).get(lang)  # noqa: E731
    out: dict = {"reference": reference}
    pairs = relation_pairs(len(samples), n_relations, seed)  # the groups' pairs: the same for every relation
    for relation, per_template in TEMPLATES.items():
        ref = per_template[reference]
        rows = {}
        for lang in langs:
            if lang == reference:
                continue
            ps = [(a, b) for a, b in pairs
                  if names(a, lang) and names(b, lang) and names(a, reference) and names(b, reference)]
            if not ps:
                continue
            cap = model.embed_texts([per_template[lang].format(a=names(a, lang), b=names(b, lang)) for a, b in ps])
            same = model.embed_texts([ref.format(a=names(a, reference), b=names(b, reference)) for a, b in ps])
            swap = model.embed_texts([ref.format(a=names(b, reference), b=names(a, reference)) for a, b in ps])
            cs, cw = (cap * same).sum(-1), (cap * swap).sum(-1)  # (P,), (P,)
            rows[lang] = {"agree": round((cs > cw).float().mean().item(), 4), "cos_same": round(cs.mean().item(), 4),
                          "cos_swapped": round(cw.mean().item(), 4), "n": len(ps)}
        out[relation] = rows
    return out


def format_order_agreement(res: dict) -> str:
    ref = res["reference"]
    lines = [f"order agreement with {ref}: share of pairs whose caption is closer to the {ref} caption of the same "
             f"meaning than to the swapped one (cos same / cos swapped)"]
    for relation, rows in res.items():
        if relation == "reference":
            continue
        lines.append(f"{relation:<9} " + "  ".join(f"{lang} {r['agree']:.2f} ({r['cos_same']:.3f}/{r['cos_swapped']:.3f})"
                                                  for lang, r in rows.items()))
    return "\n".join(lines)


@torch.no_grad()
def evaluate_compositional(model, samples: list[dict], langs=M9, n_relations: int = 100, seed: int = 0) -> dict:
    """Winoground scores of ``model`` (a DualTower) per kind and language on ``samples`` (one view's renders)."""
    from .data.transforms import to_batch

    model.eval()
    mean, std = model.image_mean_std
    size = model.image_size
    kinds = attribute_groups(samples)
    rel_pairs = relation_pairs(len(samples), n_relations, seed)
    images = [s["image"] for s in samples]  # renders first, then the composed images
    groups: dict[str, list[tuple]] = {}  # kind -> [(image0, image1, (sample, relation) of caption 0/1)]
    for kind, members in kinds.items():
        groups[kind] = [(i, j, ("name", i), ("name", j)) for i, j in members]
    for relation in TEMPLATES:
        groups[relation] = []
        for a, b in rel_pairs:
            ab = len(images)
            images.append(compose(samples[a]["image"], samples[b]["image"], relation, max(size, 64)))
            images.append(compose(samples[b]["image"], samples[a]["image"], relation, max(size, 64)))
            groups[relation].append((ab, ab + 1, (relation, a, b), (relation, b, a)))
    emb = model.embed_images(to_batch([{"image": im} for im in images], size, mean, std))  # (N, D)

    def caption(spec, lang):
        names = lambda i: (samples[i]["meta"].get("names") or {}).get(lang)  # noqa: E731
        if spec[0] == "name":
            return names(spec[1])
        a, b = names(spec[1]), names(spec[2])
        return TEMPLATES[spec[0]][lang].format(a=a, b=b) if a and b else None

    out: dict = {"n_samples": len(samples), "chance": CHANCE, "kinds": {}}
    for kind, gs in groups.items():
        per_lang = {}
        for lang in langs:
            keep = [(g, caption(g[2], lang), caption(g[3], lang)) for g in gs]
            keep = [(g, c0, c1) for g, c0, c1 in keep if c0 and c1 and c0 != c1]
            if not keep:
                continue
            t = model.embed_texts([c for _, c0, c1 in keep for c in (c0, c1)]).view(len(keep), 2, -1)  # (G, 2, D)
            im = torch.stack([torch.stack([emb[g[0]], emb[g[1]]]) for g, _, _ in keep])  # (G, 2, D)
            sc = winoground_scores(torch.einsum("gcd,gid->gci", t, im))
            per_lang[lang] = {k: round(v.float().mean().item(), 4) for k, v in sc.items()}
            # how alike the tower embeds the group's two captions (1.0: it cannot tell them apart at all)
            per_lang[lang]["caption_cos"] = round((t[:, 0] * t[:, 1]).sum(-1).mean().item(), 4)
            # and its two images (1.0: the image tower cannot tell A|B from B|A, so no caption can help)
            per_lang[lang]["image_cos"] = round((im[:, 0] * im[:, 1]).sum(-1).mean().item(), 6)
            per_lang[lang]["n"] = len(keep)
            per_lang[lang]["group_ci95"] = [round(x, 4) for x in bootstrap_ci(sc["group"])]
        if per_lang:
            mean_ = {k: round(sum(v[k] for v in per_lang.values()) / len(per_lang), 6 if k == "image_cos" else 4)
                     for k in (*CHANCE, "caption_cos", "image_cos")}
            out["kinds"][kind] = {"languages": per_lang, "mean": mean_}
    return out


def format_compositional(res: dict, title: str) -> str:
    lines = [title, f"{'kind':<11} {'n':>4}  {'text':>6} {'image':>6} {'group':>6}  {'cap cos':>7} {'img cos':>7}   "
                    f"(mean over languages; chance 0.25 / 0.25 / 0.167; cap / img cos: cosine of a group's two "
                    f"captions / two images)"]
    for kind, r in res["kinds"].items():
        n = max(v["n"] for v in r["languages"].values())
        m = r["mean"]
        lines.append(f"{kind:<11} {n:>4}  {m['text']:>6.3f} {m['image']:>6.3f} {m['group']:>6.3f}  "
                     f"{m['caption_cos']:>7.3f} {m['image_cos']:>7.3f}")
    return "\n".join(lines)
