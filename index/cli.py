"""``python -m index``: embed images, build a FAISS index, add/remove items, search it.

    python -m index embed  --model models/brivl-emoji --data data/emoji --out runs/emb/emoji
    python -m index build  --emb runs/emb/emoji --out runs/index/emoji
    python -m index search --index runs/index/emoji "一只猫" -k 10
    python -m index search --index runs/index/emoji --queries queries.txt --json
    python -m index search --index runs/index/emoji --image cat.png --grid hits.png
    python -m index add    --index runs/index/emoji --data more_images/
    python -m index remove --index runs/index/emoji --keys 1f431

Text search loads only numpy, faiss, sqlite3, onnxruntime and tokenizers (the text tower was exported
to ONNX at build time), so a query in a new process takes well under a second. Bad input gives one
``error: ...`` line on stderr and exit status 2, and changes nothing on disk (``INDEX_DEBUG=1`` shows the
traceback instead).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

DEFAULT_MODEL = "models/brivl-emoji"


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error: ...`` line (exit 2), like every other error here."""

    def error(self, message):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ commands


def cmd_embed(a) -> None:
    from .embed import run_embed

    s = run_embed(a.model, a.data, a.out, view=a.view, dtype=a.dtype, batch_size=a.batch_size,
                  files_per_shard=a.files_per_shard, accelerator=a.accelerator, devices=_devices(a.devices),
                  num_nodes=a.num_nodes, num_workers=a.num_workers, precision=a.precision,
                  progress=not a.no_progress, strategy=a.strategy)
    rank = f"rank {s['rank']} of {s['world_size']}: " if s["world_size"] > 1 else ""
    print(f"{rank}embedded {s['count']} images into {s['done']} shard(s) of {s['out']}; "
          f"{s['resumed']} of {s['shards']} shard(s) were already done"
          + (f"; skipped {s['skipped']}" if s["skipped"] else ""))


def _devices(v: str):
    return int(v) if v.isdigit() else v


def cmd_build(a) -> None:
    from .build import run_build

    info = run_build(a.emb, a.out, factory=a.factory, max_memory=a.max_memory, target_recall=a.target_recall,
                     on_disk=a.on_disk, model=a.model, onnx=not a.no_onnx, ef_construction=a.ef_construction,
                     n_queries=a.tune_queries, seed=a.seed, progress=not a.no_progress, backend=a.backend,
                     uri=a.uri, milvus_index=a.milvus_index, race=not a.no_race)
    t = info["tuning"]
    print(f"built {a.out}: {info['count']} vectors, {info['factory']} {info['params'] or ''}, "
          f"recall@{t['recall_k']} {t['recall']:.3f} (target {t['target_recall']}, {t['tune_queries']} held-out "
          f"queries), {info['index_bytes'] / 2**20:.1f} MiB, {t['build_s']:.1f} s; text encoder: "
          f"{'onnx' if info['text_encoder'] else 'torch'}")


def cmd_export_onnx(a) -> None:
    from pathlib import Path

    from .api import load_index, torch_model
    from .common import INFO_NAME, atomic_write_json, now_iso, update_folder
    from .onnx_text import ExportError, export_text_tower

    idx = load_index(a.index)
    model = torch_model(idx, a.model)
    info = dict(idx.info)
    idx.close()

    def change(tmp: Path) -> None:
        for name in ("text.onnx", "tokenizer.json"):
            (tmp / name).unlink(missing_ok=True)
        try:
            info["text_encoder"] = export_text_tower(model, tmp)
        except ExportError as e:
            from .common import UserError

            raise UserError(f"cannot export the text tower: {e}") from e
        info["updated"] = now_iso()
        atomic_write_json(tmp / INFO_NAME, info)

    update_folder(a.index, change)
    print(f"exported text.onnx + tokenizer.json into {a.index} (max |onnx - torch| "
          f"{info['text_encoder']['max_abs_diff']:.1e})")


def cmd_add(a) -> None:
    from .api import add_items

    r = add_items(a.index, a.data, view=a.view, model=a.model, batch_size=a.batch_size,
                  files_per_shard=a.files_per_shard, progress=not a.no_progress)
    print(f"added {r['added']} items to {a.index} ({r['already_indexed']} already indexed); now {r['count']}"
          + (f"; skipped {r['skipped']}" if r["skipped"] else ""))


