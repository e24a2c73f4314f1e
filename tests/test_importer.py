"""Users' own data -> shards: folder, CSV, JSONL; determinism; bad rows dropped and counted; CLI."""
import hashlib
import json

import pytest
from PIL import Image

from brivl.cli import main
from brivl.data.views import load_view
from brivl.data.importer import import_pairs
from brivl.data.shards import DecodeStats, iter_samples, iter_tar


def _img(path, color=(200, 10, 10), size=(20, 12), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)


def _shard_digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def _samples(out, split="train"):
    m = json.loads((out / "manifest.json").read_text())
    stats = DecodeStats()
    got = list(iter_samples([out / s for s in m["splits"][split]["shards"]], stats))
    assert stats.n_skipped == 0
    return got


def test_folder_import_with_txt_and_json(tmp_path):
    src = tmp_path / "src"
    _img(src / "a.jpg")
    (src / "a.txt").write_text("a red box\n\n  red square \n")
    _img(src / "sub" / "b.png", (0, 0, 255))
    (src / "sub" / "b.json").write_text(json.dumps({"captions": {"fr": ["un carré bleu"], "en": ["blue", " "]}}))
    _img(src / "e.webp", fmt="WEBP")  # img2dataset-style json: caption + language
    (src / "e.json").write_text(json.dumps({"caption": "ein Bild", "language": "de", "status": "success"}))
    _img(src / "c.png")  # no caption
    (src / "d.jpg").write_bytes(b"garbage")  # undecodable
    (src / "d.txt").write_text("broken")
    m = import_pairs(src, tmp_path / "out", progress=False)
    assert m["dataset"] == "src" and list(m["splits"]) == ["train"]
    assert m["counts"] == {"candidates": 5, "rendered": 3, "dropped": {"no caption": 1, "undecodable image": 1}}
    assert m["languages"] == ["de", "en", "fr", "und"]
    samples, stats = load_view(tmp_path / "out", "closed")
    assert stats.n_skipped == 0
    by_source = {s["meta"]["source"]: s["meta"]["captions"] for s in samples}
    assert by_source == {"a.jpg": {"und": ["a red box", "red square"]},
                         "sub/b.png": {"en": ["blue"], "fr": ["un carré bleu"]},
                         "e.webp": {"de": ["ein Bild"]}}
    # keys: sha1 of the path relative to the source folder; image bytes kept as-is under a mapped extension
    raw = {r["__key__"]: r for p in (tmp_path / "out").glob("*.tar") for r in iter_tar(p)}
    key_a = hashlib.sha1(b"a.jpg").hexdigest()[:16]
    assert set(raw[key_a]) == {"__key__", "jpg", "txt", "json"}
    assert raw[key_a]["jpg"] == (src / "a.jpg").read_bytes() and raw[key_a]["txt"] == b"a red box"
    assert "webp" in raw[hashlib.sha1(b"e.webp").hexdigest()[:16]]
    assert list(raw) == sorted(raw)


def test_csv_merges_rows_by_image_and_language(tmp_path):
    _img(tmp_path / "img" / "x.png")
    _img(tmp_path / "img" / "y.jpeg", (0, 255, 0))
    _img(tmp_path / "abs" / "z.png", (0, 0, 9))
    (tmp_path / "pairs.csv").write_text(
        "\ufeffimage,caption,language\nimg/x.png,a cat,en\n./img/x.png,一只猫,zh\nimg/x.png,the cat,en\n"
        "img/y.jpeg,grass,\nimg/y.jpeg,,en\nimg/missing.png,nothing,en\n"
        f"{tmp_path / 'abs' / 'z.png'},absolute,en\nimg/empty.png,,\n,orphan caption,en\n", encoding="utf-8")
    m = import_pairs(tmp_path / "pairs.csv", tmp_path / "out", split="test", default_lang="xx", progress=False)
    assert m["dataset"] == "pairs" and m["splits"]["test"]["count"] == 3
    assert m["counts"]["dropped"] == {"missing image": 1, "no caption": 1, "no image path": 1}
    assert m["counts"]["candidates"] == 6 and m["languages"] == ["en", "xx", "zh"]
    got = {s["meta"]["source"]: s for s in _samples(tmp_path / "out", "test")}
    assert got["img/x.png"]["meta"]["captions"] == {"en": ["a cat", "the cat"], "zh": ["一只猫"]}
    assert got["img/y.jpeg"]["meta"]["captions"] == {"xx": ["grass"]}
    assert got["abs/z.png"]["meta"]["captions"] == {"en": ["absolute"]}
    assert got["img/x.png"]["key"] == hashlib.sha1(b"img/x.png").hexdigest()[:16]
    assert all(s["meta"]["split"] == "test" for s in got.values())


