"""Two cheap probes at issue 14's held-out families, no training: what a dictionary and what averaging add.

``lexicon``: WordNet query expansion (Voorhees, 1994, "Query expansion using lexical-semantic relations", SIGIR).
More than half the held-out English names hold a word the training text never had; WordNet (Debian's
``wordnet-base``) knows most of them. Each such word of a query gets its first sense's gloss (``gloss``), its first
hypernym (``hypernym``), or the query keeps its embedding and adds the gloss-expanded one (``average``).

``ensemble``: weight averages of checkpoints of one run (a uniform "model soup", Wortsman et al., 2022, ICML) and
score-level ensembles of dual towers (the L2-normalized embeddings concatenated, so the score is the sum of the
cosines: one dual tower of twice the width, searchable by FAISS as it is).

Both score text->image R@1 / R@10 on a view of the three-style build (default ``val``; read ``test`` only for an arm
that wins on val), mean over the languages, with a 95% bootstrap interval of each arm's R@10 minus the first
model's (queries resampled in pairs, ``brivl.stats.paired_ci``).

    python scripts/heldout_probes.py lexicon --models brivl-emoji3=models/brivl-emoji3 --split val
    python scripts/heldout_probes.py ensemble --models leg1=runs/legs/leg1 leg3=models/brivl-emoji3 \
        altclip=models/altclip-emoji3 --soup leg1+leg3 --concat leg3+altclip --split val
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brivl.data.emoji import M9  # noqa: E402
from brivl.data.transforms import to_batch  # noqa: E402
from brivl.data.views import load_view  # noqa: E402
from brivl.evaluate import recall_at_k, texts_by_language  # noqa: E402
from brivl.factory import create_model  # noqa: E402
from brivl.generalization import name_words, training_words  # noqa: E402
from brivl.stats import paired_ci  # noqa: E402
from brivl.wise_ft import interpolate, same_tokenizer  # noqa: E402

WORDNET = Path("/usr/share/wordnet")
POS = ("noun", "verb", "adj", "adv")
# WordNet's morphy detachment rules (wndb(5WN), morphy(7WN)), nouns, verbs and adjectives together
DETACH = [("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"),
          ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", ""), ("er", ""),
          ("est", ""), ("er", "e"), ("est", "e")]


def load_wordnet(root: Path = WORDNET) -> tuple[dict, dict, dict]:
    """(lemma -> [(pos, offset)] in sense order, (pos, offset) -> (words, first gloss, hypernym keys),
    inflected form -> lemma) from WordNet 3.0's database files."""
    if not (root / "index.noun").exists():
        raise SystemExit(f"no WordNet database at {root}: `apt-get install wordnet-base` installs it")
    senses: dict[str, list] = {}
    for pos in POS:
        for line in open(root / f"index.{pos}", encoding="latin-1"):
            if not line.startswith(" "):
                p = line.split()
                senses.setdefault(p[0], []).extend((pos, off) for off in p[-int(p[2]):])
    synsets = {}
    ptr_pos = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}
    for pos in POS:
        for line in open(root / f"data.{pos}", encoding="latin-1"):
            if line.startswith(" "):
                continue
            head, _, gloss = line.partition(" | ")
            p = head.split()
            n_words = int(p[3], 16)
            words = [re.sub(r"\(.*\)$", "", p[4 + 2 * i]).replace("_", " ") for i in range(n_words)]
            i = 4 + 2 * n_words
            ptrs = [p[i + 1 + 4 * j: i + 5 + 4 * j] for j in range(int(p[i]))]  # symbol, offset, pos, source/target
            hyper = [(ptr_pos[q[2]], q[1]) for q in ptrs if q[0] in ("@", "@i")]
            synsets[(pos, p[0])] = (words, gloss.split(";")[0].strip().strip('"'), hyper)
    exceptions = {}
    for pos in POS:
        for line in open(root / f"{pos}.exc", encoding="latin-1"):
            p = line.split()
            if len(p) >= 2:
                exceptions.setdefault(p[0], p[1])
    return senses, synsets, exceptions


