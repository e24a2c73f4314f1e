"""The emoji data in three drawing styles (Noto, Twemoji, OpenMoji) and the concept-family split."""
import hashlib
import json

import pytest

from brivl.cli import main
from brivl.data.views import load_view
from brivl.data.emoji import STYLES, MissingSourceError, build_emoji_dataset, family_key, split_of

M9 = ["en", "zh", "es", "fr", "ru", "ar", "ja", "ko", "it"]


@pytest.fixture(scope="module")
def styled(tmp_path_factory):
    out = tmp_path_factory.mktemp("styled") / "data"
    assert main(["data", "emoji", "--out", str(out), "--limit", "90", "--langs", *M9, "--styles", *STYLES,
                 "--split-by", "family", "--vocab-size", "0", "--maxcount", "60"]) == 0
    return out


def test_three_styles_one_split_per_concept(styled):
    m = json.loads((styled / "manifest.json").read_text())
    assert set(m["styles"]) == set(STYLES) and m["split"]["by"].startswith("concept family")
    for st, info in m["styles"].items():
        assert info["rendered"] > 60 and info["license"] and info["attribution"]  # most concepts in every style
    assert sum(v["rendered"] for v in m["styles"].values()) == m["counts"]["rendered"]
    samples, stats = load_view(styled, "closed")
    assert not stats.skipped and len(samples) == m["counts"]["rendered"]
    by_concept = {}
    for s in samples:
        meta = s["meta"]
        style = meta.get("style", "noto")
        assert s["key"] == (meta["id"] if style == "noto" else f"{meta['id']}-{style}")
        assert meta["family"] == family_key(meta["id"])
        by_concept.setdefault(meta["id"], set()).add((style, meta["split"]))
    for concept, seen in by_concept.items():
        assert len({split for _, split in seen}) == 1, concept  # every style of a concept in one split
    families = {}
    for s in samples:  # and every member of a family in one split
        families.setdefault(s["meta"]["family"], set()).add(s["meta"]["split"])
    assert all(len(v) == 1 for v in families.values())
    # the same concept looks different in each style
    noto = {s["meta"]["id"]: s["image"] for s in samples if "style" not in s["meta"]}
    other = [s for s in samples if s["meta"].get("style") == "twemoji" and s["meta"]["id"] in noto]
    assert other and all(s["image"].tobytes() != noto[s["meta"]["id"]].tobytes() for s in other)


def test_styled_build_is_byte_identical(styled, tmp_path):
    again = tmp_path / "again"
    build_emoji_dataset(again, langs=M9, limit=90, styles=list(STYLES), split_by="family", maxcount=60,
                        progress=False)
    m = json.loads((styled / "manifest.json").read_text())
    for split in m["splits"].values():
        for shard in split["shards"]:
            assert hashlib.sha256((styled / shard).read_bytes()).digest() == \
                hashlib.sha256((again / shard).read_bytes()).digest()


def test_family_split_keeps_variants_together():
    pilots = ["1f468_200d_2708", "1f469_200d_2708", "1f9d1_200d_2708", "1f9d1_1f3fd_200d_2708"]
    for seed in range(20):
        assert len({split_of(k, 0.3, 0.3, seed, by="family") for k in pilots}) == 1
    # by id they do not always stay together (the leak the family split closes)
    assert any(len({split_of(k, 0.3, 0.3, seed) for k in pilots}) > 1 for seed in range(20))
    with pytest.raises(ValueError, match="split by 'id' or 'family'"):
        split_of("1f431", 0.1, 0.1, by="name")


