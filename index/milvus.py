"""Milvus as a second index backend: the vectors live in a Milvus collection instead of ``index.faiss``.

The folder keeps everything else (``ids.npy``, ``meta.sqlite``, ``text.onnx``, ``index.json``), so search,
add/remove, the HTTP service and the ids are the same for both backends; ``index.json`` says which one
(``"backend": "milvus"``) and where the collection is:

* embedded (default): a milvus-lite data folder inside the index folder (``milvus-<version>.milvus.db``),
  opened with ``pymilvus.MilvusClient(path)``: no server, offline, one process at a time (milvus-lite locks it);
* ``--uri http://host:19530``: a Milvus server (milvus-lite's own ``milvus-lite server``, or a cluster)
  through the same client API; several processes can search it at once.

Updates are copy-on-write like the FAISS backend's: a change is made to a new version of the collection
(embedded: a copy of the data folder; server: a new collection filled from the old one) that the swapped-in
``index.json`` names, so a reader sees the old version or the new one, never a mix. A server keeps the
current and the replaced version (readers still on the old folder) and drops the others.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from .common import UserError

ID, VECTOR = "id", "vector"
INDEX_TYPES = ("HNSW", "FLAT")
INSERT_BATCH = 5000


def collection_name(folder_name: str) -> str:
    """A Milvus collection name (letters, digits, underscores; a letter first) from an index folder's name."""
    import re

    name = re.sub(r"[^0-9A-Za-z_]", "_", folder_name)
    return name if name[:1].isalpha() else f"index_{name}"


def drop_collection(uri: str, name: str) -> None:
    client = connect(uri)
    try:
        if client.has_collection(name):
            client.drop_collection(name)
    finally:
        client.close()


def new_version() -> str:
    return f"v{time.time_ns():x}"


def embedded_name(version: str) -> str:
    return f"milvus-{version}.milvus.db"  # pymilvus takes a URI ending in .db as a milvus-lite data folder


def location(folder: str | os.PathLike, cfg: dict) -> str:
    """The URI of an index's collection: its server, or the embedded data folder inside ``folder``."""
    return cfg["uri"] if cfg.get("uri") else str(Path(folder) / cfg["db"])


def connect(uri: str):
    """``MilvusClient(uri)``: a ``.db`` path (milvus-lite, embedded) or a server URI, with a one-line error."""
    import logging

    from pymilvus import MilvusClient

    # milvus-lite logs a full traceback when it cannot start (its folder locked by another process); the
    # one-line error below says it instead
    quiet = logging.getLogger("milvus_lite.server_manager")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        return MilvusClient(uri)
    except Exception as e:  # pymilvus raises its own MilvusException, or ConnectionError-like errors
        hint = ("another process has it open (milvus-lite locks its data folder): stop it, or serve the index "
                "from a Milvus server (`python -m index build --backend milvus --uri http://HOST:19530`)"
                if uri.endswith(".db") else "is the server running and reachable?")
        raise UserError(f"cannot open Milvus at {uri}: {str(e).strip().splitlines()[0][:200]}; {hint}") from e
    finally:
        quiet.setLevel(level)


def release(uri: str) -> None:
    """Stop the in-process milvus-lite server of an embedded data folder (and release its lock)."""
    if uri.endswith(".db"):
        try:
            from milvus_lite.server_manager import server_manager_instance
        except ImportError:
            return
        server_manager_instance.release_server(uri)


def create_collection(client, name: str, dim: int, index_type: str = "HNSW", m: int = 32,
                      ef_construction: int = 40) -> dict:
    """An ``id`` (INT64 primary key, ours) + ``vector`` (FLOAT_VECTOR, inner product) collection."""
    from pymilvus import DataType, MilvusClient

    if index_type not in INDEX_TYPES:
        raise UserError(f"Milvus index type {index_type!r} is not supported here: use one of {', '.join(INDEX_TYPES)}")
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(ID, DataType.INT64, is_primary=True)
    schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=int(dim))
    params = {"M": m, "efConstruction": ef_construction} if index_type == "HNSW" else {}
    index_params = client.prepare_index_params()
    index_params.add_index(VECTOR, index_type=index_type, metric_type="IP", params=params)
    client.create_collection(name, schema=schema, index_params=index_params)
    return {"index_type": index_type, "index_params": params}