def lemma_of(word: str, senses: dict, exceptions: dict) -> str | None:
    """The WordNet lemma of an inflected English word (morphy's exception lists, then its detachment rules)."""
    if word in senses:
        return word
    if exceptions.get(word) in senses:
        return exceptions[word]
    for suffix, repl in DETACH:
        if word.endswith(suffix) and word[: -len(suffix)] + repl in senses:
            return word[: -len(suffix)] + repl
    return None


def expand(text: str, known: set[str], wordnet: tuple[dict, dict, dict], mode: str) -> str:
    """``text`` followed by the first sense's gloss or hypernym of each of its words that ``known`` lacks."""
    senses, synsets, exceptions = wordnet
    extra = []
    for w in name_words(text, "en"):
        lemma = None if w in known else lemma_of(w, senses, exceptions)
        if lemma is not None:
            _, gloss, hyper = synsets[senses[lemma][0]]
            extra += [gloss] if mode == "gloss" else [synsets[h][0][0] for h in hyper[:1]]
    return ", ".join([text, *extra])


def query_hits(sim: torch.Tensor, pos: torch.Tensor, k: int) -> list[float]:
    """Per query, 1.0 where a positive is in the top ``k`` (``recall_at_k`` of each row)."""
    return [recall_at_k(sim[i:i + 1], pos[i:i + 1], (k,))[f"R@{k}"] for i in range(len(sim))]


def report(name: str, sims: dict[str, torch.Tensor], by_lang: dict, base: dict[str, list[float]] | None,
           mask: dict[str, torch.Tensor] | None = None) -> dict[str, list[float]]:
    """Print one arm's R@1 / R@10 mean over languages (over ``mask``'s queries when given) and, against ``base``,
    the paired 95% interval of the R@10 difference over the pooled queries; return its per-query R@10 hits."""
    r1, hits = [], {}
    for lang, (_, pos) in by_lang.items():
        m = mask[lang] if mask is not None else torch.ones(len(pos), dtype=torch.bool)
        if m.any():
            r1.append(recall_at_k(sims[lang][m], pos[m], (1,))["R@1"])
            hits[lang] = query_hits(sims[lang][m], pos[m], 10)
    r10 = sum(sum(h) / len(h) for h in hits.values()) / len(hits)
    line = f"{name:34s} R@1 {sum(r1) / len(r1):.3f}  R@10 {r10:.3f}  (n = {sum(len(h) for h in hits.values())})"
    if base is not None:
        a = [x for lang in hits for x in hits[lang]]
        b = [x for lang in hits for x in base[lang]]
        lo, hi = paired_ci(a, b, lambda x, y: (x - y).mean(-1))
        line += f"  R@10 difference {sum(a) / len(a) - sum(b) / len(b):+.3f} [{lo:+.3f}, {hi:+.3f}]"
    print(line, flush=True)
    return hits


def embed(model, samples: list[dict], texts: dict[str, list[str]]):
    """(N, D) image embeddings of ``samples`` and each language's (T, D) text embeddings."""
    model.eval()
    mean, std = model.image_mean_std
    with torch.no_grad():
        images = model.embed_images(to_batch(samples, model.image_size, mean, std), 256)
        return images, {lang: model.embed_texts(t, 256) for lang, t in texts.items()}


