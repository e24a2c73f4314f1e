"""Parallel text for AltCLIP's teacher learning: (text in language L, its English counterpart).

From the emoji shards (CLDR): for every emoji of a view and every language L, its name in L paired with
its English name, and its keyword list in L with the English keyword list (en -> en pairs included,
as AltCLIP keeps English in the mix). Or a user corpus: TSV / JSONL rows of ``en``, ``text``[, ``lang``].
No images are read for training; the validation view (images + captions) measures retrieval.
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch

from brivl.data.datamodule import view_loader

from brivl.data.views import load_view
from brivl.data.languages import resolve_langs


@dataclass
class ParallelCorpus:
    pairs: list[tuple[str, str, str]]  # (text, english, lang)
    skipped: Counter = field(default_factory=Counter)
    keys: list[str] | None = None  # the concept (emoji) of each pair, where the corpus knows it

    @property
    def languages(self) -> list[str]:
        return sorted({lang for _, _, lang in self.pairs})

    def select(self, langs: list[str] | None) -> "ParallelCorpus":
        """The pairs in ``langs``; rows in any other language are counted in ``skipped`` (a language asked for
        that the corpus has no row in is an error)."""
        if not langs:
            return self
        missing = [lang for lang in langs if lang not in self.languages]
        if missing:
            raise ValueError(f"no parallel text for {', '.join(missing)}; this corpus has: {' '.join(self.languages)}")
        wanted = set(langs)
        keep = [i for i, p in enumerate(self.pairs) if p[2] in wanted]
        skipped = Counter(self.skipped)
        for p in self.pairs:
            if p[2] not in wanted:
                skipped[f"language not in langs ({p[2]})"] += 1
        return ParallelCorpus([self.pairs[i] for i in keep], skipped,
                              None if self.keys is None else [self.keys[i] for i in keep])


def _clean(text) -> str:
    return " ".join(str(text).split()) if text is not None else ""


def cldr_pairs(data_dir: str, view: str = "train+val", pivot: str = "en", keywords: bool = True) -> ParallelCorpus:
    """Name <-> English name (and keyword list <-> English keyword list) for every emoji of ``view``. An emoji
    drawn in several styles (``brivl data emoji --styles ...``) is one concept with one set of names: its pairs
    are read once, from its first render, and keyed by the concept id."""
    samples, stats = load_view(data_dir, view)
    pairs, keys, skipped, seen = [], [], Counter(), set()
    skipped.update(stats.skipped)
    for s in samples:
        meta = s["meta"]
        concept = meta.get("id", s["key"])
        if concept in seen:
            continue
        seen.add(concept)
        caps, kws = meta.get("captions") or {}, meta.get("keywords") or {}
        if not caps.get(pivot):
            skipped[f"no {pivot} name"] += 1
            continue
        for lang, names in caps.items():
            for name in names:
                pairs.append((_clean(name), _clean(caps[pivot][0]), lang))
                keys.append(concept)
            if keywords and kws.get(lang) and kws.get(pivot):
                pairs.append((_clean(" ".join(kws[lang])), _clean(" ".join(kws[pivot])), lang))
                keys.append(concept)
    return ParallelCorpus(pairs, skipped, keys)


def read_parallel_corpus(path: str, default_lang: str = "xx") -> ParallelCorpus:
    """TSV (``en<TAB>text[<TAB>lang]``, an optional header naming en/text/lang) or JSONL
    (``{"en": ..., "text": ..., "lang": ...}``). Rows with a missing or empty side are skipped and counted."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"parallel corpus {path} not found (TSV or JSONL of en <-> text pairs)")
    rows, skipped = [], Counter()
    with p.open(encoding="utf-8", errors="replace", newline="") as f:
        if p.suffix in (".jsonl", ".json"):
            for line in f:
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    skipped["bad JSON line"] += 1
        else:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = None
            for i, r in enumerate(reader):
                if i == 0 and {"en", "text"} <= {c.strip().lower() for c in r}:
                    header = [c.strip().lower() for c in r]
                    continue
                rows.append(dict(zip(header or ["en", "text", "lang"], r)))
    pairs = []
    for r in rows:
        en, text = _clean(r.get("en")), _clean(r.get("text"))
        if not en or not text:
            skipped["missing or empty side"] += 1
            continue
        pairs.append((text, en, _clean(r.get("lang")) or default_lang))
    if not pairs:
        raise ValueError(f"{path}: no usable pairs ({dict(skipped)}); expected columns en, text[, lang]")
    return ParallelCorpus(pairs, skipped)


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, corpus: ParallelCorpus):
        self.pairs, self.keys = corpus.pairs, corpus.keys

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i):
        return (*self.pairs[i], None if self.keys is None else self.keys[i])


