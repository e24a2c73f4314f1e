"""Embedding shards -> an index folder: ``python -m index build --emb EMB_DIR --out INDEX_DIR``.

Steps: read the shards (``index.embed``'s layout), check ids (unique keys, no hash collision), choose a
factory (:func:`index.factory.choose_factory`, unless ``--factory``), train on a sample, add with ids,
renumber a graph's rows in breadth-first order for memory locality (:func:`index.graph.reorder_graph`),
tune ``efSearch``/``nprobe`` on held-out queries (database vectors sampled at random; each query's own
vector is left out of its neighbours on both sides) until recall@10 against exact inner-product search
reaches ``--target-recall``, export the text tower to ONNX, and write::

    index.faiss       the FAISS index (``IndexIDMap2`` around Flat/HNSW; IVF stores the ids itself)
    index.ivfdata     on-disk inverted lists (``--on-disk`` only), memory-mapped at search
    ids.npy           the live ids, int64, in insertion order
    meta.sqlite       metadata by id (index.meta)
    text.onnx         text tower ids -> normalised features, and tokenizer.json (index.onnx_text)
    index.json        model (name, path, dim, probe), factory, search params, recall, count, created ...

Everything is written into a temp folder next to ``INDEX_DIR`` and renamed into place at the end, so an
interrupted or failed build leaves a previous index untouched.

``--on-disk`` (larger than RAM): the IVF quantizer is trained once on a sample, each embedding shard
is added to a copy of the trained empty index and written as a block, and the blocks' inverted lists
are merged into one ``index.ivfdata`` file with ``faiss.contrib.ondisk.merge_ondisk``; only one shard
of vectors is in memory at a time (the blocks are read back with ``IO_FLAG_MMAP``), and at search the
merged lists stay on disk, memory-mapped by faiss's ``OnDiskInvertedLists`` (opened read-only with
``IO_FLAG_ONDISK_SAME_DIR``, so the folder can move).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from . import factory as fx
from . import meta
from .graph import reorder_graph
from .race import format_race, graph_candidates, race_graphs
from .common import (FAISS_NAME, FORMAT_VERSION, IDS_NAME, INFO_NAME, IVFDATA_NAME, META_NAME, UserError,
                     atomic_save_npy, atomic_write_json, human_bytes, ids_for_keys, now_iso, parse_memory,
                     c_stdout_silenced, read_faiss, replacing, write_folder)
from .embed import EMBED_INFO, finished_shards, read_shard, shard_paths

log = logging.getLogger(__name__)
TUNE_QUERIES = 1000


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- inputs


def read_embed_info(emb_dir: str | os.PathLike) -> tuple[dict, list[str]]:
    emb_dir = Path(emb_dir)
    if not emb_dir.is_dir():
        raise UserError(f"--emb {emb_dir} not found: run `python -m index embed` first")
    info_path = emb_dir / EMBED_INFO
    if not info_path.is_file():
        raise UserError(f"{emb_dir} has no {EMBED_INFO}: not an embedding folder of `python -m index embed`")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    names = finished_shards(emb_dir)
    missing = [s for s in info.get("shards", []) if s not in names]
    if missing:
        raise UserError(f"{emb_dir}: {len(missing)} shard(s) not embedded yet ({', '.join(missing[:3])}...): "
                        "re-run the same `python -m index embed` command to finish them")
    if not names:
        raise UserError(f"{emb_dir} holds no embedding shards")
    return info, names


def shard_sizes(emb_dir: Path, names: list[str]) -> list[int]:
    return [int(np.load(shard_paths(emb_dir, n)[1], mmap_mode="r").shape[0]) for n in names]


def gather_rows(emb_dir: Path, names: list[str], sizes: list[int], rows: np.ndarray) -> np.ndarray:
    """float32 vectors of global row numbers ``rows`` (sorted), reading shards memory-mapped."""
    out, starts = [], np.cumsum([0] + sizes)
    for i, name in enumerate(names):
        sel = rows[(rows >= starts[i]) & (rows < starts[i + 1])] - starts[i]
        if len(sel):
            out.append(np.asarray(np.load(shard_paths(emb_dir, name)[0], mmap_mode="r")[sel], dtype=np.float32))
    return np.concatenate(out)


def exact_truth(emb_dir: Path, names: list[str], xq: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids of ``xq`` over all shards (one shard in memory at a time)."""
    import faiss

    heap = faiss.ResultHeap(len(xq), k, keep_max=True)
    for name in names:
        emb, ids, _ = read_shard(emb_dir, name)
        if not len(emb):
            continue
        kk = min(k, len(emb))
        d, rows = fx.exact_knn(xq, np.asarray(emb, np.float32), kk)
        heap.add_result(np.ascontiguousarray(d, dtype=np.float32), np.ascontiguousarray(ids[rows], dtype=np.int64))
    heap.finalize()
    return heap.I


