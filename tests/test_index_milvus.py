"""The Milvus backend (index.milvus): the same ids, metadata, search, add/remove and service as FAISS, checked
against exact search, on an embedded milvus-lite folder and on milvus-lite's own server on 127.0.0.1."""
import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from index import api, factory as fx  # noqa: E402
from index.build import run_build  # noqa: E402
from index.common import UserError, key_to_id  # noqa: E402
from index.embed import finished_shards, read_shard  # noqa: E402


def _vectors(emb):
    x = np.concatenate([np.asarray(read_shard(emb, n)[0], np.float32) for n in finished_shards(emb)])
    ids = np.concatenate([read_shard(emb, n)[1] for n in finished_shards(emb)])
    return x, ids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory):
    """``milvus-lite server`` on 127.0.0.1 (the URI path: the same client code a Milvus cluster gets)."""
    port = _free_port()
    data = tmp_path_factory.mktemp("milvus-server")
    proc = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data), "--host",
                             "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"milvus-lite server exited: {proc.stderr.read().decode()[-500:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


def _exact(x, ids, xq, k):
    _, rows = fx.exact_knn(xq, x, k)
    return ids[rows]


@pytest.mark.parametrize("where", ["embedded", "server"])
def test_milvus_backend_matches_exact_search_and_updates_in_step(emb, emoji_small, tmp_path, where, request):
    uri = request.getfixturevalue("milvus_server") if where == "server" else None
    x, ids = _vectors(emb)
    n = len(ids)
    out = tmp_path / "idx"
    info = run_build(str(emb), str(out), backend="milvus", uri=uri, milvus_index="FLAT", onnx=False, progress=False)
    assert info["backend"] == "milvus" and info["count"] == info["ntotal"] == n
    assert (info["milvus"]["db"] is None) == (where == "server") and not (out / "index.faiss").exists()
    idx = api.load_index(out)
    api.verify(idx)  # the same id set in Milvus, ids.npy and meta.sqlite
    q = x[::7]
    found = np.array([[h.id for h in hits] for hits in api.search_vector(idx, q, k=10)])
    assert np.array_equal(found, _exact(x, ids, q, 10))  # FLAT: exactly IndexFlatIP's ids, in order
    hits = api.search_vector(idx, x[:1], k=3)[0]
    assert hits[0].id == ids[0] and hits[0].score == pytest.approx(float(x[0] @ x[0]), abs=1e-4)
    idx.close()

    # remove three items, add them back: a new version of the collection each time, metadata in step
    gone = ids[:3]
    r = api.remove_items(out, ids=gone.tolist())
    assert r == {"removed": 3, "tombstones": False, "count": n - 3}
    idx = api.load_index(out)
    api.verify(idx)
    assert idx.index.ntotal == n - 3 and not idx.deleted
    assert not {h.id for hits in api.search_vector(idx, x[:3], k=n - 3) for h in hits} & set(gone.tolist())
    idx.close()
    keys = [s["key"] for s in _samples(emoji_small) if key_to_id(s["key"]) in set(gone.tolist())]
    sub = tmp_path / "sub"
    _subset(emoji_small, keys, sub)
    if where == "server":  # an orphan of a failed change (older than every version): the next change drops it
        from index import milvus as mv

        c = mv.connect(uri)
        mv.create_collection(c, "idx_v1", x.shape[1], "FLAT")
        c.close()
    r = api.add_items(out, str(sub), progress=False)
    assert r["added"] == 3 and r["count"] == n
    idx = api.load_index(out)
    api.verify(idx)
    assert [h[0].id for h in api.search_vector(idx, x[:3], k=1)] == gone.tolist()
    version = idx.info["milvus"]
    idx.close()
    if where == "server":  # the server keeps this version and the one it replaced, no other (the orphan went)
        from pymilvus import MilvusClient

        c = MilvusClient(uri)
        mine = [name for name in c.list_collections() if name.startswith("idx_v")]
        c.close()
        assert version["collection"] in mine and len(mine) == 2
    else:  # one embedded data folder: the current one
        assert [p.name for p in out.glob("*.milvus.db")] == [version["db"]]


def _samples(data):
    from brivl.data.views import load_view

    return load_view(data, "closed")[0]


def _subset(data, keys, out):
    """A data folder with only the samples of ``keys`` (for an add)."""
    from brivl.data.shards import ShardWriter, atomic_write_json

    out.mkdir()
    with ShardWriter(out, "train", 100) as w:
        for s in _samples(data):
            if s["key"] in keys:
                import io

                buf = io.BytesIO()
                s["image"].save(buf, format="PNG")
                w.write({"__key__": s["key"], "png": buf.getvalue(), "json": s["meta"]})
        shards = w.shards
    atomic_write_json(out / "manifest.json", {"splits": {"train": {"shards": shards, "count": len(keys)}}})


def test_milvus_hnsw_is_tuned_to_the_target_and_served_over_http(emb, built, tmp_path):
    from fastapi.testclient import TestClient

    from index.serve import create_app

    out = tmp_path / "hnsw"
    info = run_build(str(emb), str(out), backend="milvus", model=json.loads(
        (built / "index.json").read_text())["model"]["path"], progress=False)
    assert info["factory"] == "milvus:HNSW" and info["tuning"]["recall"] >= 0.95 and "efSearch" in info["params"]
    queries = ["cat", "红心", "pizza", "собака"]
    flat = api.load_index(built)
    exact = [{h.key: h.score for h in hits} for hits in api.search_text(flat, queries, k=10)]
    flat.close()
    with TestClient(create_app(out)) as c:
        got = [c.get("/search", params={"q": q, "k": 10}).json()["hits"] for q in queries]
        assert c.get("/healthz").status_code == 200
    idx = api.load_index(out)
    direct = [[h.key for h in hits] for hits in api.search_text(idx, queries, k=10)]
    idx.close()
    assert [[h["key"] for h in hits] for hits in got] == direct  # HTTP serves what the API finds
    # recall@10 against the exact FAISS results, and the scores of the hits both found agree
    found = sum(len(set(e) & {h["key"] for h in g}) for e, g in zip(exact, got))
    assert found / (10 * len(queries)) >= 0.8
    for e, g in zip(exact, got):
        for h in g:
            if h["key"] in e:
                assert h["score"] == pytest.approx(e[h["key"]], abs=1e-4)


def test_milvus_bad_input_is_one_line(emb, tmp_path):
    with pytest.raises(UserError, match="--uri is the address of a Milvus server"):
        run_build(str(emb), str(tmp_path / "a"), uri="http://127.0.0.1:1")
    with pytest.raises(UserError, match="--factory are FAISS options"):
        run_build(str(emb), str(tmp_path / "b"), backend="milvus", factory="Flat")
    port = _free_port()  # nothing listens there
    with pytest.raises(UserError, match=f"cannot open Milvus at http://127.0.0.1:{port}"):
        run_build(str(emb), str(tmp_path / "c"), backend="milvus", uri=f"http://127.0.0.1:{port}", onnx=False,
                  progress=False)
    assert not (tmp_path / "c").exists()


def test_embedded_milvus_is_one_process_at_a_time_with_clear_errors(emb, tmp_path):
    from index.serve import serve

    out = tmp_path / "idx"
    run_build(str(emb), str(out), backend="milvus", milvus_index="FLAT", progress=False)
    with pytest.raises(UserError, match="serve it with --workers 1"):
        serve(str(out), workers=2)
    idx = api.load_index(out)  # this process holds the embedded folder's lock
    try:
        r = subprocess.run([sys.executable, "-m", "index", "search", "--index", str(out), "cat"],
                           capture_output=True, text=True, timeout=120)
    finally:
        idx.close()
    assert r.returncode == 2 and "another process has it open" in r.stderr and "Traceback" not in r.stderr
    idx = api.load_index(out)  # released: opens again
    assert idx.index.ntotal == idx.count
    idx.close()
