"""Covered languages (``--langs all``), the vocabulary measurement and the corpus's skipped rows."""
import json

import pytest

from brivl.data.views import load_view
from brivl.data.emoji import M9
from brivl.data.languages import covered_languages, language_coverage, resolve_langs
from brivl.data.shards import ShardWriter, atomic_write_json


def _data(tmp_path, names_per_sample):
    """A data folder whose samples have names in the given languages (tiny PNGs)."""
    from PIL import Image
    import io

    buf = io.BytesIO()
    Image.new("RGBA", (8, 8), (255, 0, 0, 255)).save(buf, format="PNG")
    with ShardWriter(tmp_path, "train", maxcount=3) as w:
        for i, names in enumerate(names_per_sample):
            meta = {"id": f"k{i}", "names": names, "captions": {k: [v] for k, v in names.items()}, "keywords": {}}
            w.write({"__key__": f"k{i}", "png": buf.getvalue(), "json": meta})
        shards = w.shards
    atomic_write_json(tmp_path / "manifest.json", {"splits": {"train": {"shards": shards, "count": len(names_per_sample)}},
                                                   "languages": sorted({k for n in names_per_sample for k in n})})
    return tmp_path


def test_coverage_equals_a_count_over_decoded_samples(emoji_small):
    cov = language_coverage(emoji_small)
    samples, _ = load_view(emoji_small, "closed")
    brute = {}
    for s in samples:
        for lang, name in s["meta"]["names"].items():
            brute[lang] = brute.get(lang, 0) + (1 if name else 0)
    assert cov == pytest.approx({k: v / len(samples) for k, v in brute.items()})
    assert covered_languages(emoji_small) == sorted(M9)


def test_all_means_the_languages_over_the_threshold(tmp_path):
    # en in 5/5, fr in 4/5 (0.8: covered), de in 3/5 (0.6: not), xx in 1/5
    names = [{"en": "a", "fr": "a", "de": "a", "xx": "a"}, {"en": "b", "fr": "b", "de": "b"},
             {"en": "c", "fr": "c", "de": "c"}, {"en": "d", "fr": "d"}, {"en": "e"}]
    data = _data(tmp_path, names)
    assert language_coverage(data) == pytest.approx({"en": 1.0, "fr": 0.8, "de": 0.6, "xx": 0.2})
    assert resolve_langs(["all"], data) == ["en", "fr"]
    assert resolve_langs(["de", "all"], data) == ["de", "en", "fr"]  # an uncovered language asked for by name
    assert resolve_langs(None, data) is None
    with pytest.raises(ValueError, match=r"no names in tlh in .*covered languages .*: en fr$"):
        resolve_langs(["en", "tlh"], data)


def test_eval_with_an_unknown_language_lists_the_covered_ones(emoji_small, capsys):
    from brivl.cli import main

    assert main(["eval", "--model", "brivl-nano", "--data", str(emoji_small), "--langs", "en", "tlh"]) == 2
    err = capsys.readouterr().err
    assert "no names in tlh" in err and "ar en es fr it ja ko ru zh" in err


def test_tokenizer_stats_against_a_count_by_hand(tmp_path):
    from brivl.tokenizer import script_of, tokenizer_stats, train_tokenizer

    tok = train_tokenizer(["the cat sat", "a cat and a dog", "the dog"], tmp_path / "tok", 40)
    st = tokenizer_stats(tok, {"en": ["the cat", "dog 𓀀"]})["en"]
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(tok / "tokenizer.json"))
    pieces = [p for text in ("the cat", "dog 𓀀") for p in t.encode(text, add_special_tokens=False).tokens if p != "▁"]
    assert st["pieces_per_word"] == pytest.approx(len(pieces) / 4)
    assert st["pieces_per_char"] == pytest.approx(len(pieces) / 10)
    assert st["unk_char_rate"] == pytest.approx(1 / 10)  # the hieroglyph is the one character never seen
    assert script_of(["猫", "ねこ"]) == "JAPANESE" and script_of(["猫"]) == "CJK" and script_of(["кот"]) == "CYRILLIC"


