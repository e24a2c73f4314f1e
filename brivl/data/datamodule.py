"""Caption sampling, the seeded training stream and the LightningDataModule over WebDataset shards.

Views (which shards a name such as ``train`` or ``test+style:openmoji`` reads) are :mod:`brivl.data.views`;
image tensors and the training augmentation are :mod:`brivl.data.transforms`.
"""
from __future__ import annotations

import copy
import logging
import random
from typing import Sequence

import pytorch_lightning as pl
import torch

from .emoji import sample_style
from .shards import DecodeStats, decode_sample
from .transforms import TrainAugment, to_batch
from .views import load_manifest, load_view, view_shards, view_size, view_styles

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- text


class CaptionSampler:
    """Pick ``per_image`` captions per sample, each in a different language among ``langs`` (with
    repeats only when fewer languages exist): the name (caption) with probability ``name_prob``,
    else a random subset of 1..``max_keywords`` keywords."""

    def __init__(self, langs: Sequence[str] | None, name_prob: float = 0.6, max_keywords: int = 3,
                 per_image: int = 1):
        if per_image < 1:
            raise ValueError(f"captions per image must be >= 1, got {per_image}")
        self.langs = list(langs) if langs else None
        self.name_prob = name_prob
        self.max_keywords = max_keywords
        self.per_image = per_image

    def __call__(self, meta: dict, rng: random.Random) -> list[tuple[str, str]] | None:
        captions = meta.get("captions") or {}
        langs = [lang for lang in (self.langs or sorted(captions)) if captions.get(lang)]
        if not langs:
            return None
        picked = rng.sample(langs, min(self.per_image, len(langs)))
        picked += [rng.choice(langs) for _ in range(self.per_image - len(picked))]
        return [(self._one(meta, lang, rng), lang) for lang in picked]

    def _one(self, meta: dict, lang: str, rng: random.Random) -> str:
        keywords = (meta.get("keywords") or {}).get(lang) or []
        if keywords and rng.random() >= self.name_prob:
            k = rng.randint(1, min(self.max_keywords, len(keywords)))
            return " ".join(rng.sample(keywords, k))
        return rng.choice(meta["captions"][lang])


# --------------------------------------------------------------------------- training stream


class _TrainMap:
    """Picklable per-sample map: (raw sample, its rng) -> (image tensor, captions, hard negatives) or None (corrupt
    / no caption); :meth:`compose` makes one composed sample of two raw ones."""

    def __init__(self, augment: TrainAugment, captions: CaptionSampler):
        self.augment, self.captions = augment, captions
        self.stats = DecodeStats()

    def __call__(self, raw: dict, rng: random.Random):
        s = decode_sample(raw, self.stats)
        return None if s is None else self._one(s, rng)

    def _one(self, s: dict, rng: random.Random):
        caps = self.captions(s["meta"], rng)
        if caps is None:
            self.stats.skip("no caption in the requested languages", s["key"])
            return None
        concept = concept_label(s["meta"].get("id") or s["key"])
        return self.augment(s["image"], rng), caps, [None] * len(caps), concept

    def compose(self, raw_a: dict, raw_b: dict, rng: random.Random, mirror: bool = False):
        """Two renders side by side or one above the other (:func:`brivl.compositional.relation_sample`), captioned
        with the relation in ``per_image`` languages, each with its order-swapped hard negative; a plain sample when
        one of the two is corrupt or no language has both names. ``mirror``: a list of two items, the composite
        and its mirror (the two renders swapped, same relation, languages and augmentation draw), so each is the
        other's hard negative in the batch on both sides, text and image."""
        from ..compositional import relation_sample

        a, b = decode_sample(raw_a, self.stats), decode_sample(raw_b, self.stats)
        if a is None or b is None:
            return None if a is None and b is None else self._one(a or b, rng)
        langs = self.captions.langs or sorted(a["meta"].get("names") or {})
        names_a, names_b = a["meta"].get("names") or {}, b["meta"].get("names") or {}
        made = relation_sample(a["image"], b["image"], names_a, names_b, langs, rng)
        if made is None:
            return self._one(a, rng)
        image, caps, relation = made
        m = self.captions.per_image
        picked = rng.sample(range(len(caps)), min(m, len(caps)))
        picked += [rng.randrange(len(caps)) for _ in range(m - len(picked))]
        state = rng.getstate()

        id_a, id_b = (x["meta"].get("id") or x["key"] for x in (a, b))

        def item(img, cs, concept):  # (image tensor, the picked (caption, language) pairs, their hard negatives, id)
            return (self.augment(img, rng), [(cs[i][0], cs[i][2]) for i in picked], [cs[i][1] for i in picked],
                    concept_label(concept))

        first = item(image, caps, f"{id_a} {relation} {id_b}")
        if not mirror:
            return first
        image_ba, caps_ba, _ = relation_sample(b["image"], a["image"], names_b, names_a, langs, rng, relation)
        rng.setstate(state)  # the same scale and placement: the two images differ only in the order
        return [first, item(image_ba, caps_ba, f"{id_b} {relation} {id_a}")]


