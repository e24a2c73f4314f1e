"""End to end through the CLI: emoji data -> Lightning fit (both losses) -> resume -> export -> eval --json."""
import csv
import hashlib
import io
import json
import logging
import math
import tarfile
from pathlib import Path

import pytest
import torch

from brivl.cli import main
from brivl.data.emoji import M9


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def test_emoji_dataset_is_deterministic_and_multilingual(emoji_small, tmp_path):
    m = json.loads((emoji_small / "manifest.json").read_text())
    assert m["counts"]["rendered"] == sum(s["count"] for s in m["splits"].values()) > 50
    assert set(m["splits"]) == {"train", "val", "test"} and m["splits"]["test"]["count"] > 0
    assert m["counts"]["candidates"] == m["counts"]["rendered"] + sum(m["counts"]["dropped"].values())
    assert main(["data", "emoji", "--out", str(tmp_path), "--limit", "120", "--langs", *M9, "--maxcount", "40",
                 "--vocab-size", "0", "--val-frac", "0.1", "--test-frac", "0.1"]) == 0
    assert _digest(tmp_path) == _digest(emoji_small)  # byte-identical shards
    with tarfile.open(emoji_small / m["splits"]["train"]["shards"][0]) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(next(n for n in names if n.endswith(".json"))).read())
    assert {n.rsplit(".", 1)[1] for n in names} == {"png", "txt", "json"}
    assert set(M9) <= set(meta["names"]) and set(M9) <= set(meta["captions"])
    assert meta["split"] == "train" and meta["id"] == names[0].split(".")[0]


def _fit(tmp_path, data, *extra, steps=4, name="run"):
    args = ["fit", "--config", str(Path(__file__).parents[1] / "configs" / "brivl-emoji.yaml"),
            "--model.model", "brivl-nano", "--model.tokenizer", str(data / "tokenizer"),
            "--data.data_dir", str(data), "--data.batch_size", "8", "--data.num_workers", "0",
            "--data.train_view", "train", "--data.val_view", "val",
            "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.logger.init_args.name", name,
            "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1", "--model.warmup_steps", "2",
            *extra]
    assert main(args) == 0
    return next((tmp_path / name).glob("version_*"))


def test_fit_resume_export_eval(emoji_small, tmp_path, capsys, caplog):
    run = _fit(tmp_path, emoji_small)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.exists() and (run / "metrics.csv").exists() and (run / "loss_curve.png").exists()
    rows = (run / "metrics.csv").read_text()
    assert "train/loss" in rows and "val/t2i_R@1" in rows
    # resume from the checkpoint for two more steps
    run2 = _fit(tmp_path, emoji_small, "--ckpt_path", str(ckpt), steps=6, name="resumed")
    assert (run2 / "checkpoints" / "last.ckpt").exists()
    out = tmp_path / "model"
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["export", "--ckpt", str(ckpt), "--out", str(out), "--config", str(run / "config.yaml")]) == 0
    # the checkpoint's weights replace the random init: open_clip's "Model initialized randomly" is not shown
    assert not [r.getMessage() for r in caplog.records if "No pretrained weights" in r.getMessage()]
    assert {"open_clip_model.safetensors", "open_clip_config.json", "tokenizer.json", "config.yaml"} <= {
        p.name for p in out.iterdir()}
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--data", str(emoji_small), "--view", "test", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["view"] == "test" and set(res["languages"]) == set(M9)
    for lang in M9:
        for d in ("t2i", "i2t"):
            assert set(res["languages"][lang][d]) >= {"R@1", "R@5", "R@10"}
            assert 0.0 <= res["languages"][lang][d]["R@1"] <= res["languages"][lang][d]["R@10"] <= 1.0
        assert 0.0 <= res["zeroshot"][lang]["acc@1"] <= res["zeroshot"][lang]["acc@5"] <= 1.0


def test_checkpoint_of_another_config_is_a_clear_error(emoji_small, tmp_path, capsys):
    import torch
    import yaml

    from brivl.model import ConfigMismatchError
    from brivl.system import DualTowerSystem

    run = _fit(tmp_path, emoji_small, steps=1, name="a")
    ckpt = run / "checkpoints" / "last.ckpt"
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"model": {"model": "brivl-tiny", "tokenizer": str(emoji_small / "tokenizer")}}))
    assert main(["export", "--ckpt", str(ckpt), "--config", str(other), "--out", str(tmp_path / "o")]) == 2
    assert "another model config" in capsys.readouterr().err and not (tmp_path / "o").exists()
    system = DualTowerSystem(model="brivl-tiny", tokenizer=str(emoji_small / "tokenizer"))
    with pytest.raises(ConfigMismatchError, match="another model config"):
        system.on_load_checkpoint(torch.load(ckpt, map_location="cpu", weights_only=True))


def test_missing_debian_packages_name_the_install_command(tmp_path):
    from brivl.data.emoji import MissingSourceError, build_emoji_dataset

    with pytest.raises(MissingSourceError, match="apt-get install -y fonts-noto-color-emoji unicode-cldr-core"):
        build_emoji_dataset(tmp_path, font_path=str(tmp_path / "none.ttf"))


@pytest.mark.parametrize("mask", ["false", "true"])
def test_fit_with_momentum_queue(emoji_small, tmp_path, mask):
    run = _fit(tmp_path, emoji_small, "--model.loss", "moco", "--model.queue_size", "16", "--data.captions_per_image", "1",
               "--model.mask_same_concept", mask, steps=3, name="moco")
    losses = [float(r["train/loss"]) for r in csv.DictReader(open(run / "metrics.csv")) if r.get("train/loss")]
    assert losses and all(math.isfinite(x) for x in losses)
    if mask == "true":  # the queue holds the labels of the keys it holds (every emoji of a batch is one concept)
        state = torch.load(next((run / "checkpoints").glob("last.ckpt")), weights_only=True, map_location="cpu")
        labels = state["state_dict"]["queue_loss.concept_queue"]
        assert (labels >= 0).sum() == 16 and len(set(labels.tolist())) > 1


