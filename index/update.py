"""Adding and removing items of an index folder without a rebuild (re-exported by :mod:`index.api`).

Each change is made to a copy of the folder that is renamed in (:func:`index.common.update_folder`), keeping
the FAISS index, ``ids.npy``, ``meta.sqlite`` and ``index.json`` in step; a reader (a search, the HTTP
service) sees the old folder or the new one. Index types that cannot remove vectors in place (HNSW, on-disk
IVF) keep the removed ids as tombstones that search filters out.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from . import factory as fx
from . import meta, milvus
from .loaded import LoadedIndex, load_index, torch_model, verify
from .common import (FAISS_NAME, IDS_NAME, INFO_NAME, META_NAME, UserError, atomic_save_npy, atomic_write_json,
                     now_iso, replacing, update_folder)


def _load_for_update(index_dir) -> LoadedIndex:
    idx = load_index(index_dir)
    verify(idx)
    if idx.info.get("on_disk"):
        idx.close()
        raise UserError(f"{index_dir} is an on-disk index: adding to it is not supported, rebuild it with the "
                        "new embeddings")
    return idx


def add_items(index_dir: str | os.PathLike, data: str, view: str = "closed", model: str | None = None,
              batch_size: int = 256, files_per_shard: int = 1000, progress: bool = True) -> dict:
    """Embed the images of ``data`` with the index's model and add the ones whose keys are new."""
    import faiss

    from .embed import read_shard, run_embed

    idx = _load_for_update(index_dir)
    try:
        m = torch_model(idx, model)
        with tempfile.TemporaryDirectory(prefix="index-add-") as tmp_emb:
            summary = run_embed(model or idx.info["model"]["path"], data, tmp_emb, view=view, batch_size=batch_size,
                                files_per_shard=files_per_shard, progress=progress, model=m)
            from .embed import finished_shards

            embs, items = [], []
            for name in finished_shards(tmp_emb):
                e, _, its = read_shard(tmp_emb, name)
                embs.append(np.asarray(e, np.float32))
                items += its
        x = np.concatenate(embs) if embs else np.zeros((0, idx.dim), np.float32)
        keys = [it["key"] for it in items]
        from .common import ids_for_keys

        new_ids = ids_for_keys(keys)
        have = meta.ids_of_keys(idx.db, keys)
        existing = meta.fetch(idx.db, new_ids.tolist())
        clash = [(it["key"], existing[it["id"]]["key"]) for it in items
                 if it["id"] in existing and existing[it["id"]]["key"] != it["key"]]
        if clash:
            raise UserError(f"id collision: new key {clash[0][0]!r} and indexed key {clash[0][1]!r} share an id")
        revived = [it["key"] for it in items if it["id"] in idx.deleted]
        if revived:
            raise UserError(f"key {revived[0]!r} was removed from this {idx.info['factory']} index, which keeps "
                            "removed vectors as tombstones: rebuild the index to add it again")
        keep = np.array([it["key"] not in have for it in items], dtype=bool)
        x, new_ids = x[keep], new_ids[keep]
        items = [it for it, kp in zip(items, keep) if kp]
        info = dict(idx.info)
        idx.close()
        if not items:
            return {"added": 0, "already_indexed": len(have), "count": info["count"], "skipped": summary["skipped"],
                    "keys": []}

        def change(tmp: Path) -> None:
            if info.get("backend") == "milvus":
                info["milvus"], ntotal = milvus.changed_version(Path(index_dir), tmp, info["milvus"], info["dim"],
                                                                add=(x, new_ids))
            else:
                index = faiss.read_index(str(tmp / FAISS_NAME))
                fx.add(index, x, new_ids)
                with replacing(tmp / FAISS_NAME) as p:
                    faiss.write_index(index, str(p))
                ntotal = int(index.ntotal)
            conn = meta.connect(tmp / META_NAME)
            try:
                meta.insert(conn, items)
            finally:
                conn.close()
            atomic_save_npy(tmp / IDS_NAME, np.concatenate([np.load(tmp / IDS_NAME), new_ids]))
            info.update(count=info["count"] + len(items), ntotal=ntotal, updated=now_iso())
            atomic_write_json(tmp / INFO_NAME, info)

        previous = (idx.info.get("milvus") or {}).copy()
        update_folder(index_dir, change)
        milvus.drop_old_versions(info.get("milvus") or {}, previous)
        return {"added": len(items), "already_indexed": len(have), "count": info["count"],
                "skipped": summary["skipped"], "keys": [it["key"] for it in items]}
    finally:
        idx.close()


def remove_items(index_dir: str | os.PathLike, ids: Sequence[int] = (), keys: Sequence[str] = ()) -> dict:
    """Remove items by id and/or key; unknown ones are an error (and nothing changes)."""
    import faiss

    idx = load_index(index_dir)
    verify(idx)
    try:
        by_key = meta.ids_of_keys(idx.db, keys)
        unknown_keys = [k for k in keys if k not in by_key]
        if unknown_keys:
            raise UserError(f"key {unknown_keys[0]!r} is not in the index"
                            + (f" (and {len(unknown_keys) - 1} more)" if len(unknown_keys) > 1 else ""))
        wanted = sorted({int(i) for i in ids} | set(by_key.values()))
        if not wanted:
            raise UserError("nothing to remove: give --ids or --keys")
        found = set(meta.fetch_ids(idx.db, wanted))
        unknown = [i for i in wanted if i not in found]
        if unknown:
            raise UserError(f"id {unknown[0]} is not in the index"
                            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
        info = dict(idx.info)
    finally:
        idx.close()
    gone = np.array(wanted, dtype=np.int64)
    result = {}

    def change(tmp: Path) -> None:
        tombstone = bool(info.get("on_disk"))
        milvus_n = None
        if info.get("backend") == "milvus":  # a new version of the collection without them
            info["milvus"], milvus_n = milvus.changed_version(Path(index_dir), tmp, info["milvus"], info["dim"],
                                                              remove=gone)
        index = faiss.read_index(str(tmp / FAISS_NAME)) if not tombstone and milvus_n is None else None
        if index is not None:
            try:
                removed = index.remove_ids(faiss.IDSelectorBatch(gone))
                if removed != len(gone):
                    raise UserError(f"FAISS removed {removed} of {len(gone)} vectors: the index and metadata "
                                    "do not match, rebuild the index")
                with replacing(tmp / FAISS_NAME) as p:
                    faiss.write_index(index, str(p))
            except RuntimeError:  # HNSW & co cannot remove in place
                tombstone = True
        conn = meta.connect(tmp / META_NAME)
        try:
            meta.delete(conn, gone.tolist(), tombstone)
            deleted = len(meta.deleted_ids(conn))
        finally:
            conn.close()
        old = np.load(tmp / IDS_NAME)
        atomic_save_npy(tmp / IDS_NAME, old[~np.isin(old, gone)])
        ntotal = milvus_n if milvus_n is not None else info["ntotal"] if tombstone else int(index.ntotal)
        info.update(count=info["count"] - len(gone), ntotal=ntotal, deleted=deleted, updated=now_iso())
        atomic_write_json(tmp / INFO_NAME, info)
        result.update(removed=len(gone), tombstones=tombstone, count=info["count"])

    previous = (info.get("milvus") or {}).copy()
    update_folder(index_dir, change)
    milvus.drop_old_versions(info.get("milvus") or {}, previous)
    return result
