"""The graph race: which HNSW vector format (fp32, fp16 or 8-bit codes) answers fastest at the target recall, on
this machine and these vectors. The candidates that fit the memory budget are built on the same sample, tuned to
the recall (:func:`index.factory.tune`) and timed side by side; ``index build`` keeps the fastest (whether 16-bit
decoding costs more than the memory traffic it saves depends on the CPU's SIMD path and memory bandwidth).
"""
from __future__ import annotations

import time

import numpy as np

from .factory import (HNSW_M, HNSW_MAX_N, add, estimate_memory, exact_knn, format_params, make_index, sample_rows,
                      search, train, train_size, tune)
from .graph import reorder_graph

RACE_TIE = 0.05  # p50 differences below this are timing noise: the smaller index wins
GRAPH_CANDIDATES = (f"HNSW{HNSW_M}", f"HNSW{HNSW_M},SQfp16", f"HNSW{HNSW_M},SQ8")


def graph_candidates(n: int, d: int, memory_budget: int) -> list[str]:
    """The HNSW variants (fp32, fp16 and 8-bit vectors) whose estimate fits the budget."""
    return [f for f in GRAPH_CANDIDATES if estimate_memory(f, n, d) <= memory_budget] if n <= HNSW_MAX_N else []


def race_graphs(x: np.ndarray, factories: list[str], k: int = 10, target: float = 0.95, sample: int = 50_000,
                n_queries: int = 300, rounds: int = 3, ef_construction: int = 40, seed: int = 0) -> dict:
    """Which graph is fastest *on this machine and these vectors* at the target recall: each factory is built
    on the same sample of ``x``, its ``efSearch`` tuned until recall@k reaches ``target`` on held-out queries
    (vectors of ``x`` outside the sample), then single queries are timed side by side (``rounds`` alternating
    rounds). Whether fp16 or SQ8 decoding costs more than the memory traffic it saves depends on the CPU's
    SIMD path and memory bandwidth, so the choice is measured, not assumed. Returns the report (``picked``:
    the fastest that reached the target, else the one with the highest recall)."""
    n = len(x)
    rows = sample_rows(n, min(n, sample + n_queries), seed + 7)
    rng = np.random.default_rng(seed + 7)
    rng.shuffle(rows)
    nq = min(n_queries, max(1, len(rows) // 10))
    q_rows, b_rows = np.sort(rows[:nq]), np.sort(rows[nq:])
    xb, xq = np.ascontiguousarray(x[b_rows], np.float32), np.ascontiguousarray(x[q_rows], np.float32)
    _, truth = exact_knn(xq, xb, min(k, len(xb)))
    ids = np.arange(len(xb), dtype=np.int64)
    built = {}
    for f in factories:
        index = make_index(f, xb.shape[1])
        train(index, xb[sample_rows(len(xb), train_size(f, len(xb)), seed)], ef_construction)
        add(index, xb, ids)
        reorder_graph(index)
        res = tune(index, xq, truth, min(k, len(xb)), target)
        built[f] = (index, res)
    times: dict[str, list[float]] = {f: [] for f in factories}
    for r in range(rounds):
        for f in (factories if r % 2 == 0 else factories[::-1]):
            index = built[f][0]
            for q in xq:
                t = time.perf_counter()
                search(index, q[None], k)
                times[f].append((time.perf_counter() - t) * 1e3)
    report = [{"factory": f, "params": built[f][1].params, "recall": round(built[f][1].recall, 4),
               "reached": built[f][1].reached, "p50_ms": round(float(np.median(times[f])), 4)} for f in factories]
    reached = [c for c in report if c["reached"]]
    if reached:  # the fastest; within ``TIE`` of it (timing noise), the one that takes the least memory
        fastest = min(c["p50_ms"] for c in reached)
        close = [c for c in reached if c["p50_ms"] <= fastest * (1 + RACE_TIE)]
        best = min(close, key=lambda c: estimate_memory(c["factory"], n, x.shape[1]))
    else:
        best = max(report, key=lambda c: c["recall"])
    why = (f"fastest single query at recall@{k} >= {target} on a {len(xb)}-vector sample ({len(xq)} held-out "
           f"queries x {rounds} rounds; within {RACE_TIE:.0%} of the fastest, the smallest)" if reached else
           f"no candidate reached recall@{k} {target} on the sample: the one with the highest recall")
    return {"picked": best["factory"], "why": why, "sample": int(len(xb)), "queries": int(len(xq)),
            "rounds": rounds, "candidates": report}


def format_race(race: dict) -> str:
    """One line per :func:`race_graphs` report: each candidate's tuned knob, recall and p50."""
    return "; ".join(f"{c['factory']} {format_params(c['params'])} recall {c['recall']:.3f} p50 {c['p50_ms']:.3f} ms"
                     for c in race["candidates"])
