"""The memory layout of an HNSW graph index (inside ``IndexIDMap``/``IndexIDMap2``): the order of its rows and
the table from rows to our ids.

* :func:`reorder_graph` renumbers the rows breadth-first over the level-0 graph from the entry point
  (:func:`bfs_order` over :func:`graph_neighbours`, applied by :func:`permute_rows`): graph reordering,
  Coleman et al., 2022, "Graph Reordering for Cache-Efficient Near Neighbor Search". Same results.
* :func:`graph_and_ids` gives ``index.factory.search`` the graph and a row -> id table, so a single query
  searches the graph directly instead of through ``IndexIDMap``'s OpenMP label loop.
"""
from __future__ import annotations

import weakref

import numpy as np


def graph_neighbours(hnsw_index) -> np.ndarray:
    """Level-0 adjacency of an ``IndexHNSW``: (N, 2M) int32 row numbers, -1 for an empty slot."""
    import faiss

    h = hnsw_index.hnsw
    nb = faiss.vector_to_array(h.neighbors)
    offsets = faiss.vector_to_array(h.offsets).astype(np.int64)[:-1]  # (N,) start of each row's links
    width = int(faiss.vector_to_array(h.cum_nneighbor_per_level)[1])  # 2M slots at level 0
    return nb[offsets[:, None] + np.arange(width)[None, :]]  # (N, 2M)


def bfs_order(neighbours: np.ndarray, start: int) -> np.ndarray:
    """Rows in breadth-first order from ``start`` over the adjacency ``neighbours`` (N, W); rows it does
    not reach follow, each unreached component searched from its smallest row. Within one BFS level, rows
    keep the order in which the previous level first names them. Returns a permutation of 0..N-1."""
    n = len(neighbours)
    seen = np.zeros(n, dtype=bool)
    order, done = [], 0
    while True:
        frontier = np.array([start], dtype=np.int64)
        seen[start] = True
        while len(frontier):
            order.append(frontier)
            done += len(frontier)
            cand = neighbours[frontier].ravel()  # in visiting order
            cand = cand[cand >= 0]
            cand = cand[~seen[cand]]
            rows, first = np.unique(cand, return_index=True)
            frontier = rows[np.argsort(first, kind="stable")].astype(np.int64)
            seen[frontier] = True
        if done == n:
            return np.concatenate(order)
        start = int(np.argmin(seen))  # the first row not reached yet


def id_mapped_graph(index):
    """``(the IndexHNSW, the id map vector)`` of an ``IndexIDMap``/``IndexIDMap2`` around HNSW, else None."""
    import faiss

    id_map = getattr(index, "id_map", None)
    inner = faiss.downcast_index(index.index) if id_map is not None else None
    return (inner, id_map) if isinstance(inner, faiss.IndexHNSW) else None


def permute_rows(index, order: np.ndarray) -> None:
    """Move row ``order[r]`` of an id-mapped HNSW index to row ``r``: vectors, links and ids together
    (``IndexHNSW.permute_entries`` + the id map + IDMap2's reverse map), so every result stays the same."""
    import faiss

    inner, id_map = id_mapped_graph(index)
    ids = faiss.vector_to_array(id_map)
    inner.permute_entries(np.ascontiguousarray(order, dtype=np.int64))
    faiss.copy_array_to_vector(np.ascontiguousarray(ids[order]), id_map)
    if isinstance(index, faiss.IndexIDMap2):
        index.construct_rev_map()
    _GRAPH_IDS.pop(index, None)


def reorder_graph(index) -> bool:
    """Renumber the rows of an HNSW index (inside ``IndexIDMap``/``IndexIDMap2``) in breadth-first order
    of its level-0 graph from the entry point, so that a search's next hops mostly lie near each other in
    memory (graph reordering, Coleman et al. 2022, "Graph Reordering for Cache-Efficient Near Neighbor
    Search"). The ids, the links and hence every search result stay the same; only where the vectors
    and their links sit changes. Returns False (and does nothing) for other indexes."""
    found = id_mapped_graph(index)
    if found is None or found[0].ntotal < 2:
        return False
    permute_rows(index, bfs_order(graph_neighbours(found[0]), int(found[0].hnsw.entry_point)))
    return True


_GRAPH_IDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # faiss objects refuse new attributes
_NOT_GRAPH = ()


def graph_and_ids(index):
    """(the HNSW graph, the int64 id of each of its rows followed by -1) when ``index`` is an ``IndexIDMap``
    around HNSW, else None. The trailing -1 makes ``ids[rows]`` map faiss's "no result" row -1 to id -1
    with no test. Cached per index object; the table is re-read when the graph has grown (HNSW only grows:
    removals are tombstones)."""
    import faiss

    cached = _GRAPH_IDS.get(index)
    if cached is _NOT_GRAPH:
        return None
    if cached is not None and len(cached[1]) == cached[0].ntotal + 1:
        return cached
    found = id_mapped_graph(index)
    if found is not None:
        inner, id_map = found
        cached = (inner, np.append(faiss.vector_to_array(id_map).astype(np.int64, copy=False), np.int64(-1)))
    else:
        cached = _NOT_GRAPH
    _GRAPH_IDS[index] = cached
    return None if cached is _NOT_GRAPH else cached
