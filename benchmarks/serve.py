"""Load test of ``python -m index serve`` on loopback, with the other ways to answer the same queries measured
in the same run.

For each concurrency (default 1, 8, 32) a pool of asyncio clients (keep-alive HTTP/1.1 on asyncio streams)
sends text queries in the nine languages to ``GET /search`` for ``--seconds`` (or ``--requests``, whichever
ends first) and reports requests/s, p50 and p99 end-to-end latency (HTTP included) and errors (must be 0).
Beside it:
* the same queries through the Python API in-process (``index.api.search_text``: encode + FAISS + SQLite);
* the same queries through ``python -m index search`` processes (one process per query: today's CLI path).
``--churn`` runs a writer during the HTTP rounds that adds an image (``POST /items``) and removes it again
(``DELETE /items/{id}``) in a loop; every read must still return k hits of the old or the new index
(count N or N + 1), and at the end the index holds exactly the N items it started with.
``--vector-index DIR`` also loads a vector-only index (e.g. 1M synthetic vectors built with
``python benchmarks/search.py``'s data) and hits ``POST /search/vector`` with random queries.

    python benchmarks/serve.py [--index data/index/brivl-emoji] [--workers 2] [--concurrency 1 8 32]
                               [--seconds 10] [--churn] [--vector-index DIR [--vector-only]]

Targets (issue 16): concurrency 1, emoji index: p50 <= 5 ms; concurrency 32: >= 500 requests/s, 0 errors.
Client and server share the 2 cores: the numbers include the load generator's own CPU.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUERIES = ["cat", "猫", "gato", "chat", "кошка", "قطة", "猫の顔", "고양이", "gatto", "red heart", "太阳", "pizza",
           "rocket", "月亮", "perro", "voiture", "цветок", "قلب", "りんご", "자동차", "fiore", "sun", "狗", "luna"]
TOKEN = "bench-token"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: str, workers: int, writes: bool, extra=()) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "index", "serve", "--index", index, "--port", str(port), "--workers", str(workers),
           *extra]
    if writes:
        cmd += ["--allow-writes", "--token", TOKEN]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return proc, url
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"server did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
    raise SystemExit("server did not answer /healthz within 60 s")


class RawHTTP:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: a load generator that costs the shared CPU
    far less than a general client (httpx spends more time per request than the server does)."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.reader = self.writer = None

    async def request(self, method: str, target: str, body: bytes = b"", content_type: str = "") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = f"{method} {target} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        header = await self.reader.readuntil(b"\r\n\r\n")
        status = int(header[9:12])
        length = 0
        for line in header.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return status, await self.reader.readexactly(length)

    async def close(self):
        if self.writer is not None:
            self.writer.close()


async def load(url: str, concurrency: int, seconds: float, max_requests: int, k: int, make_request,
               counts: tuple[int, ...] | None = None) -> dict:
    latencies, errors, bad = [], [], []
    stop_at = time.perf_counter() + seconds
    sent = 0

    async def client(i: int):
        nonlocal sent
        c = RawHTTP(url)
        try:
            while time.perf_counter() < stop_at and sent < max_requests:
                sent += 1
                method, target, body, ctype = make_request(sent)
                t = time.perf_counter()
                try:
                    status, data = await c.request(method, target, body, ctype)
                except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                    errors.append(type(e).__name__)
                    await c.close()
                    c = RawHTTP(url)
                    continue
                latencies.append(time.perf_counter() - t)
                if status != 200:
                    errors.append(f"HTTP {status}")
                    continue
                answer = json.loads(data)
                if len(answer["hits"]) != k or (counts and answer["count"] not in counts):
                    bad.append(answer["count"])
        finally:
            await c.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": len(latencies), "rps": len(latencies) / wall,
            "p50_ms": 1e3 * pct(latencies, 0.5), "p99_ms": 1e3 * pct(latencies, 0.99), "errors": len(errors),
            "inconsistent": len(bad), "error_kinds": sorted(set(errors))[:5]}


async def churn(url: str, stop: asyncio.Event, log: list) -> None:
    """Add one image and remove it again until ``stop``; every write must succeed."""
    import httpx
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 90)).save(buf, format="PNG")
    files = {"image": ("churn.png", buf.getvalue(), "image/png")}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        while not stop.is_set():
            r = await c.post("/items", files=files, data={"caption": "churn tile", "lang": "en"}, headers=auth)
            if r.status_code != 200 or not r.json()["ids"]:
                log.append(f"add: {r.status_code} {r.text[:200]}")
                return
            new_id = r.json()["ids"][0]
            r = await c.delete(f"/items/{new_id}", headers=auth)
            if r.status_code != 200:
                log.append(f"remove: {r.status_code} {r.text[:200]}")
                return
            log.append("ok")


def http_rounds(a, url: str, n_items: int) -> list[dict]:
    rows = []

    from urllib.parse import quote

    targets = [f"/search?q={quote(q)}&k={a.k}" for q in QUERIES]

    def text_request(i):
        return "GET", targets[i % len(targets)], b"", ""

    async def run_all():
        for c in a.concurrency:
            await load(url, c, 1.0, 50, a.k, text_request)  # warm the connections and the encoder
            log: list = []
            stop = asyncio.Event()
            writer = asyncio.create_task(churn(url, stop, log)) if a.churn else None
            r = await load(url, c, a.seconds, a.requests, a.k, text_request,
                           counts=(n_items, n_items + 1) if a.churn else None)
            if writer:
                stop.set()
                await writer
                r["churn_cycles"] = log.count("ok")
                r["churn_failures"] = [x for x in log if x != "ok"]
            rows.append(r)
            print(f"  HTTP  concurrency {c:3d}: {r['rps']:7.1f} req/s  p50 {r['p50_ms']:7.2f} ms  p99 "
                  f"{r['p99_ms']:7.2f} ms  errors {r['errors']}  inconsistent reads {r['inconsistent']}"
                  + (f"  add/remove cycles {r['churn_cycles']} (failures {len(r['churn_failures'])})"
                     if a.churn else ""), flush=True)
    asyncio.run(run_all())
    return rows


def time_in_process(index_dir: str, search, queries: list, n: int, k: int) -> dict:
    """p50 / p99 of ``search(idx, queries[i % len], k=k)`` over ``n`` calls on the index loaded once (after
    a warm-up call that loads the encoder)."""
    from index.api import load_index

    idx = load_index(index_dir)
    try:
        search(idx, queries[0], k=k)
        lat = []
        for i in range(n):
            t = time.perf_counter()
            search(idx, queries[i % len(queries)], k=k)
            lat.append(time.perf_counter() - t)
    finally:
        idx.close()
    return {"p50_ms": 1e3 * statistics.median(lat), "p99_ms": 1e3 * pct(lat, 0.99), "n": len(lat)}


def time_processes(commands: list[list[str]]) -> dict:
    """p50 wall time of each command run as a new process (``python -m index search ...``)."""
    lat = []
    for cmd in commands:
        t = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        lat.append(time.perf_counter() - t)
    return {"p50_ms": 1e3 * statistics.median(lat), "n": len(lat)}


def in_process(a) -> dict:
    from index.api import search_text

    r = time_in_process(a.index, search_text, [[q] for q in QUERIES], a.inproc, a.k)
    print(f"  Python API in-process (search_text, one query per call, n={r['n']}): p50 {r['p50_ms']:.2f} ms  "
          f"p99 {r['p99_ms']:.2f} ms", flush=True)
    return r


def cli_processes(a) -> dict:
    r = time_processes([[sys.executable, "-m", "index", "search", "--index", a.index, QUERIES[i % len(QUERIES)],
                         "-k", str(a.k), "--json"] for i in range(a.cli_runs)])
    print(f"  `python -m index search` process per query (n={r['n']}): p50 {r['p50_ms']:.0f} ms", flush=True)
    return r


def vector_rounds(a) -> dict:
    """HTTP ``POST /search/vector`` at each concurrency over ``--vector-index``, with the same queries through
    ``index.api.search_vector`` in-process and through ``python -m index search --vector`` processes."""
    import tempfile

    import numpy as np

    from benchmarks.vector_index import queries_path
    from index.api import search_vector

    info = json.loads((Path(a.vector_index) / "index.json").read_text())
    qfile = queries_path(Path(a.vector_index))
    if qfile.is_file():  # the dataset's own queries (benchmarks/vector_index.py)
        qs = np.load(qfile)[:256].astype("float32")
    else:
        qs = np.random.default_rng(0).standard_normal((256, info["dim"])).astype("float32")
        qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    what = f"{info['count']} x {info['dim']} {info['factory']}"
    inproc = time_in_process(a.vector_index, search_vector, [q[None] for q in qs], a.inproc, a.k)
    print(f"  vector, {what}: Python API in-process (search_vector, n={inproc['n']}): p50 {inproc['p50_ms']:.3f} ms  "
          f"p99 {inproc['p99_ms']:.3f} ms", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(tmp) / f"q{i}.npy" for i in range(a.cli_runs)]
        for i, f in enumerate(files):
            np.save(f, qs[i % len(qs)][None])
        cli_r = time_processes([[sys.executable, "-m", "index", "search", "--index", a.vector_index, "--vector",
                                 str(f), "-k", str(a.k), "--json"] for f in files])
    print(f"  vector, {what}: `python -m index search --vector` process per query (n={cli_r['n']}): "
          f"p50 {cli_r['p50_ms']:.0f} ms", flush=True)
    proc, url = start_server(a.vector_index, a.workers, False)
    rows = []
    try:
        bodies = [json.dumps({"vector": q.tolist(), "k": a.k}).encode() for q in qs]

        def vec_request(i):
            return "POST", "/search/vector", bodies[i % len(bodies)], "application/json"

        async def run_all():
            for c in a.concurrency:
                await load(url, c, 1.0, 50, a.k, vec_request)
                r = await load(url, c, a.seconds, a.requests, a.k, vec_request)
                rows.append(r)
                print(f"  HTTP vector, {what}, concurrency {c:3d}: "
                      f"{r['rps']:7.1f} req/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                      f"errors {r['errors']}", flush=True)
        asyncio.run(run_all())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    c1 = next((r for r in rows if r["concurrency"] == 1), None)
    if c1:
        print(f"vector, {what}, concurrency 1: HTTP p50 {c1['p50_ms']:.2f} ms = "
              f"{c1['p50_ms'] / inproc['p50_ms']:.1f}x the in-process API, "
              f"{cli_r['p50_ms'] / c1['p50_ms']:.0f}x faster than a CLI process per query", flush=True)
    return {"index": what, "http": rows, "in_process": inproc, "cli": cli_r}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", default=str(REPO / "data" / "index" / "brivl-emoji"),
                   help="text index (built by `bash scripts/demo.sh` when missing)")
    p.add_argument("--model", default=str(REPO / "models" / "brivl-emoji"))
    p.add_argument("--data", default=str(REPO / "data" / "emoji"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    p.add_argument("--requests", type=int, default=20000, help="at most this many per concurrency level")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--churn", action="store_true", help="add/remove loop during the HTTP rounds (copies the index)")
    p.add_argument("--inproc", type=int, default=500, help="in-process queries")
    p.add_argument("--cli-runs", type=int, default=5, help="`python -m index search` processes")
    p.add_argument("--vector-index", default=None, help="also load-test POST /search/vector on this index")
    p.add_argument("--vector-only", action="store_true", help="only the --vector-index rounds (no emoji index)")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args()

    if a.vector_only:
        if not a.vector_index:
            raise SystemExit("--vector-only needs --vector-index DIR (build one: python benchmarks/vector_index.py)")
        result = {"vector": vector_rounds(a)}
        if a.json:
            Path(a.json).write_text(json.dumps(result, indent=1))
        return
    if not (Path(a.index) / "index.json").is_file():
        from index.build import ensure_index

        print(f"building {a.index} from {a.model} over {a.data} ...", flush=True)
        ensure_index(a.model, a.data, a.index, progress=False)
    index_dir = a.index
    if a.churn:  # the writer changes the folder: work on a copy
        import shutil
        import tempfile

        index_dir = str(Path(tempfile.mkdtemp(prefix="serve-bench-")) / "index")
        shutil.copytree(a.index, index_dir)
    n = json.loads((Path(index_dir) / "index.json").read_text())["count"]
    print(f"index {a.index}: {n} items; server: {a.workers} worker(s); {os.cpu_count()} CPUs shared with the client")
    proc, url = start_server(index_dir, a.workers, a.churn)
    try:
        http = http_rounds(a, url, n)
        end_count = json.loads(urllib.request.urlopen(url + "/healthz").read())["count"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    if a.churn:
        print(f"  after the add/remove loop the index holds {end_count} items (started with {n})")
    result = {"index": a.index, "items": n, "workers": a.workers, "http": http, "in_process": in_process(a),
              "cli": cli_processes(a), "end_count": end_count}
    if a.vector_index:
        result["vector"] = vector_rounds(a)
    c1 = next((r for r in http if r["concurrency"] == 1), None)
    c32 = next((r for r in http if r["concurrency"] == 32), None)
    if c1:
        print(f"concurrency 1: HTTP p50 {c1['p50_ms']:.2f} ms (target <= 5) = "
              f"{c1['p50_ms'] / result['in_process']['p50_ms']:.2f}x the in-process API, "
              f"{result['cli']['p50_ms'] / c1['p50_ms']:.0f}x faster than a CLI process per query")
    if c32:
        print(f"concurrency 32: {c32['rps']:.0f} req/s (target >= 500), errors {c32['errors']}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