# ------------------------------------------------------------------------------------------- building


def build_index(x: np.ndarray, ids: np.ndarray, factory: str, target_recall: float = 0.95, k: int = 10,
                n_queries: int = TUNE_QUERIES, ef_construction: int = 40, seed: int = 0, progress: bool = True,
                tune_queries: np.ndarray | None = None):
    """Train, add, tune an in-memory index; returns ``(index, report)``. Pure apart from progress lines.
    ``tune_queries``: tune on these (vectors that are neither in the database nor the reported queries)
    instead of held-out database vectors."""
    n, d = x.shape
    t0 = time.perf_counter()
    index = fx.make_index(factory, d)
    train_s = fx.train(index, x[fx.sample_rows(n, fx.train_size(factory, n), seed)], ef_construction)
    t = time.perf_counter()
    bar = _bar(n, "add", progress)
    fx.add(index, x, ids, progress=lambda i: bar.update(i - bar.n))
    bar.close()
    add_s = time.perf_counter() - t
    t = time.perf_counter()
    reordered = reorder_graph(index)  # same results, better memory locality (HNSW only)
    reorder_s = time.perf_counter() - t
    if tune_queries is not None:
        xq = np.ascontiguousarray(tune_queries, dtype=np.float32)
        _, rows = fx.exact_knn(xq, x, min(k, len(ids)))
        tuning = tune_on_sample(index, x, ids, k, target_recall, len(xq), seed, external=(xq, ids[rows]))
    else:
        tuning = tune_on_sample(index, x, ids, k, target_recall, n_queries, seed)
    report = {"train_s": round(train_s, 2), "add_s": round(add_s, 2), "build_s": round(time.perf_counter() - t0, 2),
              **({"graph_reorder_s": round(reorder_s, 2)} if reordered else {}), **tuning}
    return index, report


def tune_on_sample(index, x, ids, k, target, n_queries, seed, truth=None, q_rows=None, external=None) -> dict:
    """Tune ``efSearch``/``nprobe`` on held-out database vectors (each query's own vector left out of both
    sides), or on ``external`` = (queries, their exact top-k ids) that are not database vectors."""
    extra = {}
    if external is not None:
        xq, truth_ids = np.asarray(external[0], np.float32), external[1]
        kk, self_ids, extra = min(k, len(ids)), None, {"tune_on": "external queries"}
    else:
        q_rows = fx.sample_rows(len(ids), n_queries, seed + 1) if q_rows is None else q_rows
        xq = np.asarray(x[q_rows] if x is not None else truth[0], dtype=np.float32)
        if truth is None:
            _, rows = fx.exact_knn(xq, x, min(k + 1, len(ids)))
            truth_ids = ids[rows]
        else:
            truth_ids = truth[1]
        kk = min(k, len(ids) - 1) if len(ids) > 1 else 1
        self_ids = ids[q_rows] if len(ids) > 1 else None
    t = time.perf_counter()
    res = fx.tune(index, xq, truth_ids, kk, target, self_ids=self_ids)
    return {"params": res.params, "recall": round(res.recall, 4), "recall_k": kk, "target_recall": target,
            "reached": res.reached, "tune_queries": int(len(xq)), **extra, "tune_s": round(time.perf_counter() - t, 2),
            "tried": [[v, round(r, 4), round(ms, 4)] for v, r, ms in res.tried]}


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="vec", disable=not enabled, file=sys.stderr)


