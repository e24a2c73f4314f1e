"""Shard views, caption sampling, augmentation and the LightningDataModule over WebDataset shards.

A data folder holds shards per split and ``manifest.json`` (see ``emoji.py`` / ``importer.py``).
Views: ``closed`` (every split: the closed world), a split name (``train``, ``val``, ``test``),
or several joined by ``+`` (``train+val``).
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Sequence

import pytorch_lightning as pl
import torch

from .shards import DecodeStats, decode_sample, iter_samples

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- views


def load_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: build the data first (`python -m brivl data emoji --out {data_dir}` "
            f"or `python -m brivl data import SOURCE --out {data_dir}`)"
        )
    return json.loads(path.read_text())


def view_splits(manifest: dict, view: str) -> list[str]:
    splits = list(manifest["splits"])
    names = splits if view in ("closed", "all") else view.split("+")
    bad = [n for n in names if n not in splits]
    if bad:
        raise ValueError(f"unknown view {view!r}: this data has splits {splits} (or 'closed' for all of them)")
    return names


def view_shards(data_dir: str | Path, view: str) -> list[str]:
    manifest = load_manifest(data_dir)
    return [str(Path(data_dir) / s) for n in view_splits(manifest, view) for s in manifest["splits"][n]["shards"]]


def load_view(data_dir: str | Path, view: str) -> tuple[list[dict], DecodeStats]:
    """Every decoded sample of a view, in shard order (for evaluation and indexing)."""
    stats = DecodeStats()
    samples = list(iter_samples(view_shards(data_dir, view), stats))
    return samples, stats


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


# --------------------------------------------------------------------------- images


def to_tensor(image, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Clean render: composite transparency on white, resize, normalize -> (3, size, size)."""
    from PIL import Image

    image = flatten(image, (255, 255, 255))
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return _normalize(image, mean, std)


def to_batch(samples: list[dict], size: int, mean, std) -> torch.Tensor:
    """Clean renders of decoded samples stacked into one (N, 3, size, size) tensor."""
    return torch.stack([to_tensor(s["image"], size, mean, std) for s in samples])


def flatten(image, background: tuple[int, int, int]):
    from PIL import Image

    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, background + (255,))
        canvas.alpha_composite(image)
        return canvas.convert("RGB")
    return image.convert("RGB")


def _normalize(image, mean, std) -> torch.Tensor:
    import numpy as np

    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


class TrainAugment:
    """Rendering-level augmentation: random scale and position on a random light background."""

    def __init__(self, size: int, mean, std, scale: tuple[float, float] = (0.6, 1.0), bg_min: int = 180):
        self.size, self.mean, self.std, self.scale, self.bg_min = size, mean, std, scale, bg_min

    def __call__(self, image, rng: random.Random) -> torch.Tensor:
        from PIL import Image

        bg = tuple(rng.randint(self.bg_min, 255) for _ in range(3))
        s = max(1, round(self.size * rng.uniform(*self.scale)))
        if image.mode in ("RGBA", "LA", "P"):
            fg = image.convert("RGBA").resize((s, s), Image.Resampling.BICUBIC)
            canvas = Image.new("RGBA", (self.size, self.size), bg + (255,))
            canvas.alpha_composite(fg, (rng.randint(0, self.size - s), rng.randint(0, self.size - s)))
            return _normalize(canvas.convert("RGB"), self.mean, self.std)
        # photos: random resized crop
        w, h = image.size
        side = max(1, round(min(w, h) * rng.uniform(*self.scale)))
        x0, y0 = rng.randint(0, w - side), rng.randint(0, h - side)
        crop = image.convert("RGB").crop((x0, y0, x0 + side, y0 + side)).resize((self.size, self.size))
        return _normalize(crop, self.mean, self.std)


# --------------------------------------------------------------------------- training stream


class _TrainMap:
    """Picklable per-sample map: raw -> (image tensor, caption, lang) or None (corrupt / no caption)."""

    def __init__(self, augment: TrainAugment, captions: CaptionSampler, seed: int):
        self.augment, self.captions, self.seed = augment, captions, seed
        self.rng: random.Random | None = None
        self.stats = DecodeStats()

    def __call__(self, raw: dict):
        if self.rng is None:
            info = torch.utils.data.get_worker_info()
            self.rng = random.Random(self.seed * 1000 + (info.id if info else 0))
        s = decode_sample(raw, self.stats)
        if s is None:
            return None
        caps = self.captions(s["meta"], self.rng)
        if caps is None:
            self.stats.skip("no caption in the requested languages", s["key"])
            return None
        return self.augment(s["image"], self.rng), caps


def _collate(samples):
    """-> images (B, 3, S, S); texts / langs: M lists of B (caption set m of every image)."""
    images, caps = zip(*samples)
    m = len(caps[0])
    return {"images": torch.stack(images),
            "texts": [[c[j][0] for c in caps] for j in range(m)],
            "langs": [[c[j][1] for c in caps] for j in range(m)]}


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
    background whose channels are drawn from [``bg_min``, 255] (255: always white).

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
        shuffle_buffer: int = 2000,
        epoch_samples: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.image_size, self.mean, self.std = 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    def configure_preprocess(self, image_size: int, mean, std) -> None:
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)

    def train_dataloader(self):
        import webdataset as wds

        hp = self.hparams
        urls = view_shards(hp.data_dir, hp.train_view)
        manifest = load_manifest(hp.data_dir)
        from .languages import resolve_langs

        langs = resolve_langs(hp.langs, hp.data_dir)  # 'all': the covered languages; an unknown code is an error
        n = hp.epoch_samples or sum(manifest["splits"][s]["count"] for s in view_splits(manifest, hp.train_view))
        workers = max(1, hp.num_workers)
        batches_per_worker = max(1, n // (hp.batch_size * workers))
        fn = _TrainMap(TrainAugment(self.image_size, self.mean, self.std, (hp.scale_min, 1.0), hp.bg_min),
                       CaptionSampler(langs, hp.name_prob, hp.max_keywords, hp.captions_per_image), hp.seed)
        ds = (
            wds.WebDataset(urls, resampled=True, shardshuffle=False,
                           handler=wds.warn_and_continue)
            .shuffle(hp.shuffle_buffer, rng=random.Random(hp.seed))
            .map(fn)
            .select(lambda x: x is not None)
            .batched(hp.batch_size, collation_fn=_collate, partial=False)
            .with_epoch(batches_per_worker)
        )
        return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=hp.num_workers,
                                           persistent_workers=hp.num_workers > 0)

    def val_dataloader(self):
        return view_loader(self.hparams.data_dir, self.hparams.val_view, self.image_size, self.mean, self.std)

    def test_dataloader(self):
        return view_loader(self.hparams.data_dir, self.hparams.test_view, self.image_size, self.mean, self.std)