def cmd_remove(a) -> None:
    from .api import remove_items

    r = remove_items(a.index, ids=a.ids or (), keys=a.keys or ())
    print(f"removed {r['removed']} items from {a.index}; now {r['count']}"
          + (" (kept as tombstones: this index type cannot remove vectors in place)" if r["tombstones"] else ""))


def cmd_info(a) -> None:
    from .api import load_index, verify

    idx = load_index(a.index)
    if a.verify:
        verify(idx)
    info = idx.info
    print(json.dumps({k: info.get(k) for k in ("model", "dim", "factory", "params", "count", "deleted", "on_disk",
                                              "index_bytes", "created", "updated")}
                     | {"recall": info.get("tuning", {}).get("recall"),
                        "text_encoder": "onnx" if info.get("text_encoder") else "torch",
                        "verified": bool(a.verify)}, ensure_ascii=False, indent=2))
    idx.close()


def cmd_serve(a) -> None:
    from .common import UserError
    from .serve import serve

    if not 1 <= a.port <= 65535 or a.workers < 1 or a.max_upload_kb < 1:
        raise UserError(f"--port must be 1-65535, --workers and --max-upload-kb >= 1 (got {a.port}, {a.workers}, "
                        f"{a.max_upload_kb})")
    say(f"serving {a.index} on http://{a.host}:{a.port}/ ({a.workers} worker{'s' if a.workers > 1 else ''}, "
        f"writes {'on' if a.allow_writes else 'off'})")
    serve(a.index, a.host, a.port, a.workers, model=a.model, allow_writes=a.allow_writes, token=a.token,
          uploads=a.uploads, max_upload_bytes=a.max_upload_kb * 1024)


def read_queries_file(path: str) -> list[str]:
    from .common import UserError

    try:
        raw = open(path, "rb").read()
    except OSError as e:
        raise UserError(f"cannot read --queries {path}: {e.strerror or e}") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"--queries {path} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") \
            from e
    queries = [line for line in text.splitlines() if line.strip()]
    if not queries:
        raise UserError(f"--queries {path} has no non-empty line")
    return queries