def test_measure_vocab_sizes_writes_a_table(emoji_small, tmp_path, capsys):
    from brivl.cli import main

    out = tmp_path / "vocab.json"
    assert main(["tokenizer", "--data", str(emoji_small), "--langs", "all", "--measure", "1200", "2400",
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["sizes"]) == {"1200", "2400"} and res["eval_view"] == "val" and set(res["languages"]) == set(M9)
    small, big = res["sizes"]["1200"], res["sizes"]["2400"]
    assert big["mean_pieces_per_char"] < small["mean_pieces_per_char"]  # a larger vocabulary, longer pieces
    assert {"LATIN", "CYRILLIC", "ARABIC", "HANGUL"} <= set(small["scripts"])
    assert "vocab 1200: mean pieces/char" in capsys.readouterr().out and res["train_view"] == "train"
    assert main(["tokenizer", "--data", str(emoji_small), "--view", "train+val", "--measure", "1200",
                 "--out", str(out)]) == 2  # measured on text it learnt from: refused
    assert "share val" in capsys.readouterr().err


def test_corpus_rows_in_other_languages_are_counted(emoji_small):
    from altclip.data import cldr_pairs

    corpus = cldr_pairs(str(emoji_small), "train")
    n_ru = sum(1 for p in corpus.pairs if p[2] == "ru")
    sub = corpus.select([lang for lang in corpus.languages if lang != "ru"])
    assert "ru" not in sub.languages and sub.skipped["language not in langs (ru)"] == n_ru
    assert len(sub.pairs) + n_ru == len(corpus.pairs)


def _res(vals: dict[str, tuple[float, float]]) -> dict:
    """An eval result with t2i (R@1, R@10) per language."""
    return {"languages": {lang: {"t2i": {"R@1": r1, "R@10": r10}} for lang, (r1, r10) in vals.items()}}


def test_language_checks_and_table_against_hand_computed_values(tmp_path):
    from altclip.languages import language_checks, language_table, plot_languages

    student = {"closed": _res({"en": (0.90, 1), "zh": (0.86, 1), "de": (0.80, 1), "hi": (0.88, 1)}),
               "test": _res({"en": (0.1, 0.6), "zh": (0.1, 0.5), "de": (0.1, 0.5), "hi": (0.1, 0.3)})}
    reference = {"closed": _res({"en": (0.91, 1), "zh": (0.89, 1)}), "test": _res({"en": (0.1, 0.7), "zh": (0.1, 0.6)})}
    baseline = {"closed": _res({}), "test": _res({"de": (0, 0.2), "hi": (0, 0.2)})}
    c = language_checks(student, reference, baseline, teacher_en=0.92)
    assert c["closed_worst"] == {"lang": "de", "R@1": 0.80, "ratio": pytest.approx(0.80 / 0.92)}
    assert c["closed_below_target"] == ["de"] and not c["closed_target_met"]  # 0.80 < 0.828; hi 0.88 passes
    assert c["m9_loss"] == pytest.approx({"en": 0.01, "zh": 0.03}) and not c["m9_target_met"]  # zh lost 3 points
    assert c["test_outside_m9_mean_R@10"] == pytest.approx(0.4) and c["baseline_test_outside_m9_mean_R@10"] == 0.2
    assert c["test_target_met"] and c["n_outside_m9"] == 2
    table = language_table(student, reference, {"en": "LATIN", "de": "LATIN", "zh": "CJK", "hi": "DEVANAGARI"}, 0.92)
    rows = [r.split(" | ")[1] for r in table.splitlines()[3:]]
    assert rows == ["en (m9)", "de", "zh (m9)", "hi"]  # Latin first (two languages), by R@1 within
    assert "| – |" in table  # the m9 student has no row for de
    assert plot_languages(student, reference, {"en": "LATIN"}, 0.92, tmp_path / "l.png").stat().st_size > 0


def test_image_text_stream_takes_all_and_rejects_unknown_codes(emoji_small):
    from brivl.data.datamodule import ShardDataModule

    dm = ShardDataModule(data_dir=str(emoji_small), langs=["all"], batch_size=8, num_workers=0, shuffle_buffer=10)
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape[0] == 8 and set(batch["langs"][0]) <= set(M9)
    dm = ShardDataModule(data_dir=str(emoji_small), langs=["en", "xx"], batch_size=8, num_workers=0)
    with pytest.raises(ValueError, match="no names in xx .*: ar en es fr it ja ko ru zh"):
        dm.train_dataloader()


def test_m9_loss_on_the_train_split_when_given():
    from altclip.languages import language_checks

    student = {"closed": _res({"en": (0.85, 1), "de": (0.8, 1)}), "train": _res({"en": (0.90, 1)}), "test": _res({"de": (0, 0.5)})}
    reference = {"closed": _res({"en": (0.89, 1)}), "train": _res({"en": (0.91, 1)}), "test": _res({})}
    c = language_checks(student, reference, {"test": _res({"de": (0, 0.2)})}, 0.9)
    assert c["m9_max_loss"] == pytest.approx(0.04) and c["m9_max_loss_train"] == pytest.approx(0.01)