def test_eval_counts_any_render_of_the_concept(styled, models, capsys):
    assert main(["eval", "--model", str(models[0]), "--data", str(styled), "--langs", "en", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    samples, _ = load_view(styled, "closed")
    concepts = {s["meta"]["id"] for s in samples}
    assert res["n_images"] == len(samples) and res["languages"]["en"]["n_queries"] == len(concepts)


def test_missing_style_sources_name_the_fix(tmp_path):
    with pytest.raises(MissingSourceError, match="scripts/setup.sh"):
        build_emoji_dataset(tmp_path / "x", styles=["twemoji"], twemoji_dir=tmp_path / "nowhere", limit=5,
                            progress=False)
    with pytest.raises(ValueError, match="unknown style 'comic'"):
        build_emoji_dataset(tmp_path / "y", styles=["comic"], limit=5, progress=False)


def test_style_views_against_the_keys(styled):
    """``style:NAME`` keeps one style's renders; joined with splits (``test+style:openmoji``) it intersects them;
    each equals the filter written out over the closed view, and ``view_size`` counts it."""
    from brivl.data.views import view_size

    closed, _ = load_view(styled, "closed")
    style = {s["key"]: s["meta"].get("style", "noto") for s in closed}
    split = {s["key"]: s["meta"]["split"] for s in closed}
    cases = {"style:openmoji": lambda k: style[k] == "openmoji",
             "test+style:openmoji": lambda k: style[k] == "openmoji" and split[k] == "test",
             "train+val+style:noto+style:twemoji": lambda k: style[k] in ("noto", "twemoji") and split[k] != "test",
             "test": lambda k: split[k] == "test"}
    for view, keep in cases.items():
        keys = [s["key"] for s in load_view(styled, view)[0]]
        assert keys == [k for k in style if keep(k)] and keys, view
        assert view_size(styled, view) == len(keys), view


def test_unknown_style_or_view_lists_the_known_ones(styled, emoji_small, capsys):
    with pytest.raises(ValueError, match="this data has the styles noto, openmoji, twemoji"):
        load_view(styled, "test+style:comic")
    with pytest.raises(ValueError, match=r"splits .* style:noto, style:openmoji, style:twemoji"):
        load_view(styled, "tset")
    with pytest.raises(ValueError, match="this data has the styles noto "):  # a Noto-only build
        load_view(emoji_small, "style:twemoji")
    assert main(["eval", "--model", "brivl-nano", "--data", str(styled), "--view", "style:comic"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown style 'comic'") and err.count("\n") == 1


def test_training_stream_keeps_only_the_view_styles(styled):
    """The training stream of ``train+style:noto+style:twemoji`` draws no OpenMoji render (the held-out style
    protocol), and its epoch is sized by the view."""
    from brivl.data.datamodule import ShardDataModule

    seen = []
    dm = ShardDataModule(data_dir=str(styled), train_view="train+style:noto+style:twemoji", batch_size=4,
                         num_workers=0, langs=["en"], shuffle_buffer=1)
    import brivl.data.datamodule as dmod

    real = dmod._TrainMap.__call__
    try:
        dmod._TrainMap.__call__ = lambda self, raw, rng: (seen.append(raw["__key__"]), real(self, raw, rng))[1]
        batches = list(dm.train_dataloader())
    finally:
        dmod._TrainMap.__call__ = real
    assert batches and seen and not [k for k in seen if k.endswith("-openmoji")]
    assert {k.rsplit("-", 1)[-1] for k in seen if "-" in k} == {"twemoji"}
    n = len(load_view(styled, "train+style:noto+style:twemoji")[0])
    assert len(batches) == n // 4


def test_parallel_text_reads_each_concept_once_in_any_number_of_styles(styled):
    from altclip.data import cldr_pairs

    samples, _ = load_view(styled, "train")
    corpus = cldr_pairs(str(styled), "train")
    concepts = {s["meta"]["id"] for s in samples}
    assert len(samples) > len(concepts)  # several renders per concept
    assert set(corpus.keys) == concepts  # keyed by the concept id, not the render
    first = {}
    for s in samples:
        first.setdefault(s["meta"]["id"], s)
    # each concept contributes exactly its names and keyword lists once: as many pairs as a one-style build
    expected = sum(len(names) + bool((s["meta"].get("keywords") or {}).get(lang) and s["meta"]["keywords"].get("en"))
                   for s in first.values() for lang, names in s["meta"]["captions"].items())
    assert len(corpus.pairs) == expected