@pytest.mark.parametrize("learn", ["false", "true"])
def test_fit_with_the_temperature_frozen(emoji_small, tmp_path, learn):
    """``learn_temperature: false``: the logit scale stays at CLIP's 1 / 0.07 through training (learnt: it moves)."""
    run = _fit(tmp_path, emoji_small, "--model.learn_temperature", learn, steps=3, name="t")
    scales = [float(r["logit_scale"]) for r in csv.DictReader(open(run / "metrics.csv")) if r.get("logit_scale")]
    assert len(scales) == 3
    fixed = [s == pytest.approx(1 / 0.07, rel=1e-5) for s in scales]
    assert all(fixed) if learn == "false" else not fixed[-1]


def test_corrupt_samples_are_skipped_in_training(emoji_small, tmp_path, monkeypatch):
    import logging
    import shutil

    # the warnings the run logs, caught on the logger itself (whatever other tests did to propagation or levels)
    messages = []
    logger = logging.getLogger("brivl.data.shards")
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    monkeypatch.setattr(logger, "disabled", False)
    monkeypatch.setattr(logger, "level", logging.WARNING)

    data = tmp_path / "data"
    shutil.copytree(emoji_small, data)
    m = json.loads((data / "manifest.json").read_text())
    # the training stream resamples shards at random: corrupt every training shard the same way (the first image
    # and the second json), and read each shard in order (shuffle buffer 1), so whichever shard comes first, the
    # first 12 x 8 samples hold one corrupt image and one corrupt json
    broken = {}  # key -> the corrupted member
    for name in m["splits"]["train"]["shards"]:
        shard = data / name
        with tarfile.open(shard) as tar:
            members = [(ti, tar.extractfile(ti).read()) for ti in tar]
        with tarfile.open(shard, "w") as tar:
            for i, (ti, data_) in enumerate(members):
                if i == 1:
                    data_ = b"not a png"
                if i == 3:
                    data_ = b"{broken"
                ti.size = len(data_)
                tar.addfile(ti, io.BytesIO(data_))
        for i in (1, 3):
            broken[members[i][0].name.split(".")[0]] = members[i][0].name
    assert {b.rsplit(".", 1)[1] for b in broken.values()} == {"png", "json"}
    logger.addHandler(handler)
    try:
        _fit(tmp_path, data, "--data.shuffle_buffer", "1", steps=12, name="corrupt")
    finally:
        logger.removeHandler(handler)
    skipped = {}  # key -> reason, from the warnings the training run logged
    for m in messages:
        if m.startswith("skipping sample "):
            key, reason = m.removeprefix("skipping sample ").split(": ", 1)
            skipped[key] = reason
    # only corrupted samples were skipped, at least one of each kind, each for the right reason
    assert set(skipped) <= set(broken), (skipped, broken)
    assert {broken[k].rsplit(".", 1)[1] for k in skipped} == {"png", "json"}, (skipped, broken)
    for key in skipped:
        member = broken[key]
        assert skipped[key] == ("corrupt json" if member.endswith(".json") else
                                "corrupt image (UnidentifiedImageError)"), (key, member, skipped[key])


def test_bad_inputs_give_one_line_errors(emoji_small, tmp_path, capsys):
    assert main(["eval", "--model", "no-such-model", "--data", str(emoji_small)]) == 2
    assert "Known configs" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "missing"), "--data", str(emoji_small)]) == 2
    assert "No folder" in capsys.readouterr().err
    assert main(["eval", "--model", "brivl-nano", "--data", str(tmp_path)]) == 2
    assert "manifest.json" in capsys.readouterr().err
    assert main(["export", "--ckpt", str(tmp_path / "x.ckpt"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err


def test_export_over_its_own_start_keeps_every_legs_provenance(tmp_path):
    """A warm restart exported over the folder it started from must not erase leg 1's base model and tokenizer."""
    import json

    from brivl.cli import record_legs

    out = tmp_path / "student"
    out.mkdir()
    leg1 = {"student": "altclip-xlmr-tiny", "tokenizer": "data/emoji/tokenizer-all", "lr": 0.002}
    (out / "brivl.json").write_text(json.dumps({"trained_with": leg1}))
    (out / "config.yaml").write_text("trainer:\n  max_steps: 10\n")
    cfg2 = tmp_path / "config.yaml"
    cfg2.write_text("trainer:\n  max_steps: 20\n")
    leg2 = {"student": str(out), "tokenizer": str(out), "lr": 0.001}
    info = {"trained_with": leg2}
    record_legs(info, str(out), str(cfg2))
    assert [leg["trained_with"] for leg in info["legs"]] == [leg1, leg2]
    assert "max_steps: 10" in info["legs"][0]["config"] and "max_steps: 20" in info["legs"][1]["config"]

    (out / "brivl.json").write_text(json.dumps(info))  # leg 3 appends to the record
    info3 = {"trained_with": {**leg2, "lr": 0.0005}}
    record_legs(info3, str(out), None)
    assert [leg["trained_with"]["lr"] for leg in info3["legs"]] == [0.002, 0.001, 0.0005]

    fresh = {"trained_with": {"student": "altclip-xlmr-tiny"}}  # a run that starts elsewhere: no legs
    record_legs(fresh, str(out), str(cfg2))
    assert "legs" not in fresh