def insert(client, name: str, x: np.ndarray, ids: np.ndarray, progress=None) -> None:
    x = np.asarray(x, dtype=np.float32)
    for i in range(0, len(ids), INSERT_BATCH):
        rows = [{ID: int(j), VECTOR: v} for j, v in zip(ids[i:i + INSERT_BATCH].tolist(),
                                                        x[i:i + INSERT_BATCH].tolist())]
        client.insert(name, rows)
        if progress is not None:
            progress(min(i + INSERT_BATCH, len(ids)))
    if hasattr(client, "flush"):
        client.flush(name)


def delete(client, name: str, ids) -> None:
    client.delete(name, ids=[int(i) for i in ids])
    if hasattr(client, "flush"):
        client.flush(name)


def load(client, name: str) -> None:
    """Load a collection for search and query (a reopened collection starts released)."""
    client.load_collection(name)


def count(client, name: str) -> int:
    return int(client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"])


def scan(client, name: str, with_vectors: bool = False, batch: int = 5000):
    """Every (ids, vectors or None) batch of a collection (``query_iterator``)."""
    fields = [ID, VECTOR] if with_vectors else [ID]
    it = client.query_iterator(name, batch_size=batch, filter="", output_fields=fields)
    try:
        while True:
            rows = it.next()
            if not rows:
                return
            ids = np.array([r[ID] for r in rows], dtype=np.int64)
            yield ids, (np.array([r[VECTOR] for r in rows], dtype=np.float32) if with_vectors else None)
    finally:
        it.close()


def search(client, name: str, xq: np.ndarray, k: int, params: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """FAISS-shaped results: scores (nq, k) float32 and ids (nq, k) int64, ``-1`` where fewer than k."""
    xq = np.asarray(xq, dtype=np.float32)
    res = client.search(name, data=xq.tolist(), limit=int(k), output_fields=[ID],
                        search_params={"metric_type": "IP", "params": dict(params or {})})
    scores = np.full((len(xq), k), -np.inf, dtype=np.float32)
    ids = np.full((len(xq), k), -1, dtype=np.int64)
    for r, hits in enumerate(res):
        for c, h in enumerate(hits[:k]):
            scores[r, c], ids[r, c] = h["distance"], h[ID] if ID in h else h["entity"][ID]
    return scores, ids


class MilvusIndex:
    """The FAISS-like view of a collection that :mod:`index.api` and :mod:`index.factory` use: ``d``,
    ``ntotal``, ``search(x, k)`` and, for HNSW, the ``efSearch`` knob (``search_param``)."""

    def __init__(self, folder: str | os.PathLike, cfg: dict, dim: int):
        self.uri, self.collection, self.d = location(folder, cfg), cfg["collection"], int(dim)
        self.index_type = cfg.get("index_type", "HNSW")
        self.search_param = "efSearch" if self.index_type == "HNSW" else None
        self.params: dict = {}
        self.client = connect(self.uri)
        if not self.client.has_collection(self.collection):
            self.close()
            raise UserError(f"Milvus at {self.uri} has no collection {self.collection!r}: rebuild the index")
        load(self.client, self.collection)
        self.ntotal = count(self.client, self.collection)

    def set_params(self, params: dict) -> None:
        for name, value in (params or {}).items():
            if name != self.search_param:
                raise ValueError(f"unknown search parameter {name!r} for a Milvus {self.index_type} index")
            self.params[name] = int(value)

    def search(self, xq: np.ndarray, k: int):
        p = {"ef": max(self.params["efSearch"], k)} if "efSearch" in self.params else {}  # Milvus wants ef >= k
        return search(self.client, self.collection, xq, k, p)

    def all_ids(self) -> np.ndarray:
        parts = [ids for ids, _ in scan(self.client, self.collection)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def close(self) -> None:
        if self.client is None:
            return
        try:
            self.client.close()
        finally:
            self.client = None
            release(self.uri)


# ------------------------------------------------------------------------------------------- building


def build_collection(folder: Path, x: np.ndarray, ids: np.ndarray, uri: str | None, name: str,
                     index_type: str = "HNSW", ef_construction: int = 40, progress=None) -> dict:
    """Create the collection of a new index folder (``folder``: the temp folder being built) and insert the
    vectors; returns the ``index.json`` entry ``milvus``."""
    version = new_version()
    cfg = {"uri": uri, "db": None if uri else embedded_name(version),
           "collection": f"{name}_{version}" if uri else name}
    client = connect(location(folder, cfg))
    try:
        if client.has_collection(cfg["collection"]):
            client.drop_collection(cfg["collection"])
        cfg.update(create_collection(client, cfg["collection"], x.shape[1], index_type,
                                     ef_construction=ef_construction))
        insert(client, cfg["collection"], x, ids, progress)
    finally:
        client.close()
        release(location(folder, cfg))
    return cfg


def new_version_of(base: Path, tmp: Path, cfg: dict, dim: int) -> dict:
    """A copy of an index's collection for a copy-on-write change: embedded, the data folder copied under a
    new name into ``tmp``; on a server, a new collection filled from the old one. Returns the new ``cfg``."""
    version = new_version()
    new = dict(cfg)
    if not cfg.get("uri"):
        new["db"] = embedded_name(version)
        shutil.copytree(base / cfg["db"], tmp / new["db"], ignore=shutil.ignore_patterns("LOCK"))
        return new
    stem = cfg["collection"].rsplit("_v", 1)[0]
    new["collection"] = f"{stem}_{version}"
    client = connect(cfg["uri"])
    try:
        params = cfg.get("index_params") or {}
        create_collection(client, new["collection"], dim, cfg.get("index_type", "HNSW"), params.get("M", 32),
                          params.get("efConstruction", 40))
        load(client, cfg["collection"])
        for ids, x in scan(client, cfg["collection"], with_vectors=True):
            insert(client, new["collection"], x, ids)
    finally:
        client.close()
    return new


def drop_old_versions(cfg: dict, previous: dict | None = None) -> None:
    """On a server: drop every version of this index's collection but the current one (``cfg``) and the one
    it replaced (``previous``, which readers of the old folder may still be searching); orphans of failed
    changes go too."""
    if not cfg.get("uri"):
        return
    stem = cfg["collection"].rsplit("_v", 1)[0]
    keep = {cfg["collection"], (previous or {}).get("collection")}
    client = connect(cfg["uri"])
    try:
        for c in client.list_collections():
            if c.rsplit("_v", 1)[0] == stem and c not in keep:
                client.drop_collection(c)
    finally:
        client.close()


def changed_version(base: Path, tmp: Path, cfg: dict, dim: int, add: tuple[np.ndarray, np.ndarray] | None = None,
                    remove: np.ndarray | None = None) -> tuple[dict, int]:
    """A new version of the collection (:func:`new_version_of`) with ``add`` = (vectors, ids) inserted and
    ``remove`` ids deleted; returns (its ``cfg``, its vector count). A failure drops the new version."""
    new = new_version_of(base, tmp, cfg, dim)
    uri = location(tmp, new)
    try:
        client = connect(uri)
        try:
            if add is not None and len(add[1]):
                insert(client, new["collection"], add[0], add[1])
            if remove is not None and len(remove):
                delete(client, new["collection"], remove)
            load(client, new["collection"])
            n = count(client, new["collection"])
        finally:
            client.close()
            release(uri)
    except BaseException:
        if new.get("uri"):
            drop_collection(new["uri"], new["collection"])
        raise
    return new, n
