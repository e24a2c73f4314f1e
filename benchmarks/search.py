"""Search benchmark: exact IndexFlatIP vs our auto-chosen index vs autofaiss, plus the end-to-end CLI query.

Data: ``faiss.contrib.datasets.SyntheticDataset(512, 100000, N, 1000, metric='IP')`` (FAISS's own
generator: a 10-d manifold bent into 512-d, hard enough for ANN, unlike separable clusters), for each N
in ``--sizes``. Ground truth: exact inner-product top-10 of its 1000 queries.

Per N, in one process (so the rows are comparable), with ``faiss.omp_set_num_threads(--threads)``:

  flat          exact ``IndexFlatIP``
  ours          ``index.factory.choose_factory(N, 512, --max-memory)``, built by ``index.build.build_index``
                exactly as ``python -m index build`` does (train, add, tune efSearch/nprobe on 1000 held-out
                training vectors, neither database vectors nor the reported queries, to recall@10 >=
                --target-recall); recall measured on the dataset's queries
  autofaiss     ``autofaiss.build_index(max_index_memory_usage=--max-memory, current_memory_available=16G,
                metric_type='ip', nb_cores=--threads, max_index_query_time_ms=10)`` in its own venv
                (``benchmarks/setup_autofaiss.sh``: it needs numpy<2), as delivered (its efSearch/nprobe)
  ours insertion order  the same index with its rows put back in insertion order (undoing the breadth-first
                renumbering ``index.graph.reorder_graph`` does at build): what the graph reordering buys
  ... @=recall  ours and autofaiss re-tuned on the dataset's queries with the same fine efSearch/nprobe
                grid: the smallest value reaching --target-recall. This is the like-for-like speed comparison.
                Rows marked * are timed side by side (``head_to_head``: alternating rounds over the same
                queries), so that the ratio does not pick up the machine's drift between the two builds.

Both sides are timed on the index as read back from its file, the way ``python -m index search`` (ours)
or a user of autofaiss's output loads it.

Columns: build time (wall of the build's own process, data loading included, for ours and autofaiss alike),
index file size, peak RSS of that process (``VmHWM`` of ``/proc/self/status`` at its end: the high-water mark of
its own address space; ``getrusage``'s ``ru_maxrss`` would carry the parent's RSS over ``exec``; the same measure
for both; the Milvus rows: RSS
growth of this process, its server runs in-process), single-query latency p50/p99 (one query per ``search`` call, --single queries), batch QPS
(all queries in one call, --threads threads), recall@10. Single queries of ours go through
``index.factory.search`` as ``python -m index search`` does: 1 OpenMP thread for batches < 8 on a graph/IVF
index (our IndexIDMap2 wrapper otherwise opens an OpenMP region per query, whose thread wake-up costs ~8 ms
when the other core is busy); autofaiss's bare HNSW opens none, and is timed as is.

End to end: ``python -m index search --index runs/index/emoji "猫" -k 10`` in a new process (the emoji index is
built first if missing), wall time per run: --e2e-cold-runs runs each right after emptying the OS page cache
(a cold start: Python, numpy, faiss, onnxruntime and the index read from disk; needs root), then --e2e-runs
runs on a warm cache.

    python benchmarks/search.py --sizes 100000 1000000          # the reported run (~20 min on 2 cores)
    python benchmarks/search.py --sizes 20000 --no-autofaiss     # a quick check
    python benchmarks/search.py --sizes 1000000 --runs 3 --no-e2e   # the spread of 3 runs, every index rebuilt
    python benchmarks/search.py --sizes 100000 --no-autofaiss --backend faiss milvus --no-e2e   # FAISS vs Milvus

``--backend faiss milvus`` adds the Milvus backend's rows (``index.milvus``: HNSW M=32 in an embedded
milvus-lite folder, or the server at ``--uri``), built and tuned the way ``python -m index build --backend
milvus`` does, searched through ``index.milvus.MilvusIndex`` (the client API: gRPC to milvus-lite's
in-process server), timed side by side with ours.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FINE_EF = (10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 64, 80, 96, 128, 192, 256, 384, 512, 1024, 2048, 4096)
FINE_NPROBE = (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096)
AUTOFAISS_CHILD = r"""
import json, sys, time
from autofaiss import build_index
emb, index_path, infos_path, budget, cores = sys.argv[1:6]
t = time.perf_counter()
build_index(embeddings=emb, index_path=index_path, index_infos_path=infos_path, max_index_memory_usage=budget,
            current_memory_available="16G", metric_type="ip", nb_cores=int(cores), max_index_query_time_ms=10,
            verbose=30)
