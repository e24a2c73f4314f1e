"""index end to end on the tiny emoji data: embed (resume, stable ids), build, ONNX vs torch, add/remove,
atomic writes, on-disk IVF, and the CLI's one-line errors."""
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from brivl.data.transforms import to_batch

from brivl.data.views import load_view
from brivl.factory import create_model
from conftest import REPO
from index import api, meta
from index.build import run_build
from index.cli import main
from index.common import UserError, key_to_id
from index.embed import finished_shards, read_shard, run_embed
from index.onnx_text import PROBES
from index.textenc import OnnxTextEncoder, TorchTextEncoder

M9 = ["en", "zh", "es", "fr", "ru", "ar", "ja", "ko", "it"]
QUERIES = ["cat", "猫", "gato", "chat", "кошка", "قطة", "猫の顔", "고양이", "gatto", "red heart", "太阳", "pizza"]


def _count(data: Path) -> int:
    return json.loads((data / "manifest.json").read_text())["counts"]["rendered"]


def _snapshot(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _no_temp_left(folder: Path) -> bool:
    return not [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


# ---------------------------------------------------------------------------------------------- embed


def test_embed_shards_ids_and_resume(emoji_small, models, tmp_path):
    out = tmp_path / "emb"
    s = run_embed(str(models[0]), str(emoji_small), str(out), view="train", batch_size=16, progress=False)
    names = finished_shards(out)
    assert s["done"] == s["shards"] == len(names) >= 2 and s["resumed"] == 0
    model = create_model(str(models[0])).eval()
    samples, _ = load_view(emoji_small, "train")
    mean, std = model.image_mean_std
    want = model.embed_images(to_batch(samples, model.image_size, mean, std)).numpy()
    got = np.concatenate([read_shard(out, n)[0] for n in names])
    items = [it for n in names for it in read_shard(out, n)[2]]
    assert [it["key"] for it in items] == [s_["key"] for s_ in samples]
    assert np.abs(got - want).max() < 1e-5 and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    ids = np.concatenate([read_shard(out, n)[1] for n in names])
    assert ids.tolist() == [key_to_id(it["key"]) for it in items]
    assert set(items[0]["captions"]) >= set(M9) and items[0]["caption"] == items[0]["captions"]["en"][0]
    assert items[0]["source"].endswith(f".tar#{items[0]['key']}")

    # resume: only the shard whose output is missing is encoded again; the others are not rewritten
    first = out / f"{names[0]}.emb.npy"
    stamp = first.stat().st_mtime_ns
    (out / f"{names[-1]}.emb.npy").unlink()
    s2 = run_embed(str(models[0]), str(emoji_small), str(out), view="train", batch_size=16, progress=False)
    assert (s2["done"], s2["resumed"]) == (1, len(names) - 1) and first.stat().st_mtime_ns == stamp
    assert np.array_equal(np.concatenate([read_shard(out, n)[1] for n in finished_shards(out)]), ids)  # stable
    assert run_embed(str(models[0]), str(emoji_small), str(out), view="train", progress=False)["done"] == 0
    with pytest.raises(UserError, match="another model"):
        run_embed(str(models[1]), str(emoji_small), str(out), view="train", progress=False)


def test_embed_with_two_ddp_processes_gives_the_same_vectors(emoji_small, models, emb, tmp_path):
    """The multi-GPU / multi-node path, exercised: 2 CPU processes (gloo) split the shards between them."""
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "index", "embed", "--model", str(models[0]), "--data", str(emoji_small),
                        "--out", str(out), "--batch-size", "32", "--accelerator", "cpu", "--devices", "2",
                        "--strategy", "ddp", "--no-progress"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "rank 0 of 2:" in r.stdout and "rank 1 of 2:" in r.stdout

    def by_id(folder):
        vecs = {}
        for name in finished_shards(folder):
            e, ids, _ = read_shard(folder, name)
            vecs.update(zip(np.asarray(ids).tolist(), np.asarray(e, np.float32)))
        return vecs

    one, two = by_id(emb), by_id(out)
    assert set(one) == set(two) and len(one) == _count(emoji_small)
    assert max(float(np.abs(one[i] - two[i]).max()) for i in one) < 1e-5


def test_embed_image_folder(models, tmp_path):
    from PIL import Image

    src = tmp_path / "imgs"
    (src / "sub").mkdir(parents=True)
    Image.new("RGB", (20, 20), (255, 0, 0)).save(src / "red.png")
    Image.new("RGB", (20, 20), (0, 0, 255)).save(src / "sub" / "blue.jpg")
    (src / "sub" / "blue.txt").write_text("a blue square\n")
    (src / "bad.png").write_bytes(b"not an image")
    s = run_embed(str(models[0]), str(src), str(tmp_path / "out"), files_per_shard=2, progress=False)
    assert s["count"] == 2 and s["skipped"] == {"undecodable image": 1} and s["shards"] == 2
    items = [it for n in finished_shards(tmp_path / "out") for it in read_shard(tmp_path / "out", n)[2]]
    by_source = {Path(it["source"]).name: it for it in items}
    assert by_source["blue.jpg"]["captions"] == {"und": ["a blue square"]}
    assert by_source["blue.jpg"]["key"] == hashlib.sha1(b"sub/blue.jpg").hexdigest()[:16]  # as data import


# ---------------------------------------------------------------------------------------- build/search


def test_build_writes_a_consistent_index(built, emb, emoji_small):
    names = {p.name for p in built.iterdir()}
    assert {"index.faiss", "ids.npy", "meta.sqlite", "index.json", "text.onnx", "tokenizer.json"} <= names
    info = json.loads((built / "index.json").read_text())
    assert info["factory"] == "Flat" and info["factory_chosen"] and info["model"]["name"] == "nano"
    assert info["count"] == _count(emoji_small) and info["dim"] == 32 and info["tuning"]["recall"] == 1.0 and info["created"]
    idx = api.load_index(built)
    api.verify(idx)
    embs = [read_shard(emb, n) for n in finished_shards(emb)]
    x, ids = np.concatenate([e[0] for e in embs]), np.concatenate([e[1] for e in embs])
    items = [it for e in embs for it in e[2]]
    hits = api.search_vector(idx, x, k=3)
    assert [h[0].id for h in hits] == ids.tolist()  # each item finds itself first
    assert [h[0].key for h in hits] == [it["key"] for it in items]
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-5) and [h.rank for h in hits[0]] == [1, 2, 3]
    idx.close()


def test_onnx_text_encoder_matches_torch(built, models, emoji_small):
    info = json.loads((built / "index.json").read_text())
    model = create_model(str(models[0])).eval()
    onnx = OnnxTextEncoder(built, info["text_encoder"])
    samples, _ = load_view(emoji_small, "closed")
    texts = sorted({c for s in samples for lang in M9 for c in s["meta"]["captions"].get(lang, [])})
    texts += PROBES + QUERIES
    assert np.array_equal(onnx.tokenize(texts), model.tokenize(texts).numpy())
    diff = np.abs(onnx(texts) - model.embed_texts(texts).numpy()).max()
    assert diff < 1e-4, diff
    idx = api.load_index(built)
    by_onnx = api.search_text(idx, QUERIES, k=10)
    assert idx._text.kind == "onnx"
    idx._text = TorchTextEncoder(model)
    by_torch = api.search_text(idx, QUERIES, k=10)
    assert [[h.id for h in r] for r in by_onnx] == [[h.id for h in r] for r in by_torch]
    idx.close()


def test_index_without_onnx_falls_back_to_torch(built, tmp_path, capsys):
    copy = tmp_path / "noonnx"
    shutil.copytree(built, copy)
    (copy / "text.onnx").unlink()
    idx = api.load_index(copy)
    hits = api.search_text(idx, ["cat"], k=5)
    assert idx._text.kind == "torch" and len(hits[0]) == 5
    assert "no ONNX text encoder" in capsys.readouterr().err
    idx.close()
    assert main(["export-onnx", "--index", str(copy)]) == 0 and (copy / "text.onnx").is_file()


def test_search_cli_json_grid_without_torch(built, tmp_path):
    code = ("import sys; from index.cli import main; rc = main(sys.argv[1:]); "
            "bad = [m for m in ('torch', 'pytorch_lightning', 'open_clip', 'transformers') if m in sys.modules]; "
            "sys.exit(99 if bad else rc)")
    grid = tmp_path / "g.png"
    r = subprocess.run([sys.executable, "-c", code, "search", "--index", str(built), "一只猫", "قطة", "-k", "5",
                        "--json", "--grid", str(grid), "--lang", "zh"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["encoder"] == "onnx" and [len(q["hits"]) for q in out["results"]] == [5, 5]
    hit = out["results"][0]["hits"][0]
    assert set(hit) == {"rank", "score", "id", "key", "caption", "language", "source"} and hit["rank"] == 1
    from PIL import Image

    assert Image.open(grid).size[0] > 300
    r = subprocess.run([sys.executable, "-m", "index", "search", "--index", str(built), "cat", "-k", "3"],
                       capture_output=True, text=True, cwd=REPO)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 4 and lines[1].split()[0] == "1"


# ----------------------------------------------------------------------------------------- add/remove


def _keys_of(data, view):
    return [s["key"] for s in load_view(data, view)[0]]


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_add_and_remove_keep_metadata_in_step(emb, emoji_small, models, tmp_path, factory):
    out = tmp_path / "idx"
    run_build(str(emb), str(out), factory=factory, onnx=False, progress=False)
    val, n = _keys_of(emoji_small, "val"), _count(emoji_small)
    gone = val[:3]
    r = api.remove_items(out, keys=gone[:2], ids=[key_to_id(gone[2])])
    assert r["removed"] == 3 and r["tombstones"] == (factory != "Flat") and r["count"] == n - 3
    idx = api.load_index(out)
    api.verify(idx)
    assert meta.fetch(idx.db, [key_to_id(k) for k in gone]) == {}
    x = np.concatenate([read_shard(emb, n)[0] for n in finished_shards(emb)])
    ids = np.concatenate([read_shard(emb, n)[1] for n in finished_shards(emb)])
    rows = [int(np.where(ids == key_to_id(k))[0][0]) for k in gone]
    found = {h.id for hits in api.search_vector(idx, x[rows], k=n - 3) for h in hits}
    assert not found & {key_to_id(k) for k in gone} and len(found) == n - 3
    idx.close()
    with pytest.raises(UserError, match="not in the index"):
        api.remove_items(out, keys=gone[:1])
    if factory == "Flat":
        r = api.add_items(out, str(emoji_small), view="val", progress=False)
        assert (r["added"], r["already_indexed"], r["count"]) == (3, len(val) - 3, n)
        idx = api.load_index(out)
        api.verify(idx)
        top = api.search_vector(idx, x[rows], k=1)
        assert [h[0].key for h in top] == gone  # same keys -> same ids, found again
        idx.close()
        assert api.add_items(out, str(emoji_small), view="val", progress=False)["added"] == 0
    else:
        before = _snapshot(out)
        with pytest.raises(UserError, match="tombstones"):
            api.add_items(out, str(emoji_small), view="val", progress=False)
        assert _snapshot(out) == before


def test_failed_build_or_update_leaves_the_old_index(built, emb, tmp_path, monkeypatch):
    copy = tmp_path / "idx"
    shutil.copytree(built, copy)
    before = _snapshot(copy)
    import index.build as build_mod

    def boom(*a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(build_mod, "export_onnx_into", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        run_build(str(emb), str(copy), factory="HNSW32", progress=False)
    assert _snapshot(copy) == before and _no_temp_left(copy)
    monkeypatch.setattr(meta, "delete", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        api.remove_items(copy, ids=[int(np.load(copy / "ids.npy")[0])])
    assert _snapshot(copy) == before and _no_temp_left(copy)
    monkeypatch.undo()
    run_build(str(emb), str(copy), factory="HNSW32", onnx=False, progress=False)  # a good rebuild replaces it
    assert json.loads((copy / "index.json").read_text())["factory"] == "HNSW32" and _no_temp_left(copy)


def test_on_disk_ivf_build_is_memory_mapped(emb, tmp_path):
    out = tmp_path / "disk"
    info = run_build(str(emb), str(out), factory="IVF4,Flat", on_disk=True, onnx=False, progress=False)
    assert (out / "index.ivfdata").is_file() and info["on_disk"] and info["tuning"]["reached"]
    moved = tmp_path / "moved"
    out.rename(moved)  # the lists file is found next to the index, wherever the folder goes
    idx = api.load_index(moved)
    api.verify(idx)
    x = np.concatenate([read_shard(emb, n)[0] for n in finished_shards(emb)])
    ids = np.concatenate([read_shard(emb, n)[1] for n in finished_shards(emb)])
    assert [h[0].id for h in api.search_vector(idx, x, k=1)] == ids.tolist()
    idx.close()
    assert api.remove_items(moved, ids=ids[:2].tolist())["tombstones"]
    with pytest.raises(UserError, match="on-disk"):
        api.add_items(moved, str(emb), progress=False)


# ---------------------------------------------------------------------------------------------- errors


def test_cli_bad_input_one_line_errors(built, models, emoji_small, tmp_path):
    from PIL import Image

    bad_utf8 = tmp_path / "q.txt"
    bad_utf8.write_bytes(b"cat\n\xff\xfe broken\n")
    garbage = tmp_path / "x.png"
    garbage.write_bytes(b"\x89PNG not really")
    mismatch = tmp_path / "mismatch"
    shutil.copytree(built, mismatch)
    with sqlite3.connect(mismatch / "meta.sqlite") as c:
        c.execute("DELETE FROM items WHERE id = (SELECT MIN(id) FROM items)")
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    before = _snapshot(built)
    I = str(built)
    cases = {
        "empty query": (["search", "--index", I, ""], "empty"),
        "whitespace query": (["search", "--index", I, "  \t "], "empty"),
        "100 kB query": (["search", "--index", I, "猫" * 34_000], "bytes"),
        "non-UTF-8 queries file": (["search", "--index", I, "--queries", str(bad_utf8)], "UTF-8"),
        "undecodable image": (["search", "--index", I, "--image", str(garbage)], "decode"),
        "vector of wrong dimension": (["search", "--index", I, "--vector", "[1, 2, 3]"], "dimension"),
        "k = 0": (["search", "--index", I, "cat", "-k", "0"], "k must be"),
        "k > N": (["search", "--index", I, "cat", "-k", str(_count(emoji_small) + 1)], "exceeds"),
        "k not a number": (["search", "--index", I, "cat", "-k", "ten"], "invalid int"),
        "ids vs metadata": (["search", "--index", str(mismatch), "cat"], "do not match"),
        "missing index": (["search", "--index", str(tmp_path / "nope"), "cat"], "not found"),
        "no query": (["search", "--index", I], "give a text query"),
        "another model (add)": (["add", "--index", I, "--data", str(emoji_small), "--model", str(models[1])],
                                "another model"),
        "another model (image)": (["search", "--index", I, "--image", str(tmp_path / "ok.png"), "--model",
                                   str(models[1])], "another model"),
        "unknown key": (["remove", "--index", I, "--keys", "nope"], "not in the index"),
        "a style view to embed": (["embed", "--model", str(models[0]), "--data", str(emoji_small), "--view",
                                   "style:noto", "--out", str(tmp_path / "emb-style")], "takes splits"),
    }
    for name, (argv, expect) in cases.items():
        r = subprocess.run([sys.executable, "-m", "index", *argv], capture_output=True, text=True, cwd=REPO)
        err = r.stderr.strip()
        assert r.returncode == 2, (name, r.returncode)
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, (name, err)
        assert expect in err, (name, err)
        assert r.stdout == "", (name, r.stdout)
    assert _snapshot(built) == before and _no_temp_left(built)


def test_onnx_export_of_a_hugging_face_altclip_model(emoji_small, tmp_path):
    """The other model kind (transformers AltCLIPModel, dropout in its config) exports and matches torch."""
    from transformers import AltCLIPConfig, AltCLIPModel, AutoTokenizer

    from index.onnx_text import export_text_tower

    torch.manual_seed(0)
    text = dict(vocab_size=2000, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                project_dim=24, max_position_embeddings=40, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=24,
                  patch_size=6)
    folder = tmp_path / "tiny-altclip"
    AltCLIPModel(AltCLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(emoji_small / "tokenizer").save_pretrained(folder)
    model = create_model(str(folder)).eval()
    cfg = export_text_tower(model, tmp_path)
    assert cfg["max_abs_diff"] < 1e-4 and cfg["dim"] == 16 and not model.training
    onnx = OnnxTextEncoder(tmp_path, cfg)
    assert np.abs(onnx(QUERIES) - model.embed_texts(QUERIES).numpy()).max() < 1e-4
    assert np.array_equal(onnx.tokenize(QUERIES), model.tokenize(QUERIES).numpy())


# ---------------------------------------------------------------------------------------------- demo


def test_ensure_index_reuses_only_for_the_same_weights(emoji_small, models, tmp_path):
    from index.build import ensure_index

    out = tmp_path / "idx"
    info, built = ensure_index(str(models[0]), str(emoji_small), str(out), progress=False)
    assert built and info["count"] == _count(emoji_small) and info["text_encoder"]
    again, built = ensure_index(str(models[0]), str(emoji_small), str(out), progress=False)
    assert not built and again["created"] == info["created"]
    other, built = ensure_index(str(models[1]), str(emoji_small), str(out), progress=False)  # other weights: rebuilt
    assert built and other["model"]["probe"] != info["model"]["probe"]
    assert _no_temp_left(out)


def test_demo_answers_the_example_queries_from_the_index(emoji_small, models, tmp_path, capsys, caplog):
    args = ["demo", "--model", str(models[0]), "--data", str(emoji_small), "--index", str(tmp_path / "idx"),
            "--grid", str(tmp_path / "grid.png")]
    assert main(args) == 0
    out = capsys.readouterr().out
    # open_clip's "initialized randomly" warning is not shown for a model folder whose weights load next
    assert not [r for r in caplog.records if "No pretrained weights" in r.getMessage()]
    assert "(built;" in out and "text encoder: ONNX" in out and (tmp_path / "grid.png").is_file()
    from brivl.demo import DEMO_QUERIES

    lines = [ln for ln in out.splitlines() if " -> " in ln]
    assert len(lines) == len(DEMO_QUERIES) == 12
    for (lang, q), line in zip(DEMO_QUERIES, lines):
        assert line.strip().startswith(f"[{lang}] {q}")
    assert main(args) == 0 and "(reused;" in capsys.readouterr().out