def build_on_disk(emb_dir: Path, names: list[str], factory: str, tmp: Path, target_recall: float, k: int,
                  n_queries: int, seed: int, progress: bool):
    """Shared trained quantizer -> one block index per shard -> merged ``index.ivfdata``."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    sizes = shard_sizes(emb_dir, names)
    n = sum(sizes)
    t0 = time.perf_counter()
    index = fx.make_index(factory, _dim(emb_dir, names))
    if fx.ivf_of(index) is None:
        raise UserError(f"--on-disk needs an IVF factory (e.g. IVF{fx.nlist_for(n)},Flat), not {factory!r}")
    train_rows = fx.sample_rows(n, fx.train_size(factory, n), seed)
    train_s = fx.train(index, gather_rows(emb_dir, names, sizes, train_rows))
    trained = tmp / "trained.index"
    faiss.write_index(index, str(trained))
    blocks = []
    t = time.perf_counter()
    bar = _bar(n, "add (blocks)", progress)
    for i, name in enumerate(names):
        emb, ids, _ = read_shard(emb_dir, name)
        block = faiss.read_index(str(trained))
        fx.add(block, np.asarray(emb, np.float32), ids)
        blocks.append(tmp / f"block{i:06d}.index")
        faiss.write_index(block, str(blocks[-1]))
        del block, emb
        bar.update(len(ids))
    bar.close()
    index = faiss.read_index(str(trained))
    with c_stdout_silenced():  # faiss printf()s its file resizing
        merge_ondisk(index, [str(b) for b in blocks], str(tmp / IVFDATA_NAME))
    faiss.write_index(index, str(tmp / FAISS_NAME))
    del index
    for b in blocks + [trained]:
        b.unlink()
    add_s = time.perf_counter() - t
    index = read_faiss(tmp / FAISS_NAME, on_disk=True)
    q_rows = fx.sample_rows(n, n_queries, seed + 1)
    xq = gather_rows(emb_dir, names, sizes, q_rows)
    all_ids = np.concatenate([np.load(shard_paths(emb_dir, nm)[1]) for nm in names])
    truth = exact_truth(emb_dir, names, xq, min(k + 1, n))
    tuning = tune_on_sample(index, None, all_ids, k, target_recall, n_queries, seed, truth=(xq, truth), q_rows=q_rows)
    report = {"train_s": round(train_s, 2), "add_s": round(add_s, 2), "build_s": round(time.perf_counter() - t0, 2),
              **tuning}
    return index, report


def _dim(emb_dir: Path, names: list[str]) -> int:
    return int(np.load(shard_paths(emb_dir, names[0])[0], mmap_mode="r").shape[1])


# ------------------------------------------------------------------------------------------ the command


def load_all(emb_dir: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    embs, ids = [], []
    for name in names:
        e = np.load(shard_paths(emb_dir, name)[0])
        embs.append(np.asarray(e, dtype=np.float32))
        ids.append(np.load(shard_paths(emb_dir, name)[1]))
    return np.concatenate(embs), np.concatenate(ids)


def write_metadata(emb_dir: Path, names: list[str], db_path: Path) -> np.ndarray:
    """meta.sqlite from the shards' metadata; returns all ids in order (checked: unique, no collision)."""
    keys, ids = [], []
    conn = meta.connect(db_path)
    try:
        for name in names:
            _, sid, items = read_shard(emb_dir, name)
            keys += [it["key"] for it in items]
            ids.append(sid)
            meta.insert(conn, items)
    except UserError:
        ids_for_keys(keys)  # name the duplicate key / colliding pair when that is the cause
        raise
    finally:
        conn.close()
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    if not np.array_equal(ids_for_keys(keys), all_ids):
        raise UserError(f"ids in {emb_dir} are not the ids of their keys: re-run `python -m index embed`")
    return all_ids


def export_onnx_into(folder: Path, model_path: str | None, recorded: dict) -> tuple[dict | None, str | None]:
    """Export the text tower into ``folder``; returns (text_encoder entry, note if not exported)."""
    from .common import same_model
    from .embed import describe_model, load_model
    from .onnx_text import ExportError, export_text_tower

    if not model_path or not Path(model_path).exists():
        return None, f"model {model_path!r} not found, no ONNX text encoder (search will need it for text queries)"
    model = load_model(model_path)
    why = same_model(recorded, describe_model(model, model_path))
    if why:
        raise UserError(f"--model {model_path} is not the model that made these embeddings: {why}")
    try:
        return export_text_tower(model, folder), None
    except ExportError as e:
        return None, f"no ONNX text encoder ({e}); text search will use torch"