print(json.dumps({"build_s": time.perf_counter() - t,
                  "peak_rss": [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]}))
"""


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- timing


def single_latency(index, xq: np.ndarray, k: int, n: int, search=None) -> tuple[float, float]:
    """p50, p99 in ms of one query per search call."""
    search = search or index.search
    for q in xq[:5]:
        search(q[None], k)
    times = []
    for q in xq[:n]:
        t = time.perf_counter()
        search(q[None], k)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]


def batch_qps(index, xq: np.ndarray, k: int) -> float:
    t = time.perf_counter()
    index.search(xq, k)
    return len(xq) / (time.perf_counter() - t)


def measure(name, index, xq, gt, k, n_single, ours=False, **extra) -> dict:
    """Recall, single-query p50/p99, batch QPS. ``ours``: single queries through ``index.factory.search``
    (the thread policy of ``python -m index search``); others: plain ``index.search``."""
    from index import factory as fx

    _, found = index.search(xq, k)
    p50, p99 = single_latency(index, xq, k, n_single, (lambda q, kk: fx.search(index, q, kk)) if ours else None)
    row = {"name": name, "recall": fx.recall_at_k(found, gt, k), "p50_ms": p50, "p99_ms": p99,
           "qps": batch_qps(index, xq, k)}
    row.update(extra)
    say(f"  {name}: recall@{k} {row['recall']:.3f}, p50 {p50:.3f} ms, p99 {p99:.3f} ms, {row['qps']:.0f} QPS")
    return row


def retune(index, xq, gt, k, target) -> tuple[dict, float]:
    """Smallest value of the fine grid whose recall@k on these queries reaches ``target``."""
    from index import factory as fx

    name = fx.search_param_name(index)
    if name is None:
        return {}, 1.0
    values = FINE_EF if name == "efSearch" else [v for v in FINE_NPROBE if v <= fx.ivf_of(index).nlist]
    best = None
    for v in values:
        if name == "efSearch" and v < k:
            continue
        fx.set_search_params(index, {name: v})
        _, found = index.search(xq, k)
        r = fx.recall_at_k(found, gt, k)
        best = ({name: v}, r)
        if r >= target:
            break
    fx.set_search_params(index, best[0])
    return best


def file_size(index, path: Path) -> int:
    import faiss

    faiss.write_index(index, str(path))
    return path.stat().st_size


# ------------------------------------------------------------------------------------------------ sides


def run_flat(xb, xq, k, n_single):
    import faiss

    t = time.perf_counter()
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    build_s = time.perf_counter() - t
    _, gt = index.search(xq, k)
    rows = [measure("flat (IndexFlatIP)", index, xq, gt, k, n_single, build_s=build_s, bytes=xb.nbytes,
                    rss=xb.nbytes, factory="Flat", params="")]
    from index.factory import omp_threads

    with omp_threads(1):  # a single exact query on one thread: no OpenMP wake-up, often faster here
        p50, p99 = single_latency(index, xq, k, n_single)
    rows.append(dict(rows[0], name="flat, single queries on 1 thread", p50_ms=p50, p99_ms=p99))
    say(f"  flat on 1 thread: p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    return rows, gt


OURS_CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
import faiss
from index import factory as fx
from index.build import build_index
from index.common import parse_memory
from index.race import graph_candidates, race_graphs
emb, xt_path, index_path, budget, target, k, efc, threads = sys.argv[2:10]
faiss.omp_set_num_threads(int(threads))
t = time.perf_counter()
xb = np.load(emb)
xt = np.load(xt_path)
factory = fx.choose_factory(len(xb), xb.shape[1], parse_memory(budget))
race = None
candidates = graph_candidates(len(xb), xb.shape[1], parse_memory(budget)) if factory.startswith("HNSW") else []
if len(candidates) > 1:  # as `index build` does: time the graph variants on a sample, keep the fastest
    race = race_graphs(xb, candidates, int(k), float(target), ef_construction=int(efc))
    factory = race["picked"]
index, report = build_index(xb, np.arange(len(xb), dtype=np.int64), factory, float(target), int(k), 1000, int(efc),
                            progress=False, tune_queries=xt)
faiss.write_index(index, index_path)
print(json.dumps({"build_s": time.perf_counter() - t, "factory": factory, "report": report, "race": race,
                  "peak_rss": [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]}))
"""


