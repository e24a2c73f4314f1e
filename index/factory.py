"""Choosing, training and tuning a FAISS inner-product index: small pure functions on numpy arrays.

* :func:`choose_factory` picks a factory string from the number of vectors, their dimension and a memory
  budget: ``Flat`` (exact) for small collections, ``HNSW32,SQfp16`` (the graph over 16-bit float
  vectors) when it fits, ``IVF{k},Flat`` or ``HNSW32,SQ8`` (8-bit codes) when only less fits, and
  ``OPQ{m},IVF{k},PQ{m}`` (m bytes a vector) when nothing else does. The on-disk path uses
  ``IVF{k},Flat`` (RAM holds only the centroids).
* :func:`estimate_memory` is the estimate the choice compares against the budget.
* :func:`index.race.race_graphs` settles the graph's vector format by measurement (fp32, fp16 or SQ8 vectors).
* :func:`make_index` builds it with the inner-product metric; non-IVF indexes are wrapped in
  ``IndexIDMap2`` so they take our int64 ids (IVF stores ids itself).
* :func:`index.graph.reorder_graph` (run by every graph build) renumbers an HNSW index's rows breadth-first
  over its graph (same results, better memory locality).
* :func:`tune` raises ``efSearch`` / ``nprobe`` until recall@k against exact search (:func:`exact_knn`,
  ``IndexFlatIP`` semantics) reaches a target, on held-out queries; :func:`recall_at_k` is the measure.
"""
from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import dataclass, field

import numpy as np

from .graph import graph_and_ids

FLAT_MAX_N = 50_000
HNSW_MAX_N = 50_000_000
HNSW_M = 32
IDMAP2_BYTES = 48  # id array + reverse hash map entry per vector, roughly
EF_SEARCH_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048)
NPROBE_GRID = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048, 4096, 8192)
PQ_M_CANDIDATES = (128, 96, 64, 48, 32, 24, 16, 8, 4)


