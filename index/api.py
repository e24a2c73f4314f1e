"""The Python API of an index folder: load, search (text, image, vector), add, remove, verify.

    from index.api import load_index, search_text
    idx = load_index("runs/index/emoji")
    for hit in search_text(idx, ["一只猫", "red heart"], k=5)[0]:
        print(hit.rank, hit.score, hit.id, hit.caption)

Text queries go through ONNX (``text.onnx`` + ``tokenizer.json``: no torch import) when the index has
them, else through the torch model recorded in ``index.json`` (with a note). Image queries always use
torch. Hits carry metadata looked up in SQLite by id. Every bad input raises
:class:`index.common.UserError` with a one-line message; nothing on disk is changed by a search.

``load_index`` / ``verify`` (:mod:`index.loaded`: open a folder, check it) and ``add_items`` /
``remove_items`` (:mod:`index.update`) are re-exported here. The latter change a copy of the folder and swap it
in (see :func:`index.common.update_folder`), keeping the FAISS index, ``ids.npy``, ``meta.sqlite`` and
``index.json`` in step. Index types that cannot remove vectors in place (HNSW, on-disk IVF) keep the removed
ids as tombstones that search filters out.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from . import factory as fx
from . import meta
from .common import UserError
# the API in one module: opening a folder (index/loaded.py) and its write half (index/update.py), re-exported
from .loaded import LoadedIndex, load_index, text_encoder, torch_model, verify  # noqa: F401
from .update import add_items, remove_items  # noqa: F401

MAX_QUERY_BYTES = 2048


@dataclass
class Hit:
    rank: int
    score: float
    id: int
    key: str
    caption: str | None
    language: str | None
    source: str | None
    captions: dict = field(default_factory=dict, repr=False)
    extra: dict = field(default_factory=dict, repr=False)

    def label(self, lang: str | None = None) -> str:
        """The caption in ``lang`` when the item has one, else its default caption (or key)."""
        caps = self.captions.get(lang) if lang else None
        text = caps[0] if caps else (self.caption or self.key)
        symbol = self.extra.get("emoji")
        return f"{symbol} {text}" if symbol else text

    def to_dict(self, lang: str | None = None) -> dict:
        return {"rank": self.rank, "score": round(self.score, 6), "id": self.id, "key": self.key,
                "caption": self.label(lang), "language": lang if lang and self.captions.get(lang) else self.language,
                "source": self.source}


# --------------------------------------------------------------------------------------------- search


def check_k(idx: LoadedIndex, k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise UserError(f"k must be an integer, got {k!r}")
    if k <= 0:
        raise UserError(f"k must be >= 1, got {k}")
    if k > idx.count:
        raise UserError(f"k={k} exceeds the {idx.count} items in the index")
    return int(k)


def check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise UserError("no query given")
    for i, t in enumerate(texts):
        where = f"query {i + 1}" if len(texts) > 1 else "query"
        if not isinstance(t, str):
            raise UserError(f"{where} is not a string: {type(t).__name__}")
        if not t.strip():
            raise UserError(f"{where} is empty or whitespace only")
        if "\x00" in t:
            raise UserError(f"{where} contains a NUL character")
        n = len(t.encode("utf-8", errors="surrogatepass"))
        if n > MAX_QUERY_BYTES:
            raise UserError(f"{where} is {n} bytes long; at most {MAX_QUERY_BYTES} bytes are accepted")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise UserError(f"{where} is not valid text ({e.reason} at position {e.start})") from e
    return texts


def check_vectors(idx: LoadedIndex, vectors) -> np.ndarray:
    try:
        x = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise UserError(f"query vector is not numeric ({e})") from e
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] == 0:
        raise UserError(f"query vectors must be (n, {idx.dim}), got shape {tuple(x.shape)}")
    if x.shape[1] != idx.dim:
        raise UserError(f"query vector has dimension {x.shape[1]}; this index holds {idx.dim}-d vectors")
    if not np.isfinite(x).all():
        raise UserError("query vector contains NaN or infinity")
    if (np.abs(x).sum(axis=1) == 0).any():
        raise UserError("query vector is all zeros")
    return np.ascontiguousarray(x)


def search_vector(idx: LoadedIndex, vectors, k: int = 10, timings: dict | None = None) -> list[list[Hit]]:
    """Top-k hits of each query vector (inner product), metadata attached by id. ``timings``: a dict that
    receives the seconds spent in FAISS (``search``) and in the metadata look-up (``metadata``)."""
    k = check_k(idx, k)
    x = check_vectors(idx, vectors)
    kk = min(k + len(idx.deleted), int(idx.index.ntotal))
    t0 = time.perf_counter()
    scores, ids = fx.search(idx.index, x, kk)
    t1 = time.perf_counter()
    wanted = {int(i) for i in ids.ravel() if i >= 0 and int(i) not in idx.deleted}
    items = fetch_items(idx, wanted)
    if timings is not None:
        timings.update(search=t1 - t0, metadata=time.perf_counter() - t1)
    missing = wanted - set(items)
    if missing:
        raise UserError(f"index ids and metadata do not match in {idx.path}: id {min(missing)} has no metadata "
                        "(rebuild the index)")
    out = []
    for srow, irow in zip(scores, ids):
        hits, seen = [], set()
        for s, i in zip(srow.tolist(), irow.tolist()):
            if i < 0 or i in idx.deleted or i in seen:
                continue
            seen.add(i)
            it = items[i]
            hits.append(Hit(len(hits) + 1, float(s), i, it["key"], it["caption"], it["language"], it["source"],
                            it["captions"], it["extra"]))
            if len(hits) == k:
                break
        out.append(hits)
    return out


def fetch_items(idx: LoadedIndex, ids: set[int]) -> dict[int, dict]:
    """Metadata rows by id, through the index's row cache when it has one (``meta_cache_size``)."""
    if not idx.meta_cache_size:
        return meta.fetch(idx.db, ids)
    cache = idx._meta_cache
    items = {i: cache[i] for i in ids if i in cache}
    if len(items) < len(ids):
        fetched = meta.fetch(idx.db, ids - set(items))
        items.update(fetched)
        if len(cache) + len(fetched) > idx.meta_cache_size:
            cache.clear()  # simple and bounded; a hot set refills within a few queries
        cache.update(fetched)
    return items