def read_vector(value: str):
    import numpy as np

    from .common import UserError

    if os.path.isfile(value):
        if value.endswith(".npy"):
            try:
                return np.load(value, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise UserError(f"cannot read --vector {value}: {e}") from e
        try:
            value = open(value, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read --vector file: {e}") from e
    try:
        v = json.loads(value)
    except ValueError:
        try:
            v = [float(t) for t in value.replace(",", " ").split()]
        except ValueError:
            raise UserError("--vector must be a .npy file, a JSON list of numbers (or of lists), or such a file") \
                from None
    if isinstance(v, dict):
        v = v.get("vector", v.get("vectors"))
    return v


def cmd_search(a) -> None:
    from .api import load_index, search_image, search_text, search_vector
    from .common import UserError

    modes = sum(bool(x) for x in (a.query, a.queries, a.image, a.vector))
    if modes == 0:
        raise UserError("give a text query, --queries FILE, --image PATH or --vector V")
    if modes > 1:
        raise UserError("give only one of: text queries, --queries, --image, --vector")
    t0 = time.perf_counter()
    idx = load_index(a.index)
    t1 = time.perf_counter()
    try:
        if a.vector:
            labels, encoder = None, "vector"
            results = search_vector(idx, read_vector(a.vector), a.k)
            labels = [f"vector {i + 1}" for i in range(len(results))]
        elif a.image:
            labels, encoder = list(a.image), "torch (image)"
            results = search_image(idx, a.image, a.k, model=a.model)
        else:
            labels = read_queries_file(a.queries) if a.queries else list(a.query)
            results = search_text(idx, labels, a.k, model=a.model)
            encoder = idx._text.kind
        t2 = time.perf_counter()
        if a.grid:
            from .grid import save_grid

            say(f"grid: {save_grid(labels, results, a.grid, lang=a.lang)}")
    finally:
        idx.close()
    if a.json:
        print(json.dumps({"index": str(a.index), "k": a.k, "encoder": encoder,
                          "ms": {"load": round((t1 - t0) * 1e3, 2), "query": round((t2 - t1) * 1e3, 2)},
                          "results": [{"query": q, "hits": [h.to_dict(a.lang) for h in hits]}
                                      for q, hits in zip(labels, results)]}, ensure_ascii=False))
        return
    for n, (q, hits) in enumerate(zip(labels, results), 1):
        print(f"[{n}] {q}   ({encoder}; top {len(hits)} of {idx.count})")
        for h in hits:
            print(f"  {h.rank:>3}  {h.score:7.4f}  {h.id:>19}  {h.label(a.lang)}   {h.source or ''}")
    say(f"load {1e3 * (t1 - t0):.0f} ms, queries {1e3 * (t2 - t1):.0f} ms")


# --------------------------------------------------------------------------------------------- parser


def cmd_demo(a) -> None:
    from brivl.cli import CLIError

    from .common import UserError
    from .demo import run_demo

    try:
        run_demo(a.model, a.data, a.queries, grid=a.grid, index_dir=a.index)
    except CLIError as e:  # brivl's one-line input errors are this command's too
        raise UserError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m index", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)

    e = sub.add_parser("embed", help="images -> .npy embedding shards (resumable; Lightning predict, any number "
                                     "of GPUs / nodes)")
    e.add_argument("--model", default=DEFAULT_MODEL, help=f"model folder (default {DEFAULT_MODEL})")
    e.add_argument("--data", required=True, help="data folder with manifest.json, a .tar shard, or a folder of images")
    e.add_argument("--out", required=True, metavar="EMB_DIR", help="output folder of embedding shards")
    e.add_argument("--view", default="closed", help="splits of a data folder: closed (all), test, train+val ...")
    e.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="stored precision")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--files-per-shard", type=int, default=1000, help="images per shard for a plain image folder")
    e.add_argument("--accelerator", default="auto", help="Lightning accelerator (auto, cpu, gpu)")
    e.add_argument("--devices", default="auto", help="Lightning devices (auto, a number, or a list)")
    e.add_argument("--num-nodes", type=int, default=1)
    e.add_argument("--strategy", default="auto", help="Lightning strategy (auto; ddp for several CPU processes)")
    e.add_argument("--num-workers", type=int, default=0, help="data-loading workers per device")
    e.add_argument("--precision", default=None, help="Lightning precision, e.g. 16-mixed on GPUs")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_embed)

    b = sub.add_parser("build", help="embedding shards -> FAISS index folder (atomic; auto factory and tuning)")
    b.add_argument("--emb", required=True, metavar="EMB_DIR")
    b.add_argument("--out", required=True, metavar="INDEX_DIR")
    b.add_argument("--factory", default=None, help="FAISS factory string (default: chosen from N, d and "
                                                   "--max-memory: Flat, HNSW32,SQfp16, IVFk,Flat, HNSW32,SQ8, OPQm,IVFk,PQm)")
    b.add_argument("--max-memory", default="4G", help="memory budget of the index (default 4G)")
    b.add_argument("--target-recall", type=float, default=0.95, help="recall@10 the search parameters are tuned to")
    b.add_argument("--on-disk", action="store_true", help="larger than RAM: IVF blocks per shard merged on disk, "
                                                          "memory-mapped at search")
    b.add_argument("--model", default=None, help="model folder for the ONNX text encoder (default: the one "
                                                 "recorded by embed)")
    b.add_argument("--no-onnx", action="store_true", help="do not export the text tower (search then uses torch)")
    b.add_argument("--ef-construction", type=int, default=40, help="HNSW efConstruction")
    b.add_argument("--no-race", action="store_true", help="keep the rule's graph variant instead of timing fp32, "
                                                          "fp16 and SQ8 graphs on a sample and keeping the fastest")
    b.add_argument("--tune-queries", type=int, default=1000, help="held-out queries for tuning")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--no-progress", action="store_true")
    b.add_argument("--backend", choices=("faiss", "milvus"), default="faiss",
                   help="where the vectors live: a FAISS file (default) or a Milvus collection (index.milvus)")
    b.add_argument("--uri", default=None, help="Milvus server, e.g. http://127.0.0.1:19530 (default with --backend "
                                               "milvus: an embedded milvus-lite folder inside the index folder)")
    b.add_argument("--milvus-index", choices=("HNSW", "FLAT"), default="HNSW", help="Milvus index type")
    b.set_defaults(func=cmd_build)

    x = sub.add_parser("export-onnx", help="(re-)export the index model's text tower to ONNX into the index folder")
    x.add_argument("--index", required=True, metavar="INDEX_DIR")
    x.add_argument("--model", default=None, help="model folder (default: the one recorded in index.json)")
    x.set_defaults(func=cmd_export_onnx)

    ad = sub.add_parser("add", help="embed new images with the index's model and add them (no rebuild)")
    ad.add_argument("--index", required=True, metavar="INDEX_DIR")
    ad.add_argument("--data", required=True, help="data folder, .tar shard or image folder")
    ad.add_argument("--view", default="closed")
    ad.add_argument("--model", default=None, help="default: the model recorded in index.json (must be the same)")
    ad.add_argument("--batch-size", type=int, default=256)
    ad.add_argument("--files-per-shard", type=int, default=1000)
    ad.add_argument("--no-progress", action="store_true")
    ad.set_defaults(func=cmd_add)

    r = sub.add_parser("remove", help="remove items by id or key (no rebuild)")
    r.add_argument("--index", required=True, metavar="INDEX_DIR")
    r.add_argument("--ids", nargs="+", type=int, default=None)
    r.add_argument("--keys", nargs="+", default=None)
    r.set_defaults(func=cmd_remove)

    s = sub.add_parser("search", help="text / image / vector queries -> top-k hits",
                       description="Text queries use the ONNX text encoder in the index folder (no torch: fast in a "
                                   "new process); --image loads the torch model (seconds).")
    s.add_argument("query", nargs="*", help="text queries, any language")
    s.add_argument("--index", required=True, metavar="INDEX_DIR")
    s.add_argument("-k", type=int, default=10, help="hits per query (default 10)")
    s.add_argument("--queries", metavar="FILE", help="UTF-8 file, one query per line")
    s.add_argument("--image", nargs="+", metavar="PATH", help="image query (image -> image; uses torch: slow start)")
    s.add_argument("--vector", metavar="FILE_OR_JSON", help=".npy file, JSON list (or list of lists), or a file of it")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--grid", metavar="PNG", help="also save an image grid of the hits")
    s.add_argument("--lang", default=None, help="show captions in this language when the item has one")
    s.add_argument("--model", default=None, help="torch model for --image / an index without ONNX (default: "
                                                 "the one recorded in index.json)")
    s.set_defaults(func=cmd_search)

    v = sub.add_parser("serve", help="HTTP API + web page over an index (FastAPI; loaded once, reloaded on change)",
                       description="Endpoints: GET /search?q=&k=&lang=, POST /search/image, POST /search/vector, "
                                   "GET /items/{id}[/image], POST /items and DELETE /items/{id} (--allow-writes), "
                                   "GET /healthz, GET /metrics, GET / (the search page).")
    v.add_argument("--index", required=True, metavar="INDEX_DIR")
    v.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--workers", type=int, default=1, help="worker processes (each loads the index once)")
    v.add_argument("--model", default=None, help="torch model for image queries and adds (default: the one "
                                                 "recorded in index.json)")
    v.add_argument("--allow-writes", action="store_true", help="enable POST /items and DELETE /items/{id}")
    v.add_argument("--token", default=None, help="bearer token for writes (default: $INDEX_SERVE_TOKEN)")
    v.add_argument("--uploads", default=None, help="where added images are kept (default: INDEX_DIR-uploads)")
    v.add_argument("--max-upload-kb", type=int, default=4096, help="largest accepted upload (default 4096 KiB)")
    v.set_defaults(func=cmd_serve)

    i = sub.add_parser("info", help="print an index's summary (--verify: full id/metadata check)")
    i.add_argument("--index", required=True, metavar="INDEX_DIR")
    i.add_argument("--verify", action="store_true")
    i.set_defaults(func=cmd_info)
    dm = sub.add_parser("demo", help="the main job: retrieval tables, the emoji index and the example "
                                      "multilingual queries answered from it, with a grid of the hits")
    dm.add_argument("--model", default=DEFAULT_MODEL)
    dm.add_argument("--data", default="data/emoji")
    dm.add_argument("--queries", nargs="*", default=None)
    dm.add_argument("--index", default=None, help="index folder (default: data/index/<model name>, built if missing)")
    dm.add_argument("--grid", default="runs/demo/queries.png", help="where the image grid of the hits goes")
    dm.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    from .common import UserError

    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        args.func(args)
    except KeyboardInterrupt:
        say("error: interrupted")
        return 130
    except (UserError, FileNotFoundError, ValueError, UnicodeError, OSError, MemoryError) as e:
        if os.environ.get("INDEX_DEBUG"):
            raise
        say(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return 2
    except Exception as e:  # never a traceback for users; INDEX_DEBUG=1 shows it
        if os.environ.get("INDEX_DEBUG"):
            raise
        say(f"error: unexpected {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''} "
            "(INDEX_DEBUG=1 shows the traceback)")
        return 1
    return 0
