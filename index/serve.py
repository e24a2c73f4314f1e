"""Search as a service: an HTTP API and a web page over an index folder (what clip-retrieval's ``clip back``
and ``clip front`` give, for this repo's index format). A thin shell over :mod:`index.api`.

    python -m index serve --index runs/index/brivl-emoji [--host 127.0.0.1] [--port 8000] [--workers 1]
    python -m index serve --index DIR --allow-writes --token T     # or the token in $INDEX_SERVE_TOKEN

Endpoints (JSON; every error is a 4xx ``{"error": "<one line>"}``, never a traceback):

    GET    /search?q=…&k=10&lang=zh       text -> hits (rank, score, id, key, caption in ``lang``, source)
    POST   /search/image?k=10&lang=en     multipart field ``image`` -> hits (image -> image)
    POST   /search/vector                 {"vector": [...], "k": 10, "lang": "en"} -> hits
    GET    /items/{id}                    metadata; /items/{id}/image: the image (PNG)
    POST   /items                         (writes on) multipart ``image``, ``caption``, ``lang`` -> the new id
    DELETE /items/{id}                    (writes on) remove one item
    GET    /healthz, /metrics (Prometheus: requests and latency per stage: encode, search, metadata), / (page)

The index is read once per process and read again when its ``index.json`` changes (an add or remove by this
worker, another worker or the ``python -m index add/remove`` commands). An update builds a copy of the folder
and renames it in (:func:`index.common.update_folder`), so a request sees the old index or the new one,
never a mix, and nothing lives only in memory: a second worker or a restart serves the same results.
Uploaded images are kept under ``--uploads`` (default: ``<index>-uploads`` beside the index folder) so their
hits can still be shown. Requests are answered on the event loop (a search takes milliseconds); writes run in
a worker thread, one at a time, while reads go on against the current index.
"""
# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at definition
import asyncio
import hashlib
import io
import json
import os
import secrets
import time
from pathlib import Path
from urllib.parse import unquote_to_bytes

from . import api
from .common import INFO_NAME, UserError, key_to_id, read_info

WEB_DIR = Path(__file__).with_name("web")
TOKEN_ENV = "INDEX_SERVE_TOKEN"
CONFIG_ENV = "INDEX_SERVE_CONFIG"  # how `--workers N` hands the options to each worker process
MAX_K = 1000


class ServedIndex:
    """The current :class:`index.api.LoadedIndex` of a folder, re-read when ``index.json`` is replaced."""

    def __init__(self, path: str | os.PathLike, model: str | None = None):
        self.path, self.model = Path(path), model
        self.idx: api.LoadedIndex | None = None
        self._signature = None
        self.reloads = 0
        self.get()

    def _stat(self):
        st = os.stat(self.path / INFO_NAME)
        return st.st_ino, st.st_mtime_ns, st.st_size

    def get(self) -> api.LoadedIndex:
        try:
            signature = self._stat()
        except FileNotFoundError:
            if self.idx is not None:  # another process is renaming a new folder in: serve the one we have
                return self.idx
            read_info(self.path)  # raises the one-line UserError
            raise
        if signature != self._signature:
            try:
                new = api.load_index(self.path)
            except UserError:
                if self.idx is None:
                    raise
                return self.idx  # caught mid-rename by another process's update: the next request retries
            new.text_threads = 1  # one request at a time per worker: no thread pool to wake (or to spin)
            new.meta_cache_size = 100_000  # decoded metadata rows of hits (captions in every language)
            old, self.idx, self._signature = self.idx, new, signature
            if old is not None:
                if old.info.get("model") == new.info.get("model") and old.info.get("text_encoder") == \
                        new.info.get("text_encoder"):
                    new._text, new._model = old._text, old._model  # same encoder: keep it warm
                old.close()
                self.reloads += 1
        return self.idx