def run_ours(xb, xq, gt, k, budget, target, n_single, work: Path, ef_construction: int, xt, threads: int):
    """Ours, built the way autofaiss is measured: in its own process that loads the vectors from an .npy file,
    builds (graph race, train, add, reorder, tune on ``xt``), writes the index and reports its peak RSS
    (``getrusage``); then read back from its file, as ``python -m index search`` serves it."""
    from index import factory as fx
    from index.common import read_faiss
    from index.race import format_race

    emb, xt_path, path = work / "ours-emb.npy", work / "ours-xt.npy", work / f"ours-{len(xb)}.index"
    np.save(emb, xb)
    np.save(xt_path, xt)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", OURS_CHILD, str(REPO), str(emb), str(xt_path), str(path), budget,
                        str(target), str(k), str(ef_construction), str(threads)], capture_output=True, text=True)
    wall = time.perf_counter() - t
    emb.unlink()
    if r.returncode != 0:
        raise RuntimeError(f"our build failed: {r.stderr.strip()[-800:]}")
    child = json.loads(r.stdout.strip().splitlines()[-1])
    factory, report = child["factory"], child["report"]
    if child["race"]:
        say(f"  ours: race {format_race(child['race'])}")
    say(f"  ours: factory {factory} for budget {budget}, built in {wall:.0f} s, peak RSS "
        f"{child['peak_rss'] / 1e6:.0f} MB")
    size = path.stat().st_size
    index = read_faiss(path)
    fx.set_search_params(index, report["params"])
    rows = [measure(f"ours {factory} (as built)", index, xq, gt, k, n_single, True, build_s=wall, bytes=size,
                    rss=child["peak_rss"], factory=factory, params=_fmt(report["params"]),
                    self_tuned_recall=report["recall"])]
    params, _ = retune(index, xq, gt, k, target)
    rows.append(measure(f"ours {factory} @=recall", index, xq, gt, k, n_single, True, build_s=wall, bytes=size,
                        rss=child["peak_rss"], factory=factory, params=_fmt(params)))
    return rows, index


def run_autofaiss(xb, xq, gt, k, budget, target, n_single, work: Path, threads: int, venv: Path):
    import faiss

    setup = subprocess.run(["bash", str(REPO / "benchmarks" / "setup_autofaiss.sh"), str(venv)],
                           capture_output=True, text=True)
    if setup.returncode != 0:
        say(f"  autofaiss: set-up failed, skipped ({setup.stderr.strip().splitlines()[-1:]})")
        return [], None
    say(f"  autofaiss: {setup.stdout.strip()}")
    emb = work / f"af-emb-{len(xb)}"
    emb.mkdir(exist_ok=True)
    np.save(emb / "emb.npy", xb)
    index_path, infos_path = work / f"autofaiss-{len(xb)}.index", work / f"autofaiss-{len(xb)}.json"
    t = time.perf_counter()
    r = subprocess.run([str(venv / "bin" / "python"), "-c", AUTOFAISS_CHILD, str(emb), str(index_path),
                        str(infos_path), budget, str(threads)], capture_output=True, text=True)
    wall = time.perf_counter() - t
    (emb / "emb.npy").unlink()
    if r.returncode != 0:
        say(f"  autofaiss: build failed, skipped: {r.stderr.strip()[-500:]}")
        return [], None
    child = json.loads(r.stdout.strip().splitlines()[-1])
    infos = json.loads(infos_path.read_text())
    index = faiss.read_index(str(index_path))
    faiss.ParameterSpace().set_index_parameters(index, infos.get("index_param", ""))
    key = infos.get("index_key", "?")
    say(f"  autofaiss: {key} {infos.get('index_param')} in {wall:.0f} s")
    size = index_path.stat().st_size
    rows = [measure(f"autofaiss {key} (as delivered)", index, xq, gt, k, n_single, build_s=wall, bytes=size,
                    rss=child["peak_rss"], factory=key, params=infos.get("index_param", ""))]
    params, _ = retune(index, xq, gt, k, target)
    rows.append(measure(f"autofaiss {key} @=recall", index, xq, gt, k, n_single, build_s=wall, bytes=size,
                        rss=child["peak_rss"], factory=key, params=_fmt(params)))
    return rows, index