def nlist_for(n: int) -> int:
    """Inverted lists for ``n`` vectors: about 4 sqrt(n) (a power of 2), with >= 39 training points each."""
    k = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    k = min(k, 65536, max(1, n // 39))
    return max(1, 2 ** int(math.log2(max(1, k))))


def _parse(factory: str) -> dict:
    f = factory.replace(" ", "")
    out: dict = {"factory": f}
    if m := re.search(r"HNSW(\d+)", f):
        out["hnsw"] = int(m.group(1))
    if m := re.search(r"IVF(\d+)", f):
        out["ivf"] = int(m.group(1))
    if m := re.search(r"(?<!O)PQ(\d+)(x(\d+))?", f):
        out["pq_bytes"] = int(m.group(1)) * int(m.group(3) or 8) / 8
    if m := re.match(r"OPQ(\d+)(_(\d+))?,", f):
        out["opq"] = int(m.group(3) or 0)
    if "SQ8" in f:
        out["sq_bytes_per_dim"] = 1
    elif "SQfp16" in f or "SQ16" in f:
        out["sq_bytes_per_dim"] = 2
    elif "SQ4" in f:
        out["sq_bytes_per_dim"] = 0.5
    if re.search(r"(,|^)(Flat)$", f) or f == "Flat":
        out["flat"] = True
    if "RFlat" in f or "Refine(Flat)" in f:
        out["refine_bytes"] = None  # filled with 4 d below
    return out


def estimate_memory(factory: str, n: int, d: int) -> int:
    """Rough bytes of RAM an index of ``n`` vectors of dimension ``d`` takes (codes + graph + ids + tables)."""
    p = _parse(factory)
    if "pq_bytes" in p:
        code = p["pq_bytes"]
    elif "sq_bytes_per_dim" in p:
        code = p["sq_bytes_per_dim"] * d
    else:
        code = 4 * d
    per = code
    if "refine_bytes" in p:
        per += 4 * d
    fixed = 0
    if "ivf" in p:
        per += 8 + 4  # id + list overhead
        fixed += p["ivf"] * d * 4  # centroids
    else:
        per += IDMAP2_BYTES
    if "hnsw" in p:
        per += p["hnsw"] * 2 * 4 * 1.07 + 16  # level-0 links (2M int32) + upper levels + offsets
    if "opq" in p:
        fixed += d * d * 4
    return int(n * per + fixed)


def choose_factory(n: int, d: int, memory_budget: int, on_disk: bool = False) -> str:
    """A factory string for ``n`` vectors of dimension ``d`` whose estimate fits ``memory_budget`` bytes."""
    if n <= 0:
        raise ValueError("cannot build an index of 0 vectors")
    k = nlist_for(n)
    if on_disk:
        return f"IVF{k},Flat"
    if n < FLAT_MAX_N and estimate_memory("Flat", n, d) <= memory_budget:
        return "Flat"
    candidates = []
    if n <= HNSW_MAX_N:
        # fp16 vectors, not fp32: a graph search is bound by fetching the vectors it visits, so at equal
        # efSearch half the bytes is faster (N = 100k, d = 512, 1 thread: p50 0.146-0.168 vs 0.162-0.184
        # ms at efSearch 12-14) for the same recall@10 to 3 decimals, in half the memory.
        candidates.append(f"HNSW{HNSW_M},SQfp16")
    candidates.append(f"IVF{k},Flat")
    if n <= HNSW_MAX_N:
        candidates.append(f"HNSW{HNSW_M},SQ8")
    for f in candidates:
        if estimate_memory(f, n, d) <= memory_budget:
            return f
    pq = [f"OPQ{m},IVF{k},PQ{m}" for m in PQ_M_CANDIDATES if d % m == 0] or [f"IVF{k},PQ1"]
    for f in pq:
        if estimate_memory(f, n, d) <= memory_budget:
            return f
    smallest = pq[-1]
    raise ValueError(f"no index of {n} vectors of dimension {d} fits in {memory_budget / 2**20:.0f} MiB "
                     f"(the smallest, {smallest}, needs about {estimate_memory(smallest, n, d) / 2**20:.0f} MiB): "
                     "raise --max-memory or use --on-disk")


def format_params(params: dict) -> str:
    """``{"efSearch": 16}`` -> ``efSearch=16``."""
    return ",".join(f"{k}={v}" for k, v in (params or {}).items())


# ------------------------------------------------------------------------------------------- building


def make_index(factory: str, d: int):
    """An empty inner-product index; non-IVF ones wrapped in ``IndexIDMap2`` (they take explicit ids)."""
    import faiss

    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"faiss cannot build factory {factory!r} for dimension {d}: {str(e).splitlines()[-1]}") \
            from e
    if ivf_of(index) is None:
        index = faiss.IndexIDMap2(index)
    return index


def is_faiss(index) -> bool:
    """A FAISS index (else another backend's object with the same ``search``/``ntotal``/``d``)."""
    import faiss

    return isinstance(index, faiss.Index)


def ivf_of(index):
    """The ``IndexIVF`` inside ``index`` (through pre-transforms / refine / id maps), or None."""
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def hnsw_of(index):
    """The ``IndexHNSW`` inside ``index``, or None."""
    import faiss

    index = faiss.downcast_index(index)
    while True:
        if isinstance(index, faiss.IndexHNSW):
            return index
        inner = getattr(index, "index", None) or getattr(index, "base_index", None)
        if inner is None:
            return None
        index = faiss.downcast_index(inner)


def sample_rows(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``min(n, size)`` distinct rows, reproducibly."""
    size = min(n, size)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False)) if size < n else np.arange(n)


def train_size(factory: str, n: int) -> int:
    p = _parse(factory)
    size = 0
    if "ivf" in p:
        size = max(size, 64 * p["ivf"])
    if "pq_bytes" in p or "opq" in p or "sq_bytes_per_dim" in p:
        size = max(size, 65_536)
    return min(n, max(size, 0))


def train(index, x: np.ndarray, ef_construction: int | None = None) -> float:
    """Train ``index`` on ``x`` (float32) if it needs it; returns seconds spent."""
    t = time.perf_counter()
    hnsw = hnsw_of(index)
    if hnsw is not None and ef_construction:
        hnsw.hnsw.efConstruction = ef_construction
    if not index.is_trained:
        index.train(np.ascontiguousarray(x, dtype=np.float32))
    return time.perf_counter() - t


ADD_ROWS = 65_536
HNSW_ADD_BYTES = 1 << 30


def add(index, x: np.ndarray, ids: np.ndarray, batch: int | None = None, progress=None) -> None:
    """Add vectors with explicit int64 ids, in batches (default ADD_ROWS rows; on HNSW, 1 GiB of vectors).

    HNSW gets large batches because faiss inserts the points of one ``add`` call level by level, top
    level first, across the whole call: a graph added in a few large calls has a better hierarchy than
    one added in many small ones (at N = 1M, 2 calls instead of 16 raised recall@10 at efSearch 14 from
    0.955 to 0.959; autofaiss adds in 3 calls)."""
    if batch is None:
        batch = ADD_ROWS if hnsw_of(index) is None else max(ADD_ROWS, HNSW_ADD_BYTES // (4 * x.shape[1]))
    for i in range(0, len(x), batch):
        index.add_with_ids(np.ascontiguousarray(x[i:i + batch], dtype=np.float32),
                           np.ascontiguousarray(ids[i:i + batch], dtype=np.int64))
        if progress is not None:
            progress(min(len(x), i + batch))


# --------------------------------------------------------------------------------------------- search


def exact_knn(xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k (scores, row numbers): the ``IndexFlatIP`` reference."""
    import faiss

    return faiss.knn(np.ascontiguousarray(xq, dtype=np.float32), np.ascontiguousarray(xb, dtype=np.float32), k,
                     metric=faiss.METRIC_INNER_PRODUCT)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:k] ∩ truth[:k]| / k (ids; -1 = no result and repeats never counted)."""
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    if found.shape[0] != truth.shape[0]:
        raise ValueError(f"{found.shape[0]} result rows vs {truth.shape[0]} ground-truth rows")
    if found.size == 0:
        return 0.0
    hit = ((found[:, :, None] == truth[:, None, :]) & (found[:, :, None] >= 0)).any(axis=2)
    earlier = np.tril(np.ones((found.shape[1], found.shape[1]), dtype=bool), -1)  # [j, i]: i before j
    repeat = ((found[:, :, None] == found[:, None, :]) & earlier).any(axis=2)
    return float((hit & ~repeat).sum() / (found.shape[0] * k))


def drop_self(ids: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """Each row's first ``k`` ids other than the query's own (queries taken from the database)."""
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for r, (row, own) in enumerate(zip(ids, self_ids)):
        kept = row[row != own][:k]
        out[r, :len(kept)] = kept
    return out


def search_param_name(index) -> str | None:
    """The knob trading speed for recall: ``efSearch`` (HNSW), ``nprobe`` (IVF), or None (exact)."""
    if not is_faiss(index):  # another backend (index.milvus.MilvusIndex) names its own knob
        return index.search_param
    if hnsw_of(index) is not None:
        return "efSearch"
    if ivf_of(index) is not None:
        return "nprobe"
    return None


def set_search_params(index, params: dict) -> None:
    if not is_faiss(index):
        index.set_params(params)
        return
    for name, value in (params or {}).items():
        if name == "efSearch":
            hnsw_of(index).hnsw.efSearch = int(value)
        elif name == "nprobe":
            ivf_of(index).nprobe = int(value)
        else:
            raise ValueError(f"unknown search parameter {name!r}")


def param_values(index, k: int) -> list[int]:
    name = search_param_name(index)
    if name == "efSearch":
        return [v for v in EF_SEARCH_GRID if v >= k]
    if name == "nprobe":
        nlist = ivf_of(index).nlist
        return [v for v in NPROBE_GRID if v < nlist] + [nlist]
    return []


SMALL_BATCH = 8


def threads_for(index, nq: int) -> int | None:
    """OpenMP threads for a search of ``nq`` queries: 1 for a small batch (a single HNSW/IVF query is not
    parallelised anyway, but ``IndexIDMap``'s label loop and the flat scan open OpenMP regions whose thread
    wake-up costs milliseconds when the other cores are busy: HNSW32 8 ms vs 0.1 ms, Flat 30k x 512
    24 ms vs 3.4 ms measured here); None (keep faiss's default) for batches."""
    return 1 if nq < SMALL_BATCH else None


@contextlib.contextmanager
def omp_threads(n: int | None):
    """Temporarily set faiss's OpenMP thread count (``None``: leave it)."""
    import faiss

    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def search(index, xq: np.ndarray, k: int):
    """``index.search`` with the thread policy of :func:`threads_for`. A small batch on HNSW inside an
    id map searches the graph directly and maps rows to ids here: ``IndexIDMap``'s label loop is an
    OpenMP region (a thread wake-up per query) that a graph search of one query does not otherwise open.
    This path is a few microseconds of Python on top of the graph search (``benchmarks/search.py``
    measures both): it is what every CLI query pays."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    if not is_faiss(index):
        return index.search(xq, k)
    if len(xq) < SMALL_BATCH:
        fast = graph_and_ids(index)
        if fast is not None:
            scores, rows = fast[0].search(xq, k)
            return scores, fast[1][rows]  # row -1 (fewer than k results) -> the trailing -1
    with omp_threads(threads_for(index, len(xq))):
        return index.search(xq, k)


@dataclass
class Tuning:
    params: dict
    recall: float
    reached: bool
    tried: list = field(default_factory=list)  # (value, recall, ms per query in a batch)


def tune(index, xq: np.ndarray, truth_ids: np.ndarray, k: int = 10, target: float = 0.95,
         self_ids: np.ndarray | None = None) -> Tuning:
    """Smallest ``efSearch``/``nprobe`` whose recall@k vs ``truth_ids`` reaches ``target``.

    ``truth_ids``: exact top-k ids (top-(k+1) with ``self_ids``, the queries' own ids, which are then
    left out of both sides: queries sampled from the database measure their other neighbours)."""
    name = search_param_name(index)
    extra = 1 if self_ids is not None else 0
    truth = drop_self(truth_ids, self_ids, k) if self_ids is not None else truth_ids

    def measure() -> tuple[float, float]:
        t = time.perf_counter()
        _, found = index.search(np.ascontiguousarray(xq, dtype=np.float32), k + extra)
        ms = (time.perf_counter() - t) * 1e3 / max(1, len(xq))
        if self_ids is not None:
            found = drop_self(found, self_ids, k)
        return recall_at_k(found, truth, k), ms

    if name is None:
        r, ms = measure()
        return Tuning({}, r, r >= target, [(None, r, ms)])
    tried = []
    for v in param_values(index, k):
        set_search_params(index, {name: v})
        r, ms = measure()
        tried.append((v, r, ms))
        if r >= target:
            return Tuning({name: v}, r, True, tried)
    best = max(tried, key=lambda t: t[1])
    set_search_params(index, {name: best[0]})
    return Tuning({name: best[0]}, best[1], False, tried)
