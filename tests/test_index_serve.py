"""index.serve: the HTTP API against the Python API it wraps, bad input as one-line 4xx errors, writes with
a token seen by a second worker, metrics, the CLI; and the web page in a real browser (Debian's chromium
driven by Playwright) over the shipped model's index of the full emoji set."""
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image

from conftest import REPO
from index import api
from index.common import read_info
from index.cli import main
from index.serve import create_app

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

TOKEN = "s3cret-token"


@pytest.fixture()
def index_copy(built, tmp_path):
    dst = tmp_path / "idx"
    shutil.copytree(built, dst)
    return dst


@pytest.fixture()
def client(index_copy):
    with TestClient(create_app(index_copy)) as c:
        yield c


def _png(color=(255, 0, 0), size=24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def _error(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"] and "Traceback" not in body["error"]
    return body["error"]


def test_text_vector_and_image_search_match_the_python_api(client, index_copy):
    idx = api.load_index(index_copy)
    try:
        for q in ("cat", "猫", "кошка"):
            want = api.search_text(idx, [q], k=5)[0]
            r = client.get("/search", params={"q": q, "k": 5})
            assert r.status_code == 200, r.text
            got = r.json()
            assert got["query"] == q and got["count"] == idx.count
            assert [h["id"] for h in got["hits"]] == [h.id for h in want]
            assert [h["score"] for h in got["hits"]] == pytest.approx([h.score for h in want], abs=1e-5)
            assert set(got["ms"]) == {"encode", "search", "metadata"}
            assert all(h["id_str"] == str(h["id"]) and h["image"] == f"/items/{h['id']}/image" for h in got["hits"])
        vec = api.embed_texts(idx, ["red heart"])[0]
        r = client.post("/search/vector", json={"vector": vec.tolist(), "k": 3, "lang": "zh"})
        want = api.search_vector(idx, vec, 3)[0]
        assert [h["id"] for h in r.json()["hits"]] == [h.id for h in want]
        zh = [h["caption"] for h in r.json()["hits"]]
        assert zh == [h.label("zh") for h in want]  # captions in the asked language
        # image -> image: an indexed render finds itself first (flat index, exact inner product)
        first = want[0]
        png = client.get(f"/items/{first.id}/image")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        r = client.post("/search/image", params={"k": 3}, files={"image": ("q.png", png.content, "image/png")})
        assert r.status_code == 200, r.text
        assert r.json()["hits"][0]["id"] == first.id and r.json()["hits"][0]["score"] == pytest.approx(1.0, abs=1e-3)
        item = client.get(f"/items/{first.id}").json()
        assert item["key"] == first.key and item["image"] == f"/items/{first.id}/image"
    finally:
        idx.close()


def test_bad_input_is_a_one_line_4xx_and_the_server_keeps_serving(client, index_copy):
    n = read_info(index_copy)["count"]
    assert "no query" in _error(client.get("/search"), 400)
    assert "empty" in _error(client.get("/search", params={"q": "   "}), 400)
    assert "UTF-8" in _error(client.get("/search?q=%FF%FE"), 400)
    assert "bytes long" in _error(client.get("/search", params={"q": "x" * 3000}), 400)
    assert "between 1" in _error(client.get("/search", params={"q": "cat", "k": 0}), 400)
    assert "integer" in _error(client.get("/search", params={"q": "cat", "k": "ten"}), 400)
    assert f"exceeds the {n} items" in _error(client.get("/search", params={"q": "cat", "k": min(n + 1, 1000)}), 400)
    dim = read_info(index_copy)["dim"]
    assert f"dimension {dim + 1}" in _error(client.post("/search/vector", json={"vector": [0.1] * (dim + 1)}), 400)
    assert "JSON" in _error(client.post("/search/vector", content=b"{not json"), 400)
    assert "flat list" in _error(client.post("/search/vector", json={"vector": ["a", "b"]}), 400)
    assert "cannot decode the uploaded image" in _error(
        client.post("/search/image", files={"image": ("x.png", b"not an image", "image/png")}), 400)
    assert "no file" in _error(client.post("/search/image", data={"other": "1"}), 400)
    assert "is not in the index" in _error(client.get("/items/12345"), 404)
    assert "item_id" in _error(client.get("/items/abc"), 422)
    assert "no such file" in _error(client.get("/static/index.html"), 404)  # only the page's .js and .css
    _error(client.get("/static/..%2F..%2Fcommon.py"), 404)  # no client-supplied path is opened
    assert "writes are off" in _error(client.delete("/items/1"), 403)
    r = client.get("/search", params={"q": "cat", "k": 2})  # still serving
    assert r.status_code == 200 and len(r.json()["hits"]) == 2
    with TestClient(create_app(index_copy, max_upload_bytes=1000)) as small:
        assert "over the limit of 1000 bytes" in _error(
            small.post("/search/image", files={"image": ("big.png", _png(size=200) * 3, "image/png")}), 400)


def test_writes_need_the_token_and_a_second_worker_sees_them(index_copy, models, tmp_path):
    uploads = tmp_path / "uploads"
    app = create_app(index_copy, allow_writes=True, token=TOKEN, uploads=uploads)
    other = create_app(index_copy)  # a second worker process's view of the same folder
    with TestClient(app) as w, TestClient(other) as r:
        n = w.get("/healthz").json()["count"]
        files = {"image": ("new.png", _png((12, 200, 40)), "image/png")}
        assert "Bearer" in _error(w.post("/items", files=files, data={"caption": "green tile"}), 401)
        assert "Bearer" in _error(w.post("/items", files=files, data={"caption": "green tile"},
                                         headers={"Authorization": "Bearer wrong"}), 401)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert "caption" in _error(w.post("/items", files=files, headers=auth), 400)
        added = w.post("/items", files=files, data={"caption": "green tile", "lang": "en"}, headers=auth)
        assert added.status_code == 200, added.text
        new_id = added.json()["ids"][0]
        assert added.json()["added"] == 1 and added.json()["count"] == n + 1
        # the other worker reloads from disk and finds the new image by itself
        assert r.get("/healthz").json()["count"] == n + 1
        hits = r.post("/search/image", files=files, params={"k": 1}).json()["hits"]
        assert hits[0]["id"] == new_id and hits[0]["caption"] == "green tile"
        assert r.get(f"/items/{new_id}/image").status_code == 200  # the upload is kept on disk
        assert any(uploads.rglob("*.png"))
        gone = w.delete(f"/items/{new_id}", headers=auth)
        assert gone.status_code == 200 and gone.json()["removed"] == 1
        assert r.get("/healthz").json()["count"] == n and r.get("/healthz").json()["reloads"] == 2
        assert "is not in the index" in _error(w.delete(f"/items/{new_id}", headers=auth), 404)
    # a restart serves the same folder
    with TestClient(create_app(index_copy)) as again:
        assert again.get("/healthz").json()["count"] == n
    assert read_info(index_copy)["count"] == n
    idx = api.load_index(index_copy)
    try:
        api.verify(idx)  # FAISS ids, ids.npy and meta.sqlite still agree
    finally:
        idx.close()


def test_metrics_page_and_static_files(client):
    client.get("/search", params={"q": "cat"})
    client.get("/search", params={"q": ""})
    text = client.get("/metrics").text
    for stage in ("encode", "search", "metadata"):
        assert f'index_stage_seconds_count{{stage="{stage}"}} 1.0' in text
    assert 'index_requests_total{endpoint="/search",status="200"} 1.0' in text
    assert 'index_requests_total{endpoint="/search",status="400"} 1.0' in text
    page = client.get("/")
    assert page.status_code == 200 and "<form" in page.text and "/static/app.js" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "/search/image" in js.text


def test_cli_serve_bad_options(built, capsys):
    assert main(["serve", "--index", str(built), "--port", "0"]) == 2
    assert "--port must be" in capsys.readouterr().err
    env_token = os.environ.pop("INDEX_SERVE_TOKEN", None)
    try:
        assert main(["serve", "--index", str(built), "--allow-writes"]) == 2
        assert "needs a bearer token" in capsys.readouterr().err
    finally:
        if env_token is not None:
            os.environ["INDEX_SERVE_TOKEN"] = env_token
    assert main(["serve", "--index", str(built) + "-missing"]) == 2
    assert "not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------- a real server + browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shipped_server(emoji_full, tmp_path_factory):
    """``python -m index serve`` (2 workers) over the shipped brivl-emoji index of every emoji."""
    from index.build import ensure_index

    out = tmp_path_factory.mktemp("served") / "brivl-emoji"
    ensure_index(str(REPO / "models" / "brivl-emoji"), str(emoji_full), str(out), progress=False)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "index", "serve", "--index", str(out), "--port", str(port),
                             "--workers", "2"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                    if json.load(r)["status"] == "ok":
                        break
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(proc.stdout.read().decode())
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_two_workers_answer_the_same(shipped_server):
    answers = set()
    for _ in range(8):
        with urllib.request.urlopen(shipped_server + "/search?q=%E7%8C%AB&k=5", timeout=5) as r:
            answers.add(tuple(h["key"] for h in json.load(r)["hits"]))
    assert len(answers) == 1 and "1f431" in next(iter(answers))  # 猫 -> 🐱 among the top 5


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (scripts/setup.sh installs it)")
def test_web_page_in_a_real_browser(shipped_server):
    sync_api = pytest.importorskip("playwright.sync_api")
    artifacts = REPO / "runs" / "test-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(shipped_server + "/")
            page.fill("#q", "猫")
            page.keyboard.press("Enter")  # keyboard only: type, Enter
            page.wait_for_selector("#hits .hit")
            assert "q=%E7%8C%AB" in page.url  # the query is in the URL: shareable
            hits = page.locator("#hits .hit")
            keys = [hits.nth(i).get_attribute("title") for i in range(hits.count())]
            cat = next(i for i, t in enumerate(keys) if "(1f431)" in t)  # 🐱 among the hits
            page.wait_for_function("[...document.querySelectorAll('#hits img')]"
                                   ".every(i => i.complete && i.naturalWidth > 0)")  # every hit's image shows
            page.screenshot(path=str(artifacts / "serve-text-query.png"), full_page=True)
            hits.nth(cat).click()
            page.wait_for_function("document.querySelector('#status').textContent.includes('similar images')",
                                   timeout=180_000)  # the first image query loads torch and the image tower
            assert "item=" in page.url and not page.locator("#query-image").is_hidden()
            first = page.locator("#hits .hit").first.get_attribute("title")
            assert "(1f431)" in first  # image search: the clicked emoji finds itself first
            page.screenshot(path=str(artifacts / "serve-image-query.png"), full_page=True)
            page.go_back()
            page.wait_for_function("document.querySelector('#q').value === '猫'")
        finally:
            browser.close()
    assert (artifacts / "serve-image-query.png").stat().st_size > 1000