def embed_texts(idx: LoadedIndex, texts, model: str | None = None) -> np.ndarray:
    return text_encoder(idx, model)(check_texts(texts))


def search_text(idx: LoadedIndex, texts, k: int = 10, model: str | None = None) -> list[list[Hit]]:
    """Top-k hits of each text query (ONNX encoder when available)."""
    texts = check_texts(texts)
    check_k(idx, k)
    return search_vector(idx, text_encoder(idx, model)(texts), k)


def open_image(path_or_image):
    """A fully decoded PIL image from a path or from the bytes of an image file (a PIL image is passed
    through), or :class:`UserError` naming what could not be decoded."""
    import io

    from PIL import Image

    if isinstance(path_or_image, (bytes, bytearray)):
        source, fp = "the uploaded image", io.BytesIO(path_or_image)
    elif isinstance(path_or_image, (str, os.PathLike)):
        source = fp = Path(path_or_image)
        if not fp.is_file():
            raise UserError(f"image {fp} not found")
        source = f"image {fp}"
    else:
        return path_or_image
    try:
        with Image.open(fp) as im:
            im.load()
            return im.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot decode {source} ({type(e).__name__}: {str(e)[:120]})") from e


def embed_images(idx: LoadedIndex, images: Sequence, model: str | None = None) -> np.ndarray:
    pil = [open_image(im) for im in images]  # decode errors before the slow torch import
    m = torch_model(idx, model)
    from brivl.data.transforms import to_batch

    mean, std = m.image_mean_std
    return m.embed_images(to_batch([{"image": im} for im in pil], m.image_size, mean, std)).numpy()


def search_image(idx: LoadedIndex, images, k: int = 10, model: str | None = None) -> list[list[Hit]]:
    """Top-k hits of each query image (paths or PIL images; uses torch)."""
    if isinstance(images, (str, os.PathLike)) or hasattr(images, "mode"):
        images = [images]
    check_k(idx, k)
    return search_vector(idx, embed_images(idx, images, model), k)