def run_milvus(xb, xq, gt, k, target, n_single, work: Path, ef_construction: int, uri: str | None, xt=None):
    """The Milvus backend (``python -m index build --backend milvus``): HNSW (M=32, the same efConstruction)
    in an embedded milvus-lite folder (or at ``uri``), through ``index.milvus.MilvusIndex`` as the index API
    uses it; ef tuned like ours (as built: on the same tuning queries; @=recall: on the dataset's queries)."""
    from index import factory as fx
    from index import milvus
    from index.build import tune_on_sample

    folder = work / "milvus"
    folder.mkdir()
    ids = np.arange(len(xb), dtype=np.int64)
    before = rss()
    t = time.perf_counter()
    cfg = milvus.build_collection(folder, xb, ids, uri, "bench", "HNSW", ef_construction)
    index = milvus.MilvusIndex(folder, cfg, xb.shape[1])
    if xt is not None:  # the same tuning queries as ours
        _, rows = fx.exact_knn(xt, xb, k)
        report = tune_on_sample(index, xb, ids, k, target, len(xt), 0, external=(xt, ids[rows]))
    else:
        report = tune_on_sample(index, xb, ids, k, target, 1000, 0)
    build_s = time.perf_counter() - t
    grown = rss() - before
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    where = "milvus-lite" if uri is None else "milvus server"
    rows = [measure(f"milvus HNSW32 ({where}, as built)", index, xq, gt, k, n_single, True, build_s=build_s,
                    bytes=size, rss=grown, factory="milvus:HNSW", params=_fmt(report["params"]),
                    self_tuned_recall=report["recall"])]
    params, _ = retune(index, xq, gt, k, target)
    rows.append(measure("milvus HNSW32 @=recall", index, xq, gt, k, n_single, True, build_s=build_s, bytes=size,
                        rss=grown, factory="milvus:HNSW", params=_fmt(params)))
    if uri:
        milvus.drop_collection(uri, cfg["collection"])
    return rows, index


def insertion_order_copy(index):
    """A copy of our HNSW index with its rows put back in insertion order, undoing the breadth-first
    renumbering of ``index.graph.reorder_graph`` (the benchmark's ids are 0..N-1 in insertion order):
    the same graph and results, only the memory layout differs, which is what this row measures."""
    import faiss

    from index import graph

    plain = faiss.clone_index(index)
    graph.permute_rows(plain, np.argsort(faiss.vector_to_array(plain.id_map)))  # row r <- the row holding id r
    return plain


def head_to_head(sides: dict, xq, k, n_single, rounds: int = 6) -> None:
    """Re-time rows side by side. ``sides``: name -> (row, index, search function). ``rounds`` rounds,
    each timing the same ``n_single`` queries on every side, the order reversed every other round, so
    drift of the machine (the other core's load, clock, caches) falls on all alike. p50/p99 over all
    rounds and the median batch QPS replace the rows' sequential measurements (kept as ``*_sequential``)."""
    times = {name: [] for name in sides}
    qps = {name: [] for name in sides}
    for rnd in range(rounds):
        for name in (list(sides) if rnd % 2 == 0 else list(sides)[::-1]):
            row, index, search = sides[name]
            for q in xq[:n_single]:
                t = time.perf_counter()
                search(q[None], k)
                times[name].append((time.perf_counter() - t) * 1e3)
            qps[name].append(batch_qps(index, xq, k))
    for name, (row, _, _) in sides.items():
        ts = sorted(times[name])
        row.update(p50_ms_sequential=row["p50_ms"], p99_ms_sequential=row["p99_ms"], qps_sequential=row["qps"],
                   p50_ms=statistics.median(ts), p99_ms=ts[min(len(ts) - 1, int(round(0.99 * (len(ts) - 1))))],
                   qps=statistics.median(qps[name]), name=row["name"] + " *")
        say(f"  {row['name']} side by side ({rounds} rounds x {n_single} queries): p50 {row['p50_ms']:.3f} ms, "
            f"p99 {row['p99_ms']:.3f} ms, {row['qps']:.0f} QPS")


COPIED = ("build_s", "bytes", "rss", "factory", "params")


def _fmt(params: dict) -> str:
    from index.factory import format_params

    return format_params(params)


# ----------------------------------------------------------------------------------------- end to end