def build_milvus(tmp: Path, x: np.ndarray, ids: np.ndarray, uri: str | None, name: str, index_type: str,
                 target_recall: float, k: int, n_queries: int, ef_construction: int, seed: int, progress: bool):
    """The Milvus backend's build (:mod:`index.milvus`): insert, then tune ``ef`` on the same held-out
    sample as the FAISS build. Returns (``index.json``'s ``milvus`` entry, report, ntotal)."""
    from . import milvus

    t0 = time.perf_counter()
    bar = _bar(len(ids), "insert into Milvus", progress)
    cfg = milvus.build_collection(tmp, x, ids, uri, name, index_type, ef_construction,
                                  progress=lambda i: bar.update(i - bar.n))
    bar.close()
    add_s = time.perf_counter() - t0
    try:
        index = milvus.MilvusIndex(tmp, cfg, x.shape[1])
        try:
            tuning = tune_on_sample(index, x, ids, k, target_recall, n_queries, seed)
            ntotal = index.ntotal
        finally:
            index.close()
    except BaseException:
        if uri:  # nothing of a failed build stays on the server
            milvus.drop_collection(uri, cfg["collection"])
        raise
    return cfg, {"add_s": round(add_s, 2), "build_s": round(time.perf_counter() - t0, 2), **tuning}, ntotal


def run_build(emb: str, out: str, factory: str | None = None, max_memory: str = "4G", target_recall: float = 0.95,
              on_disk: bool = False, model: str | None = None, onnx: bool = True, k: int = 10,
              ef_construction: int = 40, n_queries: int = TUNE_QUERIES, seed: int = 0, progress: bool = True,
              backend: str = "faiss", uri: str | None = None, milvus_index: str = "HNSW", race: bool = True) -> dict:
    """The ``build`` command: returns ``index.json``. ``backend="milvus"``: the vectors go into a Milvus
    collection (``uri``: a server; default an embedded milvus-lite folder inside the index folder).
    ``race``: when the chosen factory is a graph and several graph variants fit the budget, build each on a
    sample and keep the fastest at the target recall (:func:`index.race_graphs`; ``--factory`` skips it)."""
    import faiss

    if not 0 < target_recall <= 1:
        raise UserError(f"--target-recall must be in (0, 1], got {target_recall}")
    if backend not in ("faiss", "milvus"):
        raise UserError(f"--backend must be faiss or milvus, got {backend!r}")
    if backend == "milvus" and (on_disk or factory):
        raise UserError("--on-disk and --factory are FAISS options; with --backend milvus use --milvus-index")
    if uri and backend != "milvus":
        raise UserError("--uri is the address of a Milvus server: add --backend milvus")
    budget = parse_memory(max_memory)
    out_dir = Path(out)
    if out_dir.exists() and not (out_dir / INFO_NAME).is_file() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"--out {out_dir} exists and is not an index folder: refusing to replace it")
    emb_dir = Path(emb)
    einfo, names = read_embed_info(emb_dir)
    model_info = dict(einfo.get("model") or {})
    model_path = model or model_info.get("path")
    sizes = shard_sizes(emb_dir, names)
    n, d = sum(sizes), _dim(emb_dir, names)
    if n == 0:
        raise UserError(f"{emb_dir} holds 0 embeddings")
    if d != model_info.get("dim", d):
        raise UserError(f"{emb_dir}: embeddings are {d}-d but embed.json records a {model_info['dim']}-d model")
    chosen = f"milvus:{milvus_index}" if backend == "milvus" else factory or fx.choose_factory(n, d, budget, on_disk)
    est = fx.estimate_memory(chosen, n, d) if backend == "faiss" else 0
    if backend == "milvus":
        say(f"build: {n} vectors x {d} ({len(names)} shards) into Milvus ({milvus_index}) at "
            f"{uri or 'an embedded milvus-lite folder'}")
    else:
        say(f"build: {n} vectors x {d} ({len(names)} shards), factory {chosen}"
            f"{' (chosen)' if not factory else ''}, estimated {human_bytes(est)} of {human_bytes(budget)}"
            f"{', on disk' if on_disk else ''}")
    result: dict = {}
    candidates = graph_candidates(n, d, budget) if (backend == "faiss" and race and not factory and not on_disk
                                                      and chosen.startswith("HNSW")) else []

    def write(tmp: Path) -> None:
        nonlocal chosen
        ids = write_metadata(emb_dir, names, tmp / META_NAME)
        atomic_save_npy(tmp / IDS_NAME, ids)
        milvus_cfg, ntotal = None, None
        if backend == "milvus":
            from .milvus import collection_name

            x, _ = load_all(emb_dir, names)
            milvus_cfg, report, ntotal = build_milvus(tmp, x, ids, uri, collection_name(out_dir.name), milvus_index,
                                                      target_recall, k, n_queries, ef_construction, seed, progress)
            del x
        elif on_disk:
            index, report = build_on_disk(emb_dir, names, chosen, tmp, target_recall, k, n_queries, seed, progress)
        else:
            x, _ = load_all(emb_dir, names)
            if len(candidates) > 1:
                say(f"build: racing {', '.join(candidates)} on a sample (fastest at recall@{k} >= {target_recall})")
                result["factory_race"] = race_graphs(x, candidates, k, target_recall, ef_construction=ef_construction,
                                                        seed=seed)
                chosen = result["factory_race"]["picked"]
                say(f"build: {format_race(result['factory_race'])} -> {chosen}")
            index, report = build_index(x, ids, chosen, target_recall, k, n_queries, ef_construction, seed, progress)
            del x
            with replacing(tmp / FAISS_NAME) as p:
                faiss.write_index(index, str(p))
        if not report["reached"]:
            say(f"warning: recall@{report['recall_k']} {report['recall']:.3f} < target {target_recall} even at "
                f"{report['params']}: raise --max-memory or pass a --factory")
        text_encoder, note = export_onnx_into(tmp, model_path, model_info) if onnx else (None, "--no-onnx")
        if note:
            say(f"note: {note}")
        model_info["path"] = str(Path(model_path).resolve()) if model_path and Path(model_path).exists() \
            else model_path
        info = {"format": FORMAT_VERSION, "backend": backend, "model": model_info, "dim": d, "metric": "inner_product",
                "factory": chosen, "factory_chosen": factory is None, "max_memory": budget,
                "estimated_bytes": fx.estimate_memory(chosen, n, d) if backend == "faiss" else 0,
                "on_disk": on_disk, "params": report["params"],
                "count": int(n), "ntotal": int(ntotal if milvus_cfg else index.ntotal), "deleted": 0,
                "index_bytes": sum(p.stat().st_size for p in tmp.rglob("*")
                                   if p.is_file() and (p.name.startswith("index.") or ".milvus.db" in str(p))),
                **({"milvus": milvus_cfg} if milvus_cfg else {}),
                **({"factory_race": result["factory_race"]} if "factory_race" in result else {}),
                "tuning": report, "text_encoder": text_encoder,
                "embeddings": {"dir": str(emb_dir.resolve()), "dtype": einfo.get("dtype"), "data": einfo.get("data"),
                               "view": einfo.get("view")},
                "created": now_iso(), "updated": now_iso()}
        atomic_write_json(tmp / INFO_NAME, info)
        result.update(info)

    previous = None
    if backend == "milvus" and (out_dir / INFO_NAME).is_file():  # the build this one replaces
        previous = json.loads((out_dir / INFO_NAME).read_text(encoding="utf-8")).get("milvus")
    write_folder(out, write)
    if backend == "milvus":
        from .milvus import drop_old_versions

        drop_old_versions(result["milvus"], previous)  # a server keeps this build and the one it replaced
    return result


