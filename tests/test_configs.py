"""Evaluation hygiene of the run configs: training never sees the test view, and validation, checkpoint
selection and early stopping use the val split only (never `closed`, which contains the test emoji)."""
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def _find(node, names):
    """Every (key, value) under ``node`` whose key is in ``names``, at any depth."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in names:
                yield k, v
            yield from _find(v, names)
    elif isinstance(node, list):
        for v in node:
            yield from _find(v, names)


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO)) for p in CONFIGS])
def test_config_validates_on_val_and_never_trains_on_test(path):
    cfg = yaml.safe_load(path.read_text())
    for key, view in _find(cfg, {"val_view"}):  # val, or val in some styles (val+style:noto)
        splits = [p for p in str(view).split("+") if not p.startswith("style:")]
        assert splits == ["val"], f"{path.name}: {key}: {view} (validate and pick checkpoints on val only)"
    for key, view in _find(cfg, {"train_view", "view"}):
        parts = str(view).split("+")
        splits = [p for p in parts if not p.startswith("style:")]
        assert splits and not {"test", "closed", "all"} & set(splits), f"{path.name}: {key}: {view}"
    for _, monitor in _find(cfg, {"monitor"}):
        assert str(monitor).startswith("val/"), f"{path.name}: monitors {monitor}"


def test_the_check_catches_a_config_that_validates_on_closed(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  init_args:\n    val_view: closed\n")
    with pytest.raises(AssertionError, match="validate and pick checkpoints on val only"):
        test_config_validates_on_val_and_never_trains_on_test(bad)


def test_the_check_catches_style_views_that_hide_test_or_closed(tmp_path):
    for bad in ("data:\n  train_view: style:noto\n", "data:\n  train_view: test+style:noto\n",
                "data:\n  val_view: closed+style:noto\n"):
        path = tmp_path / "bad.yaml"
        path.write_text(bad)
        with pytest.raises(AssertionError):
            test_config_validates_on_val_and_never_trains_on_test(path)
    ok = tmp_path / "ok.yaml"
    ok.write_text("data:\n  train_view: train+style:noto+style:twemoji\n  val_view: val+style:noto+style:twemoji\n")
    test_config_validates_on_val_and_never_trains_on_test(ok)