def drop_page_cache() -> bool:
    """Empty the OS page cache (Linux, as root), so that the next process reads Python, its libraries and
    the index files from disk: a cold start. False where that is not allowed."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def end_to_end(index_dir: Path, runs: int, cold_runs: int = 2, query: str = "猫") -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if not (index_dir / "index.json").is_file():
        say(f"e2e: building {index_dir} (emoji closed view, models/brivl-emoji) ...")
        emb = index_dir.with_name(index_dir.name + "-emb")
        for argv in (["embed", "--data", "data/emoji", "--out", str(emb), "--no-progress"],
                     ["build", "--emb", str(emb), "--out", str(index_dir), "--no-progress"]):
            subprocess.run([sys.executable, "-m", "index", *argv], check=True, cwd=REPO, env=env)
    cmd = [sys.executable, "-m", "index", "search", "--index", str(index_dir), query, "-k", "10"]

    def once() -> tuple[float, str]:
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, check=True)
        return time.perf_counter() - t, r.stdout

    cold = []
    for _ in range(cold_runs):
        if not drop_page_cache():
            say("e2e: cannot drop the page cache (needs root on Linux): no cold runs")
            break
        cold.append(once()[0])
    walls, out = [], ""
    for _ in range(runs):
        wall, out = once()
        walls.append(wall)
    base = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        base.append(time.perf_counter() - t)
    return {"command": " ".join(cmd[1:]), "cold_walls_s": cold, "walls_s": walls, "median_s": statistics.median(walls),
            "max_s": max(walls), "python_startup_s": min(base), "first_hits": out.splitlines()[1:4]}


# ------------------------------------------------------------------------------------------------ table


def table(rows: list[dict], n: int) -> str:
    head = f"{'N=' + format(n, ','):<12} {'index':<36} {'params':<16} {'build s':>8} {'size MB':>8} {'RSS MB':>8} " \
           f"{'p50 ms':>8} {'p99 ms':>8} {'QPS':>8} {'R@10':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{'':<12} {r['name']:<36} {r['params']:<16} {r['build_s']:>8.1f} {r['bytes'] / 1e6:>8.0f} "
                     f"{r['rss'] / 1e6:>8.0f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['qps']:>8.0f} "
                     f"{r['recall']:>6.3f}")
    return "\n".join(lines)


def equal_recall_rows(rows: list[dict]) -> dict[str, dict]:
    """The side-by-side @=recall row of each system ("ours", "autofaiss", "milvus") in one run's rows."""
    return {r["name"].split(" ")[0]: r for r in rows if "@=recall" in r["name"]}


def ratios(rows: list[dict], target: float) -> list[str]:
    eq = equal_recall_rows(rows)
    out = []
    ours, af, mv = eq.get("ours"), eq.get("autofaiss"), eq.get("milvus")
    flats = [r for r in rows if r["name"].startswith("flat")]
    flat = min(flats, key=lambda r: r["p50_ms"]) if flats else None
    if flat and ours:
        out.append(f"ours @=recall vs flat (its faster single-query setting): p50 {flat['p50_ms'] / ours['p50_ms']:.0f}x "
                   f"faster, batch QPS "
                   f"{ours['qps'] / flat['qps']:.1f}x, recall {ours['recall']:.3f} vs 1.000")
    plain = next((r for r in rows if "insertion order" in r["name"]), None)
    if ours and plain:
        out.append(f"graph reordering (same graph, rows breadth-first vs insertion order): p50 {ours['p50_ms']:.3f} vs "
                   f"{plain['p50_ms']:.3f} ms ({plain['p50_ms'] / ours['p50_ms']:.2f}x), p99 {ours['p99_ms']:.3f} vs "
                   f"{plain['p99_ms']:.3f} ms, QPS {ours['qps'] / plain['qps']:.2f}x, recall {ours['recall']:.3f} vs "
                   f"{plain['recall']:.3f}")
    if ours and af:
        out.append(f"ours @=recall vs autofaiss @=recall (target {target}): p50 {ours['p50_ms']:.3f} vs "
                   f"{af['p50_ms']:.3f} ms ({af['p50_ms'] / ours['p50_ms']:.2f}x), p99 {ours['p99_ms']:.3f} vs "
                   f"{af['p99_ms']:.3f} ms, QPS {ours['qps'] / af['qps']:.2f}x, recall {ours['recall']:.3f} vs "
                   f"{af['recall']:.3f}, build {ours['build_s']:.0f} vs {af['build_s']:.0f} s, size "
                   f"{ours['bytes'] / 1e6:.0f} vs {af['bytes'] / 1e6:.0f} MB")
    if ours and mv:
        out.append(f"ours (FAISS backend) @=recall vs the Milvus backend @=recall (target {target}): p50 "
                   f"{ours['p50_ms']:.3f} vs {mv['p50_ms']:.3f} ms ({mv['p50_ms'] / ours['p50_ms']:.1f}x), p99 "
                   f"{ours['p99_ms']:.3f} vs {mv['p99_ms']:.3f} ms, QPS {ours['qps'] / mv['qps']:.1f}x, recall "
                   f"{ours['recall']:.3f} vs {mv['recall']:.3f}, build {ours['build_s']:.0f} vs {mv['build_s']:.0f} s")
    return out