def ensure_index(model: str, data: str, out: str, view: str = "closed", progress: bool = True,
                 loaded=None) -> tuple[dict, bool]:
    """The index of ``model`` over ``data`` at ``out``: reused when its ``index.json`` records the same
    model weights (dimension and probe embedding, :func:`index.common.same_model`), data folder and view,
    else embedded (into ``out``'s sibling ``<name>-emb``) and built. ``loaded``: the model at ``model``, when
    the caller has it in memory already. Returns (``index.json``, built)."""
    import shutil

    from .common import same_model
    from .embed import describe_model, load_model, run_embed

    out_dir = Path(out)
    loaded = (loaded if loaded is not None else load_model(model)).eval()
    want = describe_model(loaded, model)
    info_path = out_dir / INFO_NAME
    if info_path.is_file():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        emb = info.get("embeddings") or {}
        if (not same_model(info.get("model") or {}, want) and emb.get("data") == str(Path(data).resolve())
                and emb.get("view") == view and info.get("text_encoder")):
            return info, False
    emb_dir = out_dir.with_name(out_dir.name + "-emb")
    shutil.rmtree(emb_dir, ignore_errors=True)  # embeddings of another model or data: start over
    run_embed(model, data, str(emb_dir), view=view, progress=progress, model=loaded)
    return run_build(str(emb_dir), str(out_dir), progress=progress), True