def cmd_lexicon(a, samples, by_lang) -> None:
    wordnet = load_wordnet()
    known = training_words(load_view(a.data, "train")[0], ["en"])["en"]
    texts = by_lang["en"][0]
    new = {"en": torch.tensor([any(w not in known for w in name_words(t, "en")) for t in texts])}
    covered = sum(all(w in known or lemma_of(w, wordnet[0], wordnet[2]) for w in name_words(t, "en"))
                  for t, n in zip(texts, new["en"]) if n)
    print(f"{a.split}: {int(new['en'].sum())} of {len(texts)} English names hold a word the training text lacks; "
          f"WordNet has every such word of {covered} of them")
    en = {"en": by_lang["en"]}
    for name, folder in a.models:
        model = create_model(folder)
        images, plain = embed(model, samples, {"en": texts})
        print(f"--- {name}: English queries with a new word")
        base = report(f"{name} as is", {"en": plain["en"] @ images.T}, en, None, new)
        for mode in ("gloss", "hypernym", "average"):
            exp = [expand(t, known, wordnet, "gloss" if mode == "average" else mode) for t in texts]
            with torch.no_grad():
                q = model.embed_texts(exp, 256)
            if mode == "average":
                q = F.normalize(plain["en"] + q, dim=-1)
            report(f"{name} + {mode}", {"en": q @ images.T}, en, base, new)


def cmd_ensemble(a, samples, by_lang) -> None:
    folders = dict(a.models)
    queries = {lang: t for lang, (t, _) in by_lang.items()}
    models = {name: create_model(folder) for name, folder in folders.items()}
    emb = {name: embed(model, samples, queries) for name, model in models.items()}
    first = next(iter(emb))
    base = report(first, {lang: t @ emb[first][0].T for lang, t in emb[first][1].items()}, by_lang, None)
    for name in list(emb)[1:]:
        report(name, {lang: t @ emb[name][0].T for lang, t in emb[name][1].items()}, by_lang, base)
    for soup in a.soup:
        parts = soup.split("+")
        if not all(same_tokenizer(folders[parts[0]], folders[p]) for p in parts):
            raise SystemExit(f"soup {soup}: the models tokenize differently; a soup needs checkpoints of one run")
        avg = models[parts[0]].clip.state_dict()
        for i, p in enumerate(parts[1:], start=2):  # running mean: after model i, each holds weight 1 / i
            avg = interpolate(avg, models[p].clip.state_dict(), 1 / i)
        model = copy.deepcopy(models[parts[0]])
        model.clip.load_state_dict(avg)
        images, texts = embed(model, samples, queries)
        report(f"soup {soup}", {lang: t @ images.T for lang, t in texts.items()}, by_lang, base)
    for ens in a.concat:
        parts = ens.split("+")
        images = torch.cat([emb[p][0] for p in parts], 1)  # (N, sum D): sum of the cosines
        sims = {lang: torch.cat([emb[p][1][lang] for p in parts], 1) @ images.T for lang in by_lang}
        report(f"ensemble {ens}", sims, by_lang, base)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("lexicon", "ensemble"):
        p = sub.add_parser(name)
        p.add_argument("--models", nargs="+", required=True, type=lambda s: tuple(s.split("=", 1)),
                       help="NAME=FOLDER model folders (the first is the reference of the differences)")
        p.add_argument("--data", default="data/emoji-3")
        p.add_argument("--split", default="val", help="a view of --data: val (default), or test once an arm wins on val")
        if name == "ensemble":
            p.add_argument("--soup", nargs="*", default=[], help="NAME+NAME...: uniform weight average of those models")
            p.add_argument("--concat", nargs="*", default=[], help="NAME+NAME...: concatenated embeddings")
    a = ap.parse_args(argv)
    bad = [m for m in a.models if len(m) != 2 or not (Path(m[1]) / "brivl.json").exists()]
    if bad:
        ap.error(f"--models takes NAME=FOLDER with a model folder (brivl.json); not: {' '.join('='.join(m) for m in bad)}")
    names = {m[0] for m in a.models}
    unknown = [p for combo in getattr(a, "soup", []) + getattr(a, "concat", []) for p in combo.split("+") if p not in names]
    if unknown:
        ap.error(f"--soup / --concat name models not in --models: {' '.join(unknown)} (known: {' '.join(sorted(names))})")
    samples = load_view(a.data, a.split)[0]
    by_lang = texts_by_language([s["meta"] for s in samples], M9)
    {"lexicon": cmd_lexicon, "ensemble": cmd_ensemble}[a.cmd](a, samples, by_lang)


if __name__ == "__main__":
    main()
