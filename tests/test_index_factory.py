"""index.factory / index.common: recall vs brute force, chosen indexes vs exact IndexFlatIP, stable ids."""
import faiss
import numpy as np
import pytest

from index import factory as fx
from index import graph
from index.race import GRAPH_CANDIDATES, RACE_TIE, graph_candidates, race_graphs
from index.build import build_index
from index.common import UserError, ids_for_keys, key_to_id, parse_memory


def _data(n=4000, d=32, nq=200, seed=0):
    """Normalised vectors around 40 centres (embedding-like: clustered, not separable)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, d))
    x = centres[rng.integers(0, 40, n + nq)] + 0.8 * rng.normal(size=(n + nq, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x[:n], x[n:]


def _brute_recall(found, truth, k):
    total = 0
    for f, t in zip(found, truth):
        total += len({int(i) for i in f[:k] if i >= 0} & {int(i) for i in t[:k]})
    return total / (len(found) * k)


def test_recall_at_k_matches_brute_force():
    rng = np.random.default_rng(1)
    for k in (1, 5, 10):
        truth = np.stack([rng.permutation(50)[:k] for _ in range(30)])
        found = np.where(rng.random((30, k)) < 0.3, -1, rng.integers(0, 50, (30, k)))
        found[:5] = truth[:5]
        assert fx.recall_at_k(found, truth, k) == pytest.approx(_brute_recall(found, truth, k))
    assert fx.recall_at_k(truth, truth, k) == 1.0


def test_exact_knn_is_index_flat_ip():
    xb, xq = _data(500, 16, 20)
    scores, rows = fx.exact_knn(xq, xb, 10)
    flat = faiss.IndexFlatIP(16)
    flat.add(xb)
    d2, i2 = flat.search(xq, 10)
    ref = np.argsort(-(xq @ xb.T), axis=1)[:, :10]
    assert np.array_equal(rows, i2) and np.array_equal(rows, ref)
    assert np.allclose(scores, d2, atol=1e-5)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "HNSW32,SQfp16", "IVF32,Flat", "HNSW32,SQ8"])
def test_tuned_index_vs_exact_flat_ip(factory):
    xb, xq = _data()
    ids = np.array([key_to_id(f"k{i}") for i in range(len(xb))], dtype=np.int64)
    index, report = build_index(xb, ids, factory, target_recall=0.95, n_queries=200, progress=False)
    assert report["reached"] and report["recall"] >= 0.95
    # fresh queries, tuned parameters, against an exact IndexFlatIP brute force
    flat = faiss.IndexFlatIP(xb.shape[1])
    flat.add(xb)
    _, rows = flat.search(xq, 10)
    _, found = index.search(xq, 10)
    recall = fx.recall_at_k(found, ids[rows], 10)
    assert recall == pytest.approx(_brute_recall(found, ids[rows], 10))
    assert recall >= (1.0 if factory == "Flat" else 0.9), (factory, report["params"], recall)
    # returned ids are ours (not row numbers), scores are inner products
    scores, found = index.search(xq[:3], 3)
    pos = {int(i): r for r, i in enumerate(ids)}
    for srow, irow, q in zip(scores, found, xq[:3]):
        for s, i in zip(srow, irow):
            assert s == pytest.approx(float(xb[pos[int(i)]] @ q), abs={"SQ8": 0.02, "SQfp16": 1e-3}.get(factory.partition(",")[2], 1e-4))


def test_tune_raises_the_knob_until_the_target():
    xb, xq = _data(3000, 32, 100, seed=3)
    ids = np.arange(len(xb), dtype=np.int64) * 3 + 1
    index = fx.make_index("IVF64,Flat", 32)
    fx.train(index, xb)
    fx.add(index, xb, ids)
    _, rows = fx.exact_knn(xq, xb, 10)
    res = fx.tune(index, xq, ids[rows], 10, 0.99)
    values = [v for v, _, _ in res.tried]
    assert values == sorted(values) and res.params["nprobe"] == values[-1] and res.reached
    assert all(r < 0.99 for _, r, _ in res.tried[:-1])
    assert fx.ivf_of(index).nprobe == res.params["nprobe"]
    impossible = fx.tune(index, xq, ids[rows][:, ::-1] * 0 + 999_999, 10, 0.5)  # never reachable
    assert not impossible.reached and impossible.recall == 0.0


def test_choose_factory_by_size_and_memory():
    gib = 1 << 30
    assert fx.choose_factory(10_000, 512, 4 * gib) == "Flat"
    assert fx.choose_factory(1_000_000, 512, 4 * gib) == "HNSW32,SQfp16"
    assert fx.choose_factory(1_000_000, 512, 1 * gib) == "HNSW32,SQ8"
    small = fx.choose_factory(1_000_000, 512, 256 << 20)
    assert small.startswith("OPQ") and ",IVF4096,PQ" in small
    assert fx.estimate_memory(small, 1_000_000, 512) <= 256 << 20
    assert fx.choose_factory(1_000_000, 512, 64 * gib, on_disk=True) == "IVF4096,Flat"
    with pytest.raises(ValueError, match="--max-memory"):
        fx.choose_factory(10_000_000, 512, 1 << 20)
    assert fx.nlist_for(1_000_000) == 4096 and fx.nlist_for(100) == 2
    # the estimate is close to what faiss really takes
    xb, _ = _data(5000, 64, 1)
    for f in ("Flat", "HNSW32", "HNSW32,SQfp16"):
        index = fx.make_index(f, 64)
        fx.add(index, xb, np.arange(5000, dtype=np.int64))
        real = faiss.serialize_index(index).nbytes
        assert 0.6 < fx.estimate_memory(f, 5000, 64) / real < 1.6, (f, real)


def test_ids_are_stable_63_bit_and_collisions_are_caught(monkeypatch):
    assert key_to_id("1f431") == key_to_id("1f431") == 3789487823935046315
    ids = ids_for_keys([f"key{i}" for i in range(10_000)])
    assert ids.dtype == np.int64 and (ids >= 0).all() and len(np.unique(ids)) == 10_000
    with pytest.raises(UserError, match="more than once"):
        ids_for_keys(["a", "b", "a"])
    import index.common as common

    monkeypatch.setattr(common, "key_to_id", lambda key: 42)
    with pytest.raises(UserError, match="collision.*'a'.*'b'"):
        ids_for_keys(["a", "b"])


def test_parse_memory():
    assert parse_memory("4G") == 4 << 30 and parse_memory("512M") == 512 << 20 and parse_memory("1.5GB") == 3 << 29
    assert parse_memory("2GiB") == 2 << 30 and parse_memory(1000) == 1000
    for bad in ("lots", "0", "-1G"):
        with pytest.raises(UserError):
            parse_memory(bad)


def test_small_batch_fast_path_on_hnsw_equals_the_id_map_search():
    """fx.search on IndexIDMap2(HNSW) with < SMALL_BATCH queries goes to the graph and maps rows to ids
    itself: same scores and ids as faiss's own IndexIDMap2.search, -1 kept, and new ids seen after an add."""
    x, xq = _data(n=500)
    ids = np.random.default_rng(1).integers(0, 2**62, len(x)).astype(np.int64)
    index = fx.make_index("HNSW32", x.shape[1])
    index.add_with_ids(x, ids)
    fx.set_search_params(index, {"efSearch": 32})
    for q in (xq[:1], xq[:3], xq[:50]):  # 50: the batch path
        got, want = fx.search(index, q, 10), index.search(q, 10)
        assert np.array_equal(got[1], want[1]) and np.allclose(got[0], want[0])
    tiny = fx.make_index("HNSW32", x.shape[1])
    tiny.add_with_ids(x[:4], ids[:4])
    d, i = fx.search(tiny, xq[:1], 8)
    assert sorted(i[0][:4]) == sorted(ids[:4]) and (i[0][4:] == -1).all()
    tiny.add_with_ids(x[4:6], np.array([7, 8], dtype=np.int64))  # the id table follows the graph's growth
    assert set(fx.search(tiny, xq[:1], 8)[1][0][:6]) == set(ids[:4]) | {7, 8}


