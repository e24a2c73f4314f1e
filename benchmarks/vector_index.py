"""A vector-only index folder of FAISS's synthetic data, for the 1M-vector round of ``benchmarks/serve.py``.

    python benchmarks/vector_index.py --n 1000000 --out runs/bench/vector-1m     # ~1 min data + the build
    python benchmarks/serve.py --vector-index runs/bench/vector-1m

The database is ``SyntheticDataset(512, 100000, N, 1000, metric='IP')`` (the data of ``benchmarks/search.py``;
its 1000 queries are saved beside the folder as ``<out>.queries.npy``, and the load test sends them),
written as ``python -m index embed`` writes embedding shards (ids from keys ``synthetic/<row>``, a metadata row
each, no model) and built by ``index.build.run_build`` as ``python -m index build`` would: the same factory
choice, graph race and efSearch tuning. There is no text tower, so it answers ``POST /search/vector`` only.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_embeddings(x: np.ndarray, emb_dir: Path, shard_size: int = 100_000) -> None:
    """``x`` (N, d) as embedding shards + ``embed.json`` (no model), in ``python -m index embed``'s format."""
    from index.common import atomic_write_json, key_to_id
    from index.embed import EMBED_INFO, write_shard

    emb_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for s, start in enumerate(range(0, len(x), shard_size)):
        name = f"synthetic-{s:06d}"
        rows = range(start, min(start + shard_size, len(x)))
        items = [{"id": key_to_id(f"synthetic/{r}"), "key": f"synthetic/{r}", "caption": "", "language": "",
                  "captions": {}, "source": "faiss SyntheticDataset", "extra": {}} for r in rows]
        write_shard(emb_dir, name, x[start:start + len(rows)], items, "float32")
        names.append(name)
    atomic_write_json(emb_dir / EMBED_INFO, {"model": {"name": None, "path": None, "dim": int(x.shape[1])},
                                             "dtype": "float32", "data": "faiss SyntheticDataset(512, 100000, "
                                             f"{len(x)}, 1000, metric='IP')", "view": None, "shards": names})


def queries_path(index_dir: Path) -> Path:
    """The dataset's 1000 queries, saved beside the index folder (``<out>.queries.npy``)."""
    return index_dir.with_name(index_dir.name + ".queries.npy")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--out", default=str(REPO / "runs" / "bench" / "vector-1m"))
    p.add_argument("--max-memory", default="4G")
    a = p.parse_args(argv)
    if a.n < 1:
        p.error(f"--n must be >= 1, got {a.n}")
    from faiss.contrib.datasets import SyntheticDataset

    from index.build import run_build

    out = Path(a.out)
    emb = out.with_name(out.name + "-emb")
    shutil.rmtree(emb, ignore_errors=True)
    print(f"SyntheticDataset(512, 100000, {a.n}, 1000, metric='IP') -> {emb}", flush=True)
    ds = SyntheticDataset(512, 100_000, a.n, 1000, metric="IP")
    write_embeddings(np.ascontiguousarray(ds.get_database()), emb)
    np.save(queries_path(out), np.ascontiguousarray(ds.get_queries()))  # the load test's queries (not in the index)
    del ds
    info = run_build(str(emb), str(out), max_memory=a.max_memory, onnx=False)
    shutil.rmtree(emb)  # the index folder holds what serving needs
    print(json.dumps({k: info[k] for k in ("count", "dim", "factory", "params", "index_bytes")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
