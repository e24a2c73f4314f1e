"""Users' own data -> shards: folder, CSV, JSONL; determinism; bad rows dropped and counted."""
import hashlib
import io
import json
import tarfile

import pytest
from PIL import Image

from brivl.cli import main
from brivl.data.datamodule import load_view
from brivl.data.importer import import_pairs
from brivl.data.shards import DecodeStats, ShardWriter, iter_samples


def _img(path, color=(200, 10, 10), size=(20, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _shard_digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def test_folder_import_with_txt_and_json(tmp_path):
    src = tmp_path / "src"
    _img(src / "a.jpg")
    (src / "a.txt").write_text("a red box\nred square\n")
    _img(src / "sub" / "b.png", (0, 0, 255))
    (src / "sub" / "b.json").write_text(json.dumps({"captions": {"fr": ["un carré bleu"], "en": ["blue"]}}))
    _img(src / "c.png")  # no caption
    (src / "d.jpg").write_bytes(b"garbage")  # undecodable
    (src / "d.txt").write_text("broken")
    m = import_pairs(src, tmp_path / "out", progress=False)
    assert m["counts"]["rendered"] == 2
    assert m["counts"]["dropped"] == {"no caption": 1, "undecodable image": 1}
    samples, stats = load_view(tmp_path / "out", "closed")
    caps = sorted(json.dumps(s["meta"]["captions"], sort_keys=True) for s in samples)
    assert caps == sorted([json.dumps({"und": ["a red box", "red square"]}),
                           json.dumps({"en": ["blue"], "fr": ["un carré bleu"]}, sort_keys=True)])
    assert stats.n_skipped == 0 and m["languages"] == ["en", "fr", "und"]


def test_csv_merges_rows_by_image_and_language(tmp_path):
    _img(tmp_path / "img" / "x.png")
    _img(tmp_path / "img" / "y.png", (0, 255, 0))
    (tmp_path / "pairs.csv").write_text(
        "filepath,title,language\nimg/x.png,a cat,en\nimg/x.png,一只猫,zh\nimg/x.png,the cat,en\n"
        "img/y.png,grass,en\nimg/missing.png,nothing,en\n", encoding="utf-8")
    m = import_pairs(tmp_path / "pairs.csv", tmp_path / "out", split="test", progress=False)
    assert m["splits"]["test"]["count"] == 2 and m["counts"]["dropped"] == {"missing image": 1}
    samples = list(iter_samples(tmp_path / "out" / s for s in m["splits"]["test"]["shards"]))
    by_caption = {s["meta"]["captions"]["en"][0]: s["meta"]["captions"] for s in samples}
    assert by_caption["a cat"] == {"en": ["a cat", "the cat"], "zh": ["一只猫"]}


def test_jsonl_import_is_deterministic_and_resizes(tmp_path):
    _img(tmp_path / "p.png", size=(40, 20))
    _img(tmp_path / "q.png", size=(30, 30))
    (tmp_path / "d.jsonl").write_text(
        json.dumps({"image": "p.png", "caption": "wide"}) + "\n" + json.dumps({"image": "q.png", "caption": "sq",
                                                                                "language": "es"}) + "\n")
    import_pairs(tmp_path / "d.jsonl", tmp_path / "o1", image_size=10, progress=False)
    import_pairs(tmp_path / "d.jsonl", tmp_path / "o2", image_size=10, progress=False)
    assert _shard_digest(tmp_path / "o1") == _shard_digest(tmp_path / "o2")
    samples, _ = load_view(tmp_path / "o1", "train")
    assert sorted(min(s["image"].size) for s in samples) == [10, 10]


def test_bad_sources_and_cli(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="folder of images"):
        import_pairs(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(ValueError, match="unsupported"):
        import_pairs(tmp_path / "x.parquet", tmp_path / "out")
    (tmp_path / "bad.csv").write_text("foo,bar\n1,2\n")
    with pytest.raises(ValueError, match="'image'"):
        import_pairs(tmp_path / "bad.csv", tmp_path / "out")
    _img(tmp_path / "f" / "a.png")
    (tmp_path / "f" / "a.txt").write_text("hello")
    assert main(["data", "import", str(tmp_path / "f"), "--out", str(tmp_path / "cli"), "--lang", "en"]) == 0
    assert "wrote 1 samples" in capsys.readouterr().out
    assert main(["data", "import", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2


def _tar_with(tmp_path, members):
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return path


def test_corrupt_members_are_skipped_and_counted(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    png = buf.getvalue()
    shard = _tar_with(tmp_path, [
        ("a.png", png), ("a.json", b'{"captions": {"en": ["ok"]}}'),
        ("b.png", b"\x89PNG broken"), ("b.json", b'{"captions": {"en": ["x"]}}'),
        ("c.png", png), ("c.json", b"{not json"),
        ("d.png", png), ("d.txt", b"plain caption"),
    ])
    stats = DecodeStats()
    got = list(iter_samples([shard], stats))
    assert [s["key"] for s in got] == ["a", "d"]
    assert got[1]["meta"]["captions"] == {"und": ["plain caption"]}
    assert stats.ok == 2 and stats.n_skipped == 2 and set(stats.skipped) == {"corrupt image (UnidentifiedImageError)",
                                                                               "corrupt json"}


def test_shard_writer_is_deterministic_and_checks_keys(tmp_path):
    for d in ("w1", "w2"):
        with ShardWriter(tmp_path / d, "train", maxcount=2) as w:
            for i in range(5):
                w.write({"__key__": f"k{i}", "txt": f"caption {i}", "json": {"i": i}})
    assert len(_shard_digest(tmp_path / "w1")) == 3
    assert _shard_digest(tmp_path / "w1") == _shard_digest(tmp_path / "w2")
    with pytest.raises(ValueError, match="must not contain"):
        ShardWriter(tmp_path / "w3", "x").write({"__key__": "a.b", "txt": "t"})