def _bfs_reference(neighbours, start):
    """Plain-Python BFS (a deque), the reference for graph.bfs_order: each row's unseen neighbours are queued
    in link order; unreached rows restart from the smallest one."""
    from collections import deque

    n, seen, order = len(neighbours), set(), []
    while len(order) < n:
        queue = deque([start])
        seen.add(start)
        while queue:
            row = queue.popleft()
            order.append(row)
            for nb in neighbours[row]:
                if nb >= 0 and nb not in seen:
                    seen.add(int(nb))
                    queue.append(int(nb))
        start = min(set(range(n)) - seen, default=None)
    return np.array(order)


def test_bfs_order_equals_a_plain_bfs():
    rng = np.random.default_rng(3)
    for n, w in ((1, 2), (7, 3), (300, 6)):
        nb = rng.integers(-1, n, (n, w)).astype(np.int32)
        nb[n // 2:, :] = np.where(nb[n // 2:] < n // 2, -1, nb[n // 2:])  # the second half never links back
        got = graph.bfs_order(nb, start=n // 2)
        assert np.array_equal(got, _bfs_reference(nb, n // 2))
        assert np.array_equal(np.sort(got), np.arange(n))


@pytest.mark.parametrize("factory", ["HNSW32", "HNSW32,SQfp16"])
def test_reorder_graph_keeps_every_result_and_id(factory):
    """After renumbering the rows breadth-first, the same queries give the same ids and scores (through
    faiss's id map and through fx.search's graph path), ids still reconstruct their own vectors, and the
    level-0 links are the old links renamed."""
    x, xq = _data(n=3000)
    ids = np.random.default_rng(2).integers(0, 2**62, len(x)).astype(np.int64)
    index = fx.make_index(factory, x.shape[1])
    fx.train(index, x)
    fx.add(index, x, ids)
    fx.set_search_params(index, {"efSearch": 24})
    want_d, want_i = index.search(xq, 10)
    want_one = fx.search(index, xq[:1], 10)  # caches the old row -> id table, which reordering must drop
    inner = fx.hnsw_of(index)
    old_links = graph.graph_neighbours(inner)
    old_entry = inner.hnsw.entry_point
    assert graph.reorder_graph(index)
    order = graph.bfs_order(old_links, old_entry)
    assert inner.hnsw.entry_point == 0
    new_links = graph.graph_neighbours(inner)
    rename = np.empty(len(order), dtype=np.int64)
    rename[order] = np.arange(len(order))
    assert np.array_equal(new_links, np.where(old_links[order] >= 0, rename[old_links[order]], -1))
    assert np.array_equal(faiss.vector_to_array(index.id_map), ids[order])
    got_d, got_i = index.search(xq, 10)
    assert np.array_equal(got_i, want_i) and np.allclose(got_d, want_d, atol=1e-6)
    got_one = fx.search(index, xq[:1], 10)
    assert np.array_equal(got_one[1], want_one[1]) and np.allclose(got_one[0], want_one[0], atol=1e-6)
    tol = 1e-2 if "SQfp16" in factory else 1e-6
    assert np.allclose(index.reconstruct(int(ids[123])), x[123], atol=tol)  # IDMap2's reverse map rebuilt
    assert not graph.reorder_graph(fx.make_index("Flat", 8)) and not graph.reorder_graph(faiss.IndexHNSWFlat(8, 8))


def test_benchmark_insertion_order_copy_undoes_the_reordering():
    """benchmarks/search.py's "insertion order" row times this copy: it must be the graph as added."""
    from benchmarks.search import insertion_order_copy

    x, xq = _data(n=1500)
    index = fx.make_index("HNSW32,SQfp16", x.shape[1])
    fx.train(index, x)
    fx.add(index, x, np.arange(len(x), dtype=np.int64))  # the benchmark's ids: insertion order
    added_links, added_entry = graph.graph_neighbours(fx.hnsw_of(index)).copy(), fx.hnsw_of(index).hnsw.entry_point
    fx.set_search_params(index, {"efSearch": 16})
    want = index.search(xq, 10)
    assert graph.reorder_graph(index)
    plain = insertion_order_copy(index)
    assert np.array_equal(faiss.vector_to_array(plain.id_map), np.arange(len(x)))
    assert np.array_equal(graph.graph_neighbours(fx.hnsw_of(plain)), added_links)
    assert fx.hnsw_of(plain).hnsw.entry_point == added_entry
    got = plain.search(xq, 10)
    assert np.array_equal(got[1], want[1]) and np.allclose(got[0], want[0], atol=1e-6)
    assert np.allclose(plain.reconstruct(7), x[7], atol=1e-2)


def test_race_graphs_picks_the_fastest_that_reaches_the_target():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rep = race_graphs(x, list(GRAPH_CANDIDATES), k=10, target=0.9, sample=2500, n_queries=100, rounds=2)
    assert rep["sample"] == 2500 and rep["queries"] == 100
    assert [c["factory"] for c in rep["candidates"]] == list(GRAPH_CANDIDATES)
    reached = [c for c in rep["candidates"] if c["reached"]]
    assert reached and all(c["recall"] >= 0.9 for c in reached)
    fastest = min(c["p50_ms"] for c in reached)
    close = [c["factory"] for c in reached if c["p50_ms"] <= fastest * (1 + RACE_TIE)]
    smallest = min(close, key=lambda f: fx.estimate_memory(f, 3000, 32))
    assert rep["picked"] == smallest  # the fastest, or a smaller one within the noise margin of it
    assert graph_candidates(1_000_000, 512, 1 << 30) == ["HNSW32,SQ8"]  # only 8-bit codes fit 1 GiB


def test_build_records_the_race(emb, tmp_path, monkeypatch):
    import json

    from index.build import run_build

    monkeypatch.setattr(fx, "FLAT_MAX_N", 50)  # the 98-vector set counts as large: a graph is chosen
    info = run_build(str(emb), str(tmp_path / "idx"), onnx=False, progress=False)
    race = info["factory_race"]
    assert info["factory"] == race["picked"] in GRAPH_CANDIDATES and len(race["candidates"]) == 3
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["factory_race"] == race
    info = run_build(str(emb), str(tmp_path / "norace"), onnx=False, progress=False, race=False)
    assert info["factory"] == "HNSW32,SQfp16" and "factory_race" not in info


def test_build_tunes_on_given_queries_outside_the_database():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4000, 32)).astype(np.float32)
    xt = rng.standard_normal((200, 32)).astype(np.float32)  # neither database vectors nor reported queries
    index, report = build_index(x, np.arange(4000, dtype=np.int64) + 7, "HNSW32", 0.9, 10, progress=False,
                                tune_queries=xt)
    assert report["tune_on"] == "external queries" and report["tune_queries"] == 200 and report["reached"]
    _, truth = fx.exact_knn(xt, x, 10)
    _, found = index.search(xt, 10)
    recall = fx.recall_at_k(found, truth + 7, 10)
    assert recall == pytest.approx(report["recall"], abs=1e-4) and recall >= 0.9


def test_search_benchmark_spread_over_runs():
    """benchmarks/search.py --runs: per-run ratio autofaiss/ours of the @=recall p50s, then min / median / max."""
    from benchmarks.search import spread

    def rows(ours, af):
        return [{"name": "flat (IndexFlatIP)", "p50_ms": 200.0, "recall": 1.0},
                {"name": "ours HNSW32,SQfp16 (as built)", "p50_ms": 9.0, "recall": 0.97},
                {"name": "ours HNSW32,SQfp16 @=recall *", "p50_ms": ours, "recall": 0.96},
                {"name": "autofaiss HNSW32 @=recall *", "p50_ms": af, "recall": 0.957}]

    lines = spread([rows(0.2, 0.25), rows(0.3, 0.24), rows(0.25, 0.25)])
    assert "run 2: ours HNSW32,SQfp16 p50 0.300 ms" in lines[2] and lines[2].endswith(": 0.80x")
    assert lines[-1].endswith("min 0.80, median 1.00, max 1.25")
    assert lines[-3].endswith("min 0.200, median 0.250, max 0.300")