def _collate(samples):
    """-> images (B, 3, S, S); texts / langs / negatives: M lists of B (caption set m of every image; the hard
    negative of an image's caption, or None); concepts (B,): :func:`concept_label` of each sample's concept."""
    images, caps, negs, concepts = zip(*samples)
    m = len(caps[0])
    return {"images": torch.stack(images),
            "texts": [[c[j][0] for c in caps] for j in range(m)],
            "langs": [[c[j][1] for c in caps] for j in range(m)],
            "negatives": [[n[j] for n in negs] for j in range(m)],
            "concepts": torch.tensor(concepts, dtype=torch.long)}


def concept_label(concept: str) -> int:
    """A stable non-negative 63-bit label of a concept (the emoji id, so the three styles of one emoji share it;
    a composite's "A relation B"): the momentum queue's false-negative mask compares them."""
    return _seed(concept)


def _seed(*parts: int | str) -> int:
    """One 63-bit seed from integers or strings (not ``hash``: that of a string differs between processes)."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


class TrainStream(torch.utils.data.IterableDataset):
    """The training stream: shards drawn with replacement, samples shuffled in a buffer, decoded, augmented,
    captioned and batched; ``batches_per_epoch`` batches per worker and epoch.

    It is a pure function of (``seed``, rank, worker, epoch): the shard draws and the shuffle are seeded per
    epoch, and each sample's augmentation and captions by its position in the shuffled stream, so two runs of one
    seed see the same batches. Every batch carries ``"stream"`` = (rank, worker, epoch, position, batches) of
    where it ends, which :class:`ShardDataModule` keeps as its checkpoint state; :meth:`resume_from` makes the
    next epoch start where that state left off (the samples before it are read through the shuffle again but
    not decoded), so a run killed at any step and resumed from its checkpoint continues with the batches the
    uninterrupted run would have drawn (exact with 0 or 1 worker; with more, the same samples in another
    interleaving of the workers' batches)."""

    def __init__(self, urls: list[str], fn: _TrainMap, batch_size: int, batches_per_epoch: int,
                 shuffle_buffer: int, seed: int, styles: set[str] | None = None, compose_p: float = 0.0,
                 compose_mirror: bool = False):
        super().__init__()
        self.urls, self.fn, self.batch_size, self.batches_per_epoch = urls, fn, batch_size, batches_per_epoch
        self.shuffle_buffer, self.seed, self.styles = max(1, shuffle_buffer), seed, styles
        self.compose_p = compose_p  # the fraction of items that are two renders composed (two stream positions)
        self.compose_mirror = compose_mirror  # ... each followed by its mirror (the renders swapped)
        self.epoch = -1  # incremented at the start of each epoch's iteration (in a persistent worker's copy)
        self.resume: dict | None = None  # {"epoch": e, "workers": {"rank:worker": [position, batches]}}

    def resume_from(self, state: dict) -> None:
        """Continue after ``state`` (the data module's checkpoint state): its epoch, from its positions."""
        self.resume = state
        self.epoch = int(state["epoch"]) - 1

    def _raw(self, rng: random.Random):
        import webdataset as wds

        shards = (dict(url=self.urls[rng.randrange(len(self.urls))]) for _ in iter(int, 1))  # with replacement
        for raw in wds.tarfile_to_samples(handler=wds.warn_and_continue)(shards):
            if self.styles is None or sample_style(raw["__key__"]) in self.styles:
                yield raw

    def _shuffled(self, raws, rng: random.Random):
        buf = []
        for raw in raws:
            buf.append(raw)
            if len(buf) >= self.shuffle_buffer:
                i = rng.randrange(len(buf))
                buf[i], buf[-1] = buf[-1], buf[i]
                yield buf.pop()

    def __iter__(self):
        import webdataset as wds

        self.epoch += 1
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        base = _seed(self.seed, rank, worker, self.epoch)
        skip, done = 0, 0
        if self.resume is not None and int(self.resume["epoch"]) == self.epoch:
            skip, done = (self.resume["workers"].get(f"{rank}:{worker}") or [0, 0])
        batch, first = [], None  # first: the first render of a composed item, waiting for its second
        mirrors = []  # (i, j): batch rows of a composite and its mirror
        for pos, raw in enumerate(self._shuffled(self._raw(random.Random(base)), random.Random(base + 1)), 1):
            if done >= self.batches_per_epoch:
                return
            if pos <= skip:  # before the resume point: through the shuffle, not decoded
                continue
            rng = random.Random(_seed(base, pos))
            if first is not None:
                item, first = self.fn.compose(first, raw, rng, self.compose_mirror), None
            elif self.compose_p and rng.random() < self.compose_p:
                first = raw
                continue
            else:
                item = self.fn(raw, rng)
            if item is None:
                continue
            if isinstance(item, list):  # a composite and its mirror: kept in one batch, so the mirror is dropped
                if len(batch) + 2 <= self.batch_size:  # when one slot is left (exact resume)
                    mirrors.append((len(batch), len(batch) + 1))
                batch.extend(item[:self.batch_size - len(batch)])
            else:
                batch.append(item)
            if len(batch) == self.batch_size:
                done += 1
                yield {**_collate(batch), "mirror_pairs": torch.tensor(mirrors, dtype=torch.long).view(-1, 2),
                       "stream": torch.tensor([rank, worker, self.epoch, pos, done])}
                batch, mirrors = [], []


class ClosedViewDataset(torch.utils.data.Dataset):
    """A whole evaluation view as one item: (N, 3, S, S) images + per-sample metadata."""

    def __init__(self, data_dir: str, view: str, size: int, mean, std):
        samples, self.stats = load_view(data_dir, view)
        self.images = to_batch(samples, size, mean, std)
        self.metas = [s["meta"] for s in samples]
        self.keys = [s["key"] for s in samples]

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i):
        return {"images": self.images, "metas": self.metas, "keys": self.keys}