def spread(runs: list[list[dict]]) -> list[str]:
    """Across repeated runs (each index rebuilt): the graph each run picked, the @=recall p50 of ours and
    autofaiss and their ratio per run, then min / median / max of each."""
    per = [equal_recall_rows(rows) for rows in runs]
    out = [f"spread over {len(runs)} runs (each index rebuilt; side-by-side p50 at equal recall):"]
    ratios_ = []
    for i, by in enumerate(per, 1):
        ours, af = by.get("ours"), by.get("autofaiss")
        line = f"  run {i}: ours {ours['name'].split(' ')[1]} p50 {ours['p50_ms']:.3f} ms (R@10 {ours['recall']:.3f})"
        if af:
            ratios_.append(af["p50_ms"] / ours["p50_ms"])
            line += (f", autofaiss p50 {af['p50_ms']:.3f} ms (R@10 {af['recall']:.3f}): "
                     f"{ratios_[-1]:.2f}x")
        out.append(line)

    def mmm(xs: list[float], fmt: str) -> str:
        return f"min {min(xs):{fmt}}, median {statistics.median(xs):{fmt}}, max {max(xs):{fmt}}"

    out.append(f"  ours p50 ms: {mmm([by['ours']['p50_ms'] for by in per], '.3f')}")
    if ratios_:
        out.append(f"  autofaiss p50 ms: {mmm([by['autofaiss']['p50_ms'] for by in per], '.3f')}")
        out.append(f"  autofaiss / ours p50 (> 1: ours faster): {mmm(ratios_, '.2f')}")
    return out


