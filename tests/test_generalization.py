"""brivl.generalization: the models x views table and the issue's targets, against hand-computed values."""
from brivl.cli import main
from brivl.generalization import generalization_checks, views_table


def _res(r1: dict, r10: dict, n: int = 30) -> dict:
    return {"n_images": n, "chance": {"R@1": 1 / n, "R@10": 10 / n},
            "languages": {la: {"t2i": {"R@1": r1[la], "R@10": r10[la]}} for la in r1}}


def test_views_table_and_targets_by_hand():
    by_view = {"closed": _res({"en": 0.95, "zh": 0.84}, {"en": 1.0, "zh": 0.9}),
               "test+style:noto": _res({"en": 0.2, "zh": 0.4}, {"en": 0.5, "zh": 0.7}),
               "test+style:openmoji": _res({"en": 0.1, "zh": 0.1}, {"en": 0.3, "zh": 0.5}),
               "style:openmoji": _res({"en": 0.3, "zh": 0.3}, {"en": 0.6, "zh": 0.5})}
    table = views_table({"m": by_view}, ["closed", "style:openmoji", "style:twemoji"])
    rows = table.splitlines()
    assert rows[0].count("|") == 5 and rows[2].startswith("| m | 0.895 / 0.950 (lowest R@1: zh 0.840) | 0.300 / 0.550 |")
    assert rows[2].endswith("|  |") and rows[3].startswith("| chance | 0.0333 / 0.3333 (N=30)")  # no twemoji result
    checks = generalization_checks(by_view, ["noto", "openmoji"], "openmoji")
    assert checks == [
        "closed, every style: mean R@1 0.895, lowest zh 0.840 (target mean >= 0.90, none < 0.85: not met)",
        "held-out families: R@10 noto 0.600, openmoji 0.400 (target >= 0.50 in every style: not met)",
        "held-out style openmoji: R@10 0.550 (target >= 0.50: met)"]
    by_view["closed"] = _res({"en": 0.95, "zh": 0.86}, {"en": 1.0, "zh": 1.0})
    assert generalization_checks(by_view, ["noto"])[:2] == [
        "closed, every style: mean R@1 0.905, lowest zh 0.860 (target mean >= 0.90, none < 0.85: met)",
        "held-out families: R@10 noto 0.600 (target >= 0.50 in every style: met)"]


def test_closed_view_by_split_line_by_hand():
    closed = _res({"en": 0.8, "zh": 0.7}, {"en": 0.9, "zh": 0.9})
    for lang, (tr, te) in {"en": (0.9, 0.1), "zh": (0.8, 0.0)}.items():
        closed["languages"][lang]["t2i_by_split"] = {"train": {"R@1": tr, "R@10": 1.0, "n_queries": 8},
                                                     "test": {"R@1": te, "R@10": 0.5, "n_queries": 2}}
    lines = generalization_checks({"closed": closed}, ["noto"])
    # ceiling: en (8 + 0.2) / 10 = 0.82, zh (8 + 0) / 10 = 0.80; mean 0.81
    assert lines[1] == ("closed, queries by split: train R@1 0.850 / R@10 1.000 (8 queries); test R@1 0.050 / "
                        "R@10 0.500 (2 queries); with every training query a hit the closed R@1 would be 0.810")


def test_views_command_runs_every_view(emoji_small, models, capsys, tmp_path):
    out = tmp_path / "views.json"
    assert main(["views", "--models", f"nano={models[0]}", "--data", str(emoji_small), "--langs", "en",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| nano |" in text and "`closed`" in text and "`test`" in text and out.exists()
    assert main(["views", "--models", f"nano={models[0]}", "--data", str(emoji_small),
                 "--held-out-style", "other=openmoji"]) == 2


def test_name_words_and_training_vocabulary():
    from brivl.generalization import name_words, training_words

    assert name_words("Man Pilot: dark skin-tone", "en") == ["man", "pilot", "dark", "skin", "tone"]
    assert name_words("男性飞行员", "zh") == ["男", "性", "飞", "行", "员"]  # no spaces: a word is a character
    assert name_words("ＡＢＣ", "fr") == ["abc"]  # NFKC before matching
    train = [{"meta": {"captions": {"en": ["red heart"]}, "keywords": {"en": ["love"]}}},
             {"meta": {"captions": {"en": ["heart eyes"], "zh": ["红心"]}}}]
    assert training_words(train, ["en", "zh"]) == {"en": {"red", "heart", "love", "eyes"}, "zh": {"红", "心"}}


def test_word_coverage_against_brute_force():
    import pytest
    import torch

    from brivl.generalization import word_coverage, word_coverage_line

    class Tower:
        def eval(self):
            return self

        def embed_images(self, images, batch_size=512):
            return img

        def embed_texts(self, texts, batch_size=512):
            return torch.stack([txt[names.index(t)] for t in texts])

    g = torch.Generator().manual_seed(1)
    names = ["red heart", "blue heart", "red kite", "green dragon", "heart red", "tiny robot"]
    img = torch.nn.functional.normalize(torch.randn(12, 5, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 5, generator=g), dim=-1)
    metas = [{"id": str(i % 6), "captions": {"en": [names[i % 6]]}} for i in range(12)]  # two renders a concept
    vocab = {"en": {"red", "heart", "blue"}}
    cov = word_coverage(Tower(), None, metas, ["en"], vocab)["en"]
    seen = [0, 1, 4]  # every word known; the others have a new word
    sim = txt @ img.T
    for group, qs in (("seen words", seen), ("new word", [2, 3, 5])):
        for k in (1, 5):
            hits = [bool({q, q + 6} & set(sim[q].argsort(descending=True)[:k].tolist())) for q in qs]
            assert cov[group][f"R@{k}"] == pytest.approx(sum(hits) / 3)
        assert cov[group]["n_queries"] == 3
    by_hand = {"en": {"seen words": {"R@10": 0.5, "n_queries": 2}, "new word": {"R@10": 0.25, "n_queries": 4}},
               "zh": {"seen words": {"R@10": 1.0, "n_queries": 2}, "new word": {"R@10": 0.0, "n_queries": 0}}}
    assert word_coverage_line("test", by_hand) == ("test, queries by vocabulary: 4 of 8 names have every word in the "
                                                   "training text; seen words R@10 0.750, new word R@10 0.250 "
                                                   "(pooled over languages)")


def test_views_word_coverage_needs_a_held_out_view(emoji_small, models, capsys):
    assert main(["views", "--models", f"nano={models[0]}", "--data", str(emoji_small), "--views", "closed",
                 "--word-coverage"]) == 2
    assert "--word-coverage scores held-out views" in capsys.readouterr().err
    assert main(["views", "--models", f"nano={models[0]}", "--data", str(emoji_small), "--views", "test",
                 "--langs", "en", "--word-coverage"]) == 0
    assert "nano: test, queries by vocabulary:" in capsys.readouterr().out
