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


def test_views_command_runs_every_view(emoji_small, models, capsys, tmp_path):
    out = tmp_path / "views.json"
    assert main(["views", "--models", f"nano={models[0]}", "--data", str(emoji_small), "--langs", "en",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| nano |" in text and "`closed`" in text and "`test`" in text and out.exists()
    assert main(["views", "--models", f"nano={models[0]}", "--data", str(emoji_small),
                 "--held-out-style", "other=openmoji"]) == 2