def test_csv_open_clip_aliases_and_tsv(tmp_path):
    _img(tmp_path / "x.png")
    (tmp_path / "a.csv").write_text("filepath,title\nx.png,hello\n")
    (tmp_path / "b.tsv").write_text("filepath\ttitle\nx.png\thello, world\n")
    assert import_pairs(tmp_path / "a.csv", tmp_path / "o1", progress=False)["counts"]["rendered"] == 1
    import_pairs(tmp_path / "b.tsv", tmp_path / "o2", progress=False)
    assert _samples(tmp_path / "o2")[0]["meta"]["captions"] == {"und": ["hello, world"]}


def test_jsonl_import_is_deterministic_and_resizes(tmp_path):
    _img(tmp_path / "p.png", size=(40, 20))
    _img(tmp_path / "q.bmp", size=(30, 30), fmt="BMP")  # not png/jpg/webp: re-encoded as PNG
    _img(tmp_path / "r.png")
    lines = [json.dumps({"image": "p.png", "caption": "wide"}),
             json.dumps({"image": "q.bmp", "caption": "sq", "language": "es"}),
             "{broken json", "[1, 2]", "",
             json.dumps({"image": "r.png", "caption": "  "})]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    m1 = import_pairs(tmp_path / "d.jsonl", tmp_path / "o1", progress=False)
    m2 = import_pairs(tmp_path / "d.jsonl", tmp_path / "o2", progress=False)
    assert m1 == m2 and m1["counts"]["dropped"] == {"malformed row": 2, "no caption": 1}
    assert _shard_digest(tmp_path / "o1") == _shard_digest(tmp_path / "o2") != {}
    raw = [r for p in sorted((tmp_path / "o1").glob("*.tar")) for r in iter_tar(p)]
    assert sorted(k for r in raw for k in r if k in ("png", "jpg", "bmp")) == ["png", "png"]
    # image_size: the shorter side resized, PNG; also deterministic, several shards with maxcount=1
    for d in ("s1", "s2"):
        m = import_pairs(tmp_path / "d.jsonl", tmp_path / d, image_size=10, maxcount=1, progress=False)
    assert m["splits"]["train"]["shards"] == ["train-000000.tar", "train-000001.tar"] and m["image_size"] == 10
    assert _shard_digest(tmp_path / "s1") == _shard_digest(tmp_path / "s2")
    sizes = {s["meta"]["source"]: s["image"].size for s in _samples(tmp_path / "s1")}
    assert sizes == {"p.png": (20, 10), "q.bmp": (10, 10)}


def test_corrupt_and_missing_images_are_dropped_not_fatal(tmp_path):
    _img(tmp_path / "ok.png")
    good = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(good[: len(good) // 2])  # truncated PNG
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"image": n, "caption": n}) + "\n" for n in
                                              ("ok.png", "trunc.png", "text.jpg", "gone.png", "gone.png")))
    m = import_pairs(tmp_path / "d.jsonl", tmp_path / "out", progress=False)
    assert m["counts"] == {"candidates": 4, "rendered": 1,
                           "dropped": {"missing image": 1, "undecodable image": 2}}
    assert [s["meta"]["captions"] for s in _samples(tmp_path / "out")] == [{"und": ["ok.png"]}]


def test_bad_sources_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder of images"):
        import_pairs(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(ValueError, match="unsupported source .*pass a folder"):
        import_pairs(tmp_path / "x.parquet", tmp_path / "out")
    (tmp_path / "bad.csv").write_text("foo,caption\n1,2\n")
    with pytest.raises(ValueError, match="'image' \\(or 'filepath'\\)"):
        import_pairs(tmp_path / "bad.csv", tmp_path / "out")
    (tmp_path / "nocap.jsonl").write_text(json.dumps({"image": "a.png"}) + "\n")
    with pytest.raises(ValueError, match="'caption' \\(or 'title'\\)"):
        import_pairs(tmp_path / "nocap.jsonl", tmp_path / "out")
    (tmp_path / "arr.jsonl").write_text(json.dumps([{"image": "a.png", "caption": "c"}]))
    with pytest.raises(ValueError, match="no JSON object"):
        import_pairs(tmp_path / "arr.jsonl", tmp_path / "out")
    (tmp_path / "f").mkdir()
    with pytest.raises(ValueError, match="split name"):
        import_pairs(tmp_path / "f", tmp_path / "out", split="train+val")


def test_cli_import(tmp_path, capsys):
    _img(tmp_path / "f" / "a.png")
    (tmp_path / "f" / "a.txt").write_text("hello")
    out = tmp_path / "cli"
    assert main(["data", "import", str(tmp_path / "f"), "--out", str(out), "--lang", "en", "--split", "val",
                 "--size", "8", "--maxcount", "5"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("wrote 1 samples") and "\n" not in line
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["val"]["count"] == 1 and manifest["languages"] == ["en"]
    samples, _ = load_view(out, "val")
    assert samples[0]["meta"]["captions"] == {"en": ["hello"]} and min(samples[0]["image"].size) == 8
    assert main(["data", "import", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
