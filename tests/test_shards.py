"""WebDataset shards: corrupt members skipped and counted; deterministic, key-checking writer."""
import hashlib
import io
import struct
import tarfile
import zlib

import pytest
import torch
from PIL import Image

from brivl.data.shards import DecodeStats, ShardWriter, iter_samples, iter_tar


def _png(color=(0, 0, 0)):
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def _tar_with(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return path


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def test_corrupt_png_and_json_in_the_middle_are_skipped_and_counted(tmp_path):
    png = _png()
    shard = _tar_with(tmp_path / "s.tar", [
        ("a.png", png), ("a.json", b'{"captions": {"en": ["ok"]}}'),
        ("b.png", b"\x89PNG\r\n\x1a\n broken"), ("b.json", b'{"captions": {"en": ["x"]}}'),
        ("c.png", png), ("c.json", b"{not json"),
        ("d.png", png), ("d.txt", b"plain caption"),
        ("e.png", png), ("e.json", b'{"captions": {}}'), ("e.txt", b"from txt"),
    ])
    stats = DecodeStats()
    got = list(iter_samples([shard], stats))
    assert [s["key"] for s in got] == ["a", "d", "e"]
    assert got[0]["meta"]["captions"] == {"en": ["ok"]}
    assert got[1]["meta"]["captions"] == {"und": ["plain caption"]}
    assert got[2]["meta"]["captions"] == {"und": ["from txt"]}  # empty captions fall back to the txt
    assert stats.ok == 3 and stats.n_skipped == 2
    assert stats.skipped == {"corrupt image (UnidentifiedImageError)": 1, "corrupt json": 1}


def test_shard_writer_rejects_keys_with_dot_or_slash(tmp_path):
    w = ShardWriter(tmp_path, "x")
    for bad in ("a.b", "a/b"):
        with pytest.raises(ValueError, match="must not contain"):
            w.write({"__key__": bad, "txt": "t"})
    assert w.close() == [] and not list(tmp_path.glob("*.tar"))
    with pytest.raises(ValueError, match="maxcount"):
        ShardWriter(tmp_path, "x", maxcount=0)


def test_shard_writer_is_byte_identical_across_runs_and_round_trips(tmp_path):
    for d in ("w1", "w2"):
        with ShardWriter(tmp_path / d, "train", maxcount=2) as w:
            for i in range(5):
                w.write({"__key__": f"k{i}", "png": _png((i, i, i)), "txt": f"caption {i}",
                         "json": {"captions": {"en": [f"caption {i}"]}, "i": i}})
        assert w.shards == ["train-000000.tar", "train-000001.tar", "train-000002.tar"] and w.count == 5
    assert _digest(tmp_path / "w1") == _digest(tmp_path / "w2")
    assert not [p for p in (tmp_path / "w1").iterdir() if p.suffix != ".tar"]  # no temp files left
    shards = [tmp_path / "w1" / s for s in w.shards]
    assert [sorted(r) for r in iter_tar(shards[0])] == [["__key__", "json", "png", "txt"]] * 2
    stats = DecodeStats()
    got = list(iter_samples(shards, stats))
    assert [s["key"] for s in got] == [f"k{i}" for i in range(5)] and stats.ok == 5
    assert [s["meta"]["i"] for s in got] == list(range(5))


def test_header_claiming_huge_size_is_skipped_not_fatal(tmp_path):
    """A corrupt header can claim a decompression-bomb size: Pillow raises DecompressionBombError."""
    png = bytearray(_png())
    ihdr = struct.pack(">II", 20000, 20000) + bytes(png[24:29])  # 400M px > 2x Pillow's limit
    png[16:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    shard = _tar_with(tmp_path / "s.tar", [("a.png", bytes(png)), ("b.png", _png()), ("b.txt", b"ok")])
    stats = DecodeStats()
    assert [s["key"] for s in iter_samples([shard], stats)] == ["b"]
    assert stats.skipped == {"corrupt image (DecompressionBombError)": 1}


def test_train_augment_background_and_its_datamodule_setting(emoji_small, monkeypatch):
    """TrainAugment paints the background white with bg_min 255 and a light tint (channels in [180, 255])
    by default; ShardDataModule passes its scale_min / bg_min through (the diffusion config sets 255)."""
    import random

    from brivl.data import datamodule as dmod

    blank = Image.new("RGBA", (40, 40), (0, 0, 0, 0))  # all background
    rng = random.Random(0)
    white = dmod.TrainAugment(32, (0.5,) * 3, (0.5,) * 3, (1.0, 1.0), bg_min=255)(blank, rng) * 0.5 + 0.5
    assert white.shape == (3, 32, 32) and torch.allclose(white, torch.ones_like(white))
    tinted = dmod.TrainAugment(32, (0.5,) * 3, (0.5,) * 3, (1.0, 1.0))(blank, rng) * 0.5 + 0.5
    colour = tinted[:, 0, 0]
    assert torch.allclose(tinted, colour[:, None, None].expand_as(tinted))  # one flat tint
    assert colour.min() >= 180 / 255 - 1e-6 and not torch.allclose(colour, torch.ones(3))

    made = []
    real = dmod.TrainAugment
    monkeypatch.setattr(dmod, "TrainAugment", lambda *a, **kw: made.append((a, kw)) or real(*a, **kw))
    dm = dmod.ShardDataModule(data_dir=str(emoji_small), batch_size=4, num_workers=0, scale_min=1.0, bg_min=255)
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (4, 3, 32, 32)
    args, kw = made[-1]
    assert args[3] == (1.0, 1.0) and (kw.get("bg_min", args[4] if len(args) > 4 else None)) == 255


def test_cldr_emoji_categories(tmp_path):
    """labels.txt's UnicodeSets: single code points, ranges and {sequences}; keys as the dataset's ids."""
    from brivl.data.emoji import emoji_categories, emoji_id, parse_unicode_set

    assert parse_unicode_set("[a-cx{👨\u200d✈️}]") == ["a", "b", "c", "x", "👨\u200d✈️"]
    with pytest.raises(ValueError, match="UnicodeSet"):
        parse_unicode_set("abc")
    props = tmp_path / "properties"
    props.mkdir()
    (props / "labels.txt").write_text("# comment\n[😀-😂{👨\u200d✈️}] ; Smileys & People ; face-positive\n"
                                      "[🍎] ; Food & Drink ; food-fruit\n", encoding="utf-8")
    cats = emoji_categories(str(tmp_path))
    assert cats == {"1f600": "Smileys & People", "1f601": "Smileys & People", "1f602": "Smileys & People",
                    emoji_id("👨\u200d✈️"): "Smileys & People", "1f34e": "Food & Drink"}
    with pytest.raises(FileNotFoundError, match="unicode-cldr-core"):
        emoji_categories(str(tmp_path / "none"))


def test_family_key_joins_gender_skin_tone_and_hair_variants():
    from brivl.data.emoji import family_key

    pilots = {"1f468_200d_2708_fe0f", "1f469_200d_2708", "1f9d1_200d_2708", "1f9d1_1f3fd_200d_2708_fe0f"}
    assert {family_key(k) for k in pilots} == {"1f9d1_200d_2708"}
    assert family_key("1f64b_200d_2642_fe0f") == family_key("1f64b") == "1f64b"  # person raising hand, man ...
    assert family_key("1f468_200d_1f9b0") == family_key("1f469") == "1f9d1"  # hair and gender go
    assert family_key("1f431") == "1f431" and family_key("2764_fe0f") == "2764"
    assert family_key("1f468_200d_1f469_200d_1f467") == "1f9d1_200d_1f9d1_200d_1f9d2"  # a family stays a family
    assert family_key("1f431") != family_key("1f408")  # cat face and cat are different concepts


def test_style_augmentations_keep_the_shape_and_do_what_they_say():
    """grayscale: equal channels; outline: black-and-white line art; jitter and blur change the colours; every
    one keeps the alpha channel (the emoji's silhouette); off by default; the same rng gives the same image."""
    import random

    from brivl.data.transforms import TrainAugment

    img = Image.new("RGBA", (48, 48), (0, 0, 0, 0))
    for x in range(8, 40):
        for y in range(8, 40):
            img.putpixel((x, y), (230, 40 + 4 * x, 30 + 3 * y, 255) if (x // 8 + y // 8) % 2 else (20, 90, 200, 255))
    base = TrainAugment(48, (0.0,) * 3, (1.0,) * 3, (1.0, 1.0), 255)
    assert base.restyle(img, random.Random(0)).tobytes() == img.tobytes()  # nothing on by default

    def restyled(**kw):
        return TrainAugment(48, (0.0,) * 3, (1.0,) * 3, (1.0, 1.0), 255, **kw).restyle(img, random.Random(3))

    gray, line = restyled(grayscale=1.0), restyled(outline=1.0)
    jit, blur = restyled(jitter=0.4, jitter_p=1.0), restyled(blur=1.0)
    for out in (gray, line, jit, blur):
        assert out.mode == "RGBA" and out.getchannel("A").tobytes() == img.getchannel("A").tobytes()
        assert out.tobytes() != img.tobytes()
    r, g, b, _ = gray.split()
    assert r.tobytes() == g.tobytes() == b.tobytes()
    assert set(line.convert("RGB").getdata()) <= {(0, 0, 0), (255, 255, 255)} and (0, 0, 0) in set(line.convert("RGB").getdata())
    assert restyled(jitter=0.4, jitter_p=1.0).tobytes() == jit.tobytes()  # deterministic in its rng