def _collate(rows):
    return {"texts": [r[0] for r in rows], "english": [r[1] for r in rows], "langs": [r[2] for r in rows],
            "keys": [r[3] for r in rows]}


class ParallelTextDataModule(pl.LightningDataModule):
    """Batches of parallel text for training; whole image views (``ClosedViewDataset``) for validation."""

    def __init__(
        self,
        data_dir: str = "data/emoji",
        view: str = "train+val",
        corpus: str | None = None,
        langs: list[str] | None = None,
        pivot: str = "en",
        keywords: bool = True,
        batch_size: int = 256,
        group_by_length: bool = False,
        num_workers: int = 0,
        val_view: str = "closed",
        test_view: str = "test",
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.image_size, self.mean, self.std = 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        self.corpus: ParallelCorpus | None = None

    def configure_preprocess(self, image_size: int, mean, std) -> None:
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is not None:
            return
        hp = self.hparams
        corpus = read_parallel_corpus(hp.corpus) if hp.corpus else cldr_pairs(hp.data_dir, hp.view, hp.pivot,
                                                                               hp.keywords)
        if hp.corpus:  # a user corpus: 'all' = every language it has rows in
            langs = None if hp.langs and "all" in hp.langs else hp.langs
        else:  # CLDR: 'all' = every language the data covers; an unknown code names the covered ones
            langs = resolve_langs(hp.langs, hp.data_dir)
        self.corpus = corpus.select(langs)
        counts = Counter(lang for _, _, lang in self.corpus.pairs)
        print(f"parallel text: {len(self.corpus.pairs)} pairs in {len(counts)} languages "
              f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})")
        if self.corpus.skipped:
            print(f"skipped {sum(self.corpus.skipped.values())} rows: {dict(sorted(self.corpus.skipped.items()))}")

    def train_dataloader(self):
        """Shuffled batches; with ``group_by_length``, transformers' ``LengthGroupedSampler`` (random
        mega-batches of 50 batches, sorted by length inside) so a batch holds texts of similar length and
        the student's padding is trimmed away (UTF-8 bytes stand in for tokens: CLDR names are a few
        tokens, keyword lists fill the context)."""
        hp = self.hparams
        g = torch.Generator().manual_seed(hp.seed)
        order = {"shuffle": True, "generator": g}
        if hp.group_by_length:
            from transformers.trainer_pt_utils import LengthGroupedSampler

            lengths = [len(text.encode("utf-8")) for text, _, _ in self.corpus.pairs]
            order = {"sampler": LengthGroupedSampler(hp.batch_size, lengths=lengths, generator=g)}
        return torch.utils.data.DataLoader(_Pairs(self.corpus), batch_size=hp.batch_size, drop_last=True,
                                           collate_fn=_collate, num_workers=hp.num_workers, **order)

    def val_dataloader(self):
        return view_loader(self.hparams.data_dir, self.hparams.val_view, self.image_size, self.mean, self.std)

    def test_dataloader(self):
        return view_loader(self.hparams.data_dir, self.hparams.test_view, self.image_size, self.mean, self.std)

