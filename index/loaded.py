"""An opened index folder: its vector index (FAISS or Milvus), ``ids.npy``, ``meta.sqlite`` and ``index.json``
checked against each other, and the encoders of its queries (ONNX text encoder, else the torch model recorded
in ``index.json``). The read half that :mod:`index.api` (search) and :mod:`index.update` (add / remove) share.
"""
from __future__ import annotations

import os
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import factory as fx
from . import meta
from .common import FAISS_NAME, IDS_NAME, INFO_NAME, META_NAME, UserError, read_faiss, read_info, same_model


@dataclass
class LoadedIndex:
    path: Path
    info: dict
    index: object  # faiss.Index
    db: sqlite3.Connection
    deleted: set
    count: int
    notes: list = field(default_factory=list)
    text_threads: int | None = None  # ONNX intra-op threads (None: up to 2; the HTTP service uses 1 per worker)
    meta_cache_size: int = 0  # rows kept after a look-up (0: none); a folder never changes under a LoadedIndex
    _meta_cache: dict = field(default_factory=dict, repr=False)
    _text: object = None
    _model: object = None

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    def close(self) -> None:
        self.db.close()
        if hasattr(self.index, "close"):  # a Milvus collection's client (index.milvus)
            self.index.close()


# -------------------------------------------------------------------------------------------- loading


def load_index(path: str | os.PathLike, mmap: bool = False) -> LoadedIndex:
    """Open an index folder read-only and check that index, ids and metadata agree (counts).

    ``mmap``: map an in-RAM index file instead of reading it (on-disk indexes are always mapped)."""
    path = Path(path)
    info = read_info(path)
    index = open_vectors(path, info, mmap)
    db = meta.connect(path / META_NAME, readonly=True)
    try:
        n_meta, deleted = meta.count(db), meta.deleted_ids(db)
    except sqlite3.DatabaseError as e:
        db.close()
        raise UserError(f"cannot read {path / META_NAME}: {e}") from e
    try:
        n_ids = int(np.load(path / IDS_NAME, mmap_mode="r").shape[0])
    except (OSError, ValueError) as e:
        db.close()
        raise UserError(f"cannot read {path / IDS_NAME}: {e}") from e
    counts = {"index.json count": info["count"], "ids.npy": n_ids, "meta.sqlite rows": n_meta,
              f"{backend_of(info)} vectors - removed": int(index.ntotal) - len(deleted)}
    if len(set(counts.values())) != 1:
        db.close()
        if hasattr(index, "close"):
            index.close()
        raise UserError(f"index ids and metadata do not match in {path} ("
                        + ", ".join(f"{k} {v}" for k, v in counts.items()) + "): rebuild the index")
    fx.set_search_params(index, info.get("params") or {})
    return LoadedIndex(path, info, index, db, deleted, n_meta)


def backend_of(info: dict) -> str:
    return info.get("backend", "faiss")


def open_vectors(path: Path, info: dict, mmap: bool = False):
    """The vector index of a folder: ``index.faiss``, or the Milvus collection ``index.json`` names."""
    if backend_of(info) == "milvus":
        from .milvus import MilvusIndex

        return MilvusIndex(path, info["milvus"], info["dim"])
    fpath = path / FAISS_NAME
    if not fpath.is_file():
        raise UserError(f"{path} has no {FAISS_NAME}: the index folder is incomplete, rebuild it")
    try:
        index = read_faiss(fpath, on_disk=bool(info.get("on_disk")), mmap=bool(mmap))
    except RuntimeError as e:
        raise UserError(f"cannot read {fpath}: {str(e).strip().splitlines()[-1][:200]}") from e
    if index.d != info["dim"]:
        raise UserError(f"{fpath} holds {index.d}-d vectors but {INFO_NAME} says {info['dim']}")
    return index


def index_ids(index) -> np.ndarray:
    """Every id stored in a FAISS index (IndexIDMap2's map, or the IVF lists), or another backend's."""
    import faiss

    if hasattr(index, "all_ids"):
        return index.all_ids()
    inner = faiss.downcast_index(index)
    if hasattr(inner, "id_map"):
        return faiss.vector_to_array(inner.id_map).astype(np.int64)
    ivf = fx.ivf_of(index)
    if ivf is None:
        raise UserError("this index type does not store ids")
    inv = ivf.invlists
    out = [faiss.rev_swig_ptr(inv.get_ids(i), inv.list_size(i)).copy() for i in range(ivf.nlist)
           if inv.list_size(i)]
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def verify(idx: LoadedIndex) -> None:
    """Full check: the same id set in FAISS (minus tombstones), ``ids.npy`` and ``meta.sqlite``."""
    in_faiss = index_ids(idx.index)
    live = np.setdiff1d(in_faiss, np.fromiter(idx.deleted, np.int64, len(idx.deleted)))
    in_npy = np.sort(np.load(idx.path / IDS_NAME))
    in_meta = meta.all_ids(idx.db)
    if len(np.unique(in_faiss)) != len(in_faiss):
        raise UserError(f"index ids and metadata do not match in {idx.path}: the vector index repeats ids")
    if not (np.array_equal(np.sort(live), in_npy) and np.array_equal(in_npy, in_meta)):
        raise UserError(f"index ids and metadata do not match in {idx.path}: {len(live)} live vector ids, "
                        f"{len(in_npy)} in ids.npy, {len(in_meta)} in meta.sqlite, not the same set")


# ------------------------------------------------------------------------------------------- encoders


def text_encoder(idx: LoadedIndex, model: str | None = None):
    """ONNX encoder when the index has one (and no other ``model`` is asked for), else torch."""
    if idx._text is None:
        from .textenc import TorchTextEncoder, has_onnx, onnx_encoder

        if model is None and has_onnx(idx.path, idx.info):
            idx._text = onnx_encoder(idx.path, idx.info, threads=idx.text_threads)
        else:
            if model is None:
                note = (f"note: {idx.path} has no ONNX text encoder; loading the torch model (slow). "
                        f"`python -m index export-onnx --index {idx.path}` makes text search fast")
                idx.notes.append(note)
                print(note, file=sys.stderr)
            idx._text = TorchTextEncoder(torch_model(idx, model))
    return idx._text


def torch_model(idx: LoadedIndex, model: str | None = None):
    """The index's model (or ``model``), checked against the one recorded in ``index.json``."""
    if idx._model is None:
        from .embed import describe_model, load_model

        path = model or (idx.info.get("model") or {}).get("path")
        if not path or not Path(path).exists():
            raise UserError(f"the model that built {idx.path} ({path}) is not available: pass --model DIR")
        m = load_model(path)
        why = same_model(idx.info.get("model") or {}, describe_model(m, path))
        if why:
            raise UserError(f"{idx.path} was built by another model: {why}")
        idx._model = m
    return idx._model