class Metrics:
    """Prometheus counters and latency histograms, one registry per app (tests build several apps)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        buckets = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5)
        self.requests = Counter("index_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("index_request_seconds", "end-to-end handler time", ["endpoint"],
                                 buckets=buckets, registry=self.registry)
        self.stage = Histogram("index_stage_seconds", "time per stage of a search", ["stage"], buckets=buckets,
                               registry=self.registry)

    def observe(self, timings: dict) -> None:
        for stage, seconds in timings.items():
            self.stage.labels(stage).observe(seconds)


def parse_k(value) -> int:
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise UserError(f"k must be an integer, got {str(value)[:40]!r}") from None
    if not 1 <= k <= MAX_K:
        raise UserError(f"k must be between 1 and {MAX_K}, got {k}")
    return k


def raw_query_params(query_string: bytes) -> dict[str, str]:
    """The URL's query parameters decoded as strict UTF-8 (Starlette would replace bad bytes silently)."""
    out = {}
    for part in query_string.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        decoded = []
        for raw in (unquote_to_bytes(name.replace(b"+", b" ")), unquote_to_bytes(value.replace(b"+", b" "))):
            try:
                decoded.append(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise UserError(f"the query string is not valid UTF-8 (byte {raw[e.start]:#04x} in "
                                f"{name.decode('ascii', 'replace')[:20]!r})") from None
        out[decoded[0]] = decoded[1]
    return out


def hits_json(hits: list, lang: str | None) -> list[dict]:
    """Hits as JSON; ids are int64, past JavaScript's 2**53, so each hit also carries them as a string and
    its image URL."""
    return [{**h.to_dict(lang), "id_str": str(h.id), "image": f"/items/{h.id}/image"} for h in hits]


def read_item_image(source: str | None) -> bytes:
    """PNG bytes of an indexed item's image (``shard.tar#key`` or a file), from the server's own metadata."""
    from .grid import load_source_images

    image = load_source_images([source]).get(source) if source else None
    if image is None:
        raise UserError("this item's image is not available (its source was moved or deleted)")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def decode_upload(data: bytes, limit: int):
    """A decoded PIL image from uploaded bytes, or a :class:`UserError` saying why not."""
    if not data:
        raise UserError("the upload is empty: send an image file in the multipart field 'image'")
    if len(data) > limit:
        raise UserError(f"the upload is over the limit of {limit} bytes (--max-upload-kb)")
    return api.open_image(data)


def save_upload(uploads: Path, data: bytes, caption: str, lang: str) -> Path:
    """Keep an uploaded image as ``uploads/<sha>/<sha>.<ext>`` with its caption (the folder format that
    ``python -m index add`` reads: captions in a same-stem ``.json``); returns the one-image folder."""
    from PIL import Image

    sha = hashlib.sha256(data).hexdigest()[:32]
    folder = uploads / sha
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(io.BytesIO(data)) as im:
        ext = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif"}.get(im.format or "", ".png")
    (folder / f"{sha}{ext}").write_bytes(data)
    (folder / f"{sha}.json").write_text(json.dumps({"captions": {lang: [caption]}}, ensure_ascii=False),
                                        encoding="utf-8")
    return folder


def create_app(index_dir: str | os.PathLike, model: str | None = None, allow_writes: bool = False,
               token: str | None = None, uploads: str | os.PathLike | None = None,
               max_upload_bytes: int = 4 << 20):
    """The FastAPI app serving ``index_dir`` (read once here: a bad folder fails now, with a one-line error)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException

    token = token or os.environ.get(TOKEN_ENV)
    if allow_writes and not token:
        raise UserError(f"--allow-writes needs a bearer token: pass --token or set ${TOKEN_ENV}")
    served = ServedIndex(index_dir, model)
    uploads = Path(uploads) if uploads else served.path.with_name(served.path.name + "-uploads")
    metrics = Metrics()
    write_lock = asyncio.Lock()
    app = FastAPI(title="index search", docs_url="/docs", redoc_url=None)
    app.state.served = served

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(UserError)
    async def user_error(request: Request, e: UserError):
        return error(404 if "not in the index" in str(e) else 400, str(e))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error(422, f"{where or 'request'}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception):  # logged by uvicorn; the client gets one line
        return error(500, f"internal error ({type(e).__name__}); the server keeps serving")

    class CountRequests:  # plain ASGI middleware: Starlette's BaseHTTPMiddleware costs ~1 ms a request
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.app(scope, receive, send)
            t, status = time.perf_counter(), [500]

            async def send_status(message):
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_status)
            finally:
                endpoint = getattr(scope.get("route"), "path", "unmatched")
                metrics.requests.labels(endpoint, str(status[0])).inc()
                metrics.latency.labels(endpoint).observe(time.perf_counter() - t)

    app.add_middleware(CountRequests)

    def check_writer(request: Request) -> None:
        if not allow_writes:
            raise HTTPException(403, "writes are off: start the server with --allow-writes and a token")
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "a valid 'Authorization: Bearer <token>' header is required for writes")

    def answer(idx: api.LoadedIndex, vectors, k: int, lang: str | None, timings: dict) -> dict:
        hits = api.search_vector(idx, vectors, k, timings=timings)[0]  # checks k and the vectors
        metrics.observe(timings)
        return {"hits": hits_json(hits, lang), "count": idx.count,
                "ms": {s: round(1e3 * v, 3) for s, v in timings.items()}}

    def encoded(encode, *args) -> tuple:
        t = time.perf_counter()
        vectors = encode(*args)
        return vectors, {"encode": time.perf_counter() - t}

    @app.get("/search")
    async def search(request: Request):
        params = raw_query_params(request.scope.get("query_string", b""))
        q = params.get("q")
        if q is None:
            raise UserError("no query: pass ?q=<text>")
        k, idx = parse_k(params.get("k", 10)), served.get()
        vectors, timings = encoded(api.embed_texts, idx, [q], served.model)
        return JSONResponse({"query": q, **answer(idx, vectors, k, params.get("lang") or None, timings)})

    @app.post("/search/image")
    async def search_image(request: Request, k: str = "10", lang: str | None = None):
        top_k = parse_k(k)
        image = decode_upload(await read_upload(request, "image"), max_upload_bytes)
        idx = served.get()
        vectors, timings = encoded(api.embed_images, idx, [image], served.model)
        return JSONResponse(answer(idx, vectors, top_k, lang, timings))

    @app.post("/search/vector")
    async def search_vector(request: Request):
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise UserError("the body must be JSON: {\"vector\": [...], \"k\": 10}") from None
        if not isinstance(body, dict) or "vector" not in body:
            raise UserError("the body must be a JSON object with a 'vector' list")
        vector = body["vector"]
        if not isinstance(vector, list) or any(isinstance(v, (list, dict, str, bool)) for v in vector):
            raise UserError("'vector' must be a flat list of numbers")
        idx = served.get()
        return JSONResponse(answer(idx, vector, parse_k(body.get("k", 10)), body.get("lang"), {}))

    async def read_upload(request: Request, field: str) -> bytes:
        if int(request.headers.get("content-length") or 0) > max_upload_bytes + 64 * 1024:
            raise UserError(f"the upload is over the limit of {max_upload_bytes} bytes (--max-upload-kb)")
        try:
            form = await request.form(max_files=1, max_fields=10)
        except Exception:  # malformed multipart bodies: one line, not a traceback
            raise UserError(f"send the image as multipart/form-data in the field {field!r}") from None
        upload = form.get(field)
        if upload is None or isinstance(upload, str):
            raise UserError(f"no file in the multipart field {field!r}")
        return await upload.read(max_upload_bytes + 1)

    def item_of(item_id: int) -> dict:
        idx = served.get()
        if item_id in idx.deleted:
            raise UserError(f"id {item_id} is not in the index")
        found = api.fetch_items(idx, {item_id})
        if item_id not in found:
            raise UserError(f"id {item_id} is not in the index")
        return found[item_id]

    @app.get("/items/{item_id}")
    async def get_item(item_id: int):
        it = item_of(item_id)
        return {"id": item_id, "id_str": str(item_id), "key": it["key"], "caption": it["caption"],
                "language": it["language"], "captions": it["captions"], "source": it["source"], "extra": it["extra"],
                "image": f"/items/{item_id}/image"}

    @app.get("/items/{item_id}/image")
    async def get_item_image(item_id: int):
        return Response(read_item_image(item_of(item_id)["source"]), media_type="image/png",
                        headers={"Cache-Control": "max-age=3600"})

    @app.post("/items")
    async def add_item(request: Request):
        check_writer(request)
        form_lang = request.query_params.get("lang", "und")
        data = await read_upload(request, "image")
        decode_upload(data, max_upload_bytes)
        form = await request.form()
        caption = str(form.get("caption") or "").strip()
        lang = str(form.get("lang") or form_lang)
        if not caption:
            raise UserError("a new item needs a caption (multipart field 'caption')")
        api.check_texts([caption])
        folder = save_upload(uploads, data, caption, lang)
        async with write_lock:
            result = await asyncio.to_thread(api.add_items, served.path, str(folder), model=served.model,
                                             progress=False)
        return {**result, "ids": [key_to_id(key) for key in result["keys"]]}

    @app.delete("/items/{item_id}")
    async def delete_item(item_id: int, request: Request):
        check_writer(request)
        async with write_lock:
            return await asyncio.to_thread(api.remove_items, served.path, [item_id])

    @app.get("/healthz")
    async def healthz():
        idx = served.get()
        return {"status": "ok", "index": str(served.path), "count": idx.count, "dim": idx.dim,
                "factory": idx.info.get("factory"), "updated": idx.info.get("updated"), "reloads": served.reloads,
                "writes": allow_writes}

    @app.get("/metrics")
    async def prometheus_metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/")
    async def page():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    @app.get("/static/{name}")
    async def static(name: str):
        path = WEB_DIR / name
        if name not in {p.name for p in WEB_DIR.iterdir()} or path.suffix not in (".js", ".css"):
            raise HTTPException(404, f"no such file: {name}")
        return FileResponse(path, media_type="text/javascript" if path.suffix == ".js" else "text/css")

    return app


def app_from_env():
    """App factory for ``uvicorn --factory`` worker processes: the options come in $INDEX_SERVE_CONFIG."""
    return create_app(**json.loads(os.environ[CONFIG_ENV]))


def serve(index_dir: str, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, **options) -> None:
    """Run the service with uvicorn (blocking). ``options``: :func:`create_app`'s keyword arguments."""
    import socket

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = {"index_dir": str(index_dir), **options}
    info = read_info(index_dir)
    if workers > 1 and info.get("backend") == "milvus" and not info["milvus"].get("uri"):
        raise UserError(f"{index_dir} keeps its vectors in an embedded milvus-lite folder, which one process opens "
                        "at a time: serve it with --workers 1, or build it on a Milvus server "
                        "(`python -m index build --backend milvus --uri http://HOST:19530`) for several workers")
    create_app(**config).state.served.get().close()  # fail now, in the parent, on a bad folder or option
    os.environ[CONFIG_ENV] = json.dumps(config)
    uv = uvicorn.Config("index.serve:app_from_env", factory=True, host=host, port=port, workers=workers,
                        log_level="warning")
    sock = uv.bind_socket()
    # accepted connections inherit TCP_NODELAY from the listening socket; without it a keep-alive client waits
    # ~40 ms per response (Nagle + delayed ACK) in uvicorn's multi-worker mode, where asyncio does not set it
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if workers > 1:
        Multiprocess(uv, sockets=[sock]).run()
    else:
        uvicorn.Server(uv).run(sockets=[sock])