def view_loader(data_dir: str, view: str, size: int, mean, std) -> torch.utils.data.DataLoader:
    """One batch: the whole view (evaluation ranks every image against every caption)."""
    return torch.utils.data.DataLoader(ClosedViewDataset(data_dir, view, size, mean, std), batch_size=None,
                                       num_workers=0)


class ShardDataModule(pl.LightningDataModule):
    """WebDataset shards -> augmented (image, caption) batches; a whole view for validation.

    Augmentation: each emoji scaled by a factor in [``scale_min``, 1] and placed at random on a light
    background whose channels are drawn from [``bg_min``, 255] (255: always white); with probabilities
    ``grayscale``, ``jitter_p`` (strength ``jitter``), ``blur`` and ``outline``, the style changes of
    :class:`TrainAugment` (all off by default). ``compose_p``: the fraction of training items that are two
    renders composed side by side or one above the other, captioned with the relation and carrying the
    order-swapped caption as a hard negative (NegCLIP; ``DualTowerSystem(hard_negatives=True)`` uses it);
    ``compose_mirror``: each composite comes with its mirror (the two renders swapped) in the same batch, a hard
    negative image for the caption as well as a hard negative caption for the image.

    ``image_size``/``mean``/``std`` are set from the model by the system (``configure_preprocess``).
    """

    def __init__(
        self,
        data_dir: str = "data/emoji",
        train_view: str = "train",
        val_view: str = "val",
        test_view: str = "test",
        langs: list[str] | None = None,
        batch_size: int = 256,
        num_workers: int = 1,
        name_prob: float = 0.6,
        max_keywords: int = 3,
        captions_per_image: int = 1,
        scale_min: float = 0.6,
        bg_min: int = 180,
        grayscale: float = 0.0,
        jitter: float = 0.0,
        jitter_p: float = 0.0,
        blur: float = 0.0,
        outline: float = 0.0,
        compose_p: float = 0.0,
        compose_mirror: bool = False,
        shuffle_buffer: int = 2000,
        epoch_samples: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.image_size, self.mean, self.std = 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        self._progress: dict = {}  # the training stream's position (state_dict)
        self._resume: dict | None = None

    def configure_preprocess(self, image_size: int, mean, std) -> None:
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)

    def train_dataloader(self):
        hp = self.hparams
        urls = view_shards(hp.data_dir, hp.train_view)
        manifest = load_manifest(hp.data_dir)
        from .languages import resolve_langs

        langs = resolve_langs(hp.langs, hp.data_dir)  # 'all': the covered languages; an unknown code is an error
        styles = view_styles(manifest, hp.train_view)
        n = hp.epoch_samples or view_size(hp.data_dir, hp.train_view)
        workers = max(1, hp.num_workers)
        batches_per_worker = max(1, n // (hp.batch_size * workers))
        fn = _TrainMap(TrainAugment(self.image_size, self.mean, self.std, (hp.scale_min, 1.0), hp.bg_min,
                                    hp.grayscale, hp.jitter, hp.jitter_p, hp.blur, hp.outline),
                       CaptionSampler(langs, hp.name_prob, hp.max_keywords, hp.captions_per_image))
        stream = TrainStream(urls, fn, hp.batch_size, batches_per_worker, hp.shuffle_buffer, hp.seed, styles,
                             hp.compose_p, hp.compose_mirror)
        if self._resume is not None:
            stream.resume_from(self._resume)
        return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=hp.num_workers,
                                           persistent_workers=hp.num_workers > 0)

    # where the training stream stands, kept in every checkpoint so a resumed run draws the batches that follow
    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, dict) and "stream" in batch:
            rank, worker, epoch, pos, done = (int(v) for v in batch.pop("stream"))
            if epoch != self._progress.get("epoch"):
                self._progress = {"epoch": epoch, "workers": {}}
            self._progress["workers"][f"{rank}:{worker}"] = [pos, done]
        return batch

    def state_dict(self) -> dict:
        return {"train_stream": self._progress} if self._progress else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume = state_dict.get("train_stream")
        self._progress = copy.deepcopy(self._resume or {})  # updated by new batches; the resume point stays as read

    def val_dataloader(self):
        return view_loader(self.hparams.data_dir, self.hparams.val_view, self.image_size, self.mean, self.std)

    def test_dataloader(self):
        return view_loader(self.hparams.data_dir, self.hparams.test_view, self.image_size, self.mean, self.std)