def measure_size(a, xb, xq, xt, k: int, out: Path) -> list[dict]:
    """Every row of one size: flat, ours (as built, @=recall, insertion order), autofaiss, Milvus; all indexes
    built afresh, then the side-by-side rounds."""
    from index import factory as fx

    with tempfile.TemporaryDirectory(dir=out) as tmp:
        work = Path(tmp)
        flat, gt = run_flat(xb, xq, k, max(20, a.single // 3))
        ours_rows, ours = run_ours(xb, xq, gt, k, a.max_memory, a.target_recall, a.single, work,
                                   a.ef_construction, xt, a.threads)
        rows = flat + ours_rows
        sides = {"ours": (ours_rows[-1], ours, lambda q, kk, i=ours: fx.search(i, q, kk))}
        if fx.hnsw_of(ours) is not None:
            plain = insertion_order_copy(ours)
            plain_row = measure(ours_rows[-1]["name"].replace("@=recall", "insertion order"), plain, xq, gt, k,
                                a.single, True, **{c: ours_rows[-1][c] for c in COPIED})
            rows.append(plain_row)
            sides["plain"] = (plain_row, plain, lambda q, kk, i=plain: fx.search(i, q, kk))
        if not a.no_autofaiss:
            af_rows, af = run_autofaiss(xb, xq, gt, k, a.max_memory, a.target_recall, a.single, work, a.threads,
                                        Path(a.autofaiss_venv))
            rows += af_rows
            if af is not None:
                sides["autofaiss"] = (af_rows[-1], af, af.search)
        mv = None
        if "milvus" in a.backend:
            mv_rows, mv = run_milvus(xb, xq, gt, k, a.target_recall, a.single, work, a.ef_construction, a.uri,
                                     xt)
            rows += mv_rows
            sides["milvus"] = (mv_rows[-1], mv, lambda q, kk, i=mv: fx.search(i, q, kk))
        if len(sides) > 1:
            head_to_head(sides, xq, k, a.single)
        if mv is not None:
            mv.close()
        del sides, ours, mv
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_000_000])
    p.add_argument("--max-memory", default="4G", help="memory budget for ours and autofaiss (default 4G)")
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--single", type=int, default=300, help="single queries timed for p50/p99 (flat: 1/3 of it)")
    p.add_argument("--ef-construction", type=int, default=40)
    p.add_argument("--no-autofaiss", action="store_true")
    p.add_argument("--autofaiss-venv", default=str(REPO / "runs" / "bench" / "autofaiss-venv"))
    p.add_argument("--e2e-index", default=str(REPO / "runs" / "index" / "emoji"))
    p.add_argument("--e2e-runs", type=int, default=5, help="end-to-end runs on a warm page cache")
    p.add_argument("--e2e-cold-runs", type=int, default=2,
                   help="end-to-end runs each after dropping the page cache (root on Linux; else skipped)")
    p.add_argument("--out", default=str(REPO / "runs" / "bench" / "search"))
    p.add_argument("--backend", nargs="+", choices=("faiss", "milvus"), default=["faiss"],
                   help="add 'milvus' for the Milvus backend's rows beside FAISS's (embedded milvus-lite, or --uri)")
    p.add_argument("--uri", default=None, help="a Milvus server for the milvus rows (default: embedded milvus-lite)")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end CLI runs")
    p.add_argument("--runs", type=int, default=1, help="repeat each size this many times, every index rebuilt "
                                                       "(the graph race included), and print the spread")
    a = p.parse_args(argv)
    if a.runs < 1:
        p.error(f"--runs must be >= 1, got {a.runs}")

    import faiss
    from faiss.contrib.datasets import SyntheticDataset

    faiss.omp_set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    k = 10
    results, report = {"args": vars(a), "faiss": faiss.__version__, "sizes": {}}, []
    for n in a.sizes:
        say(f"N={n}: generating SyntheticDataset(512, 100000, {n}, 1000, metric='IP') ...")
        ds = SyntheticDataset(512, 100_000, n, 1000, metric="IP")
        xb, xq = np.ascontiguousarray(ds.get_database()), np.ascontiguousarray(ds.get_queries())
        xt = np.ascontiguousarray(ds.get_train(1000))  # tuning queries: not in the database, not reported
        del ds
        runs = []
        for run in range(a.runs):
            if a.runs > 1:
                say(f"N={n}: run {run + 1} of {a.runs}, every index rebuilt")
            runs.append(measure_size(a, xb, xq, xt, k, out))
        rows = runs[-1]
        del xb
        results["sizes"][n] = rows
        for i, r in enumerate(runs[:-1]):
            report.append(table(r, n) + f"   (run {i + 1} of {a.runs})")
        report.append(table(rows, n) + (f"   (run {a.runs} of {a.runs})" if a.runs > 1 else ""))
        report += ratios(rows, a.target_recall)
        if a.runs > 1:
            results.setdefault("runs", {})[n] = runs
            report += spread(runs)
        report.append("")
        print("\n".join(report[-(len(ratios(rows, a.target_recall)) + 2):]), flush=True)
    if a.no_e2e:
        (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str))
        print("\n\n" + f"search benchmark, SyntheticDataset d=512 IP, {a.threads} threads, target recall@10 "
              f"{a.target_recall}, faiss {faiss.__version__}\n" + "\n".join(report))
        return 0
    e2e = end_to_end(Path(a.e2e_index), a.e2e_runs, a.e2e_cold_runs)
    results["end_to_end"] = e2e
    report.append(f"end to end, new process: python {e2e['command']}")
    if e2e["cold_walls_s"]:
        report.append(f"  cold (page cache dropped before each run), wall per run: "
                      f"{', '.join(f'{w:.2f}' for w in e2e['cold_walls_s'])} s")
    report.append(f"  warm, wall per run: {', '.join(f'{w:.2f}' for w in e2e['walls_s'])} s; median "
                  f"{e2e['median_s']:.2f} s, max {e2e['max_s']:.2f} s (python -c pass: {e2e['python_startup_s']:.2f} s)")
    report += ["  " + line for line in e2e["first_hits"]]
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str))
    print("\n\n" + f"search benchmark, SyntheticDataset d=512 IP, {a.threads} threads, budget {a.max_memory}, "
          f"target recall@10 {a.target_recall}, faiss {faiss.__version__}\n" + "\n".join(report))
    print(f"\n(results: {out / 'results.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
