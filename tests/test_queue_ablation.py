"""scripts/queue_ablation.py: the records it reads back and the table it prints (issue 15)."""
import importlib.util
import json
import statistics

import pytest
import yaml

from conftest import REPO

spec = importlib.util.spec_from_file_location("queue_ablation", REPO / "scripts" / "queue_ablation.py")
qa = importlib.util.module_from_spec(spec)
spec.loader.exec_module(qa)


def test_every_arm_has_a_config_that_differs_only_in_loss_queue_or_batch():
    protocol = yaml.safe_load(open(REPO / "configs" / "ablation" / "queue.yaml"))
    assert protocol["model"]["temperature"] is None  # learnt in every arm, so it is not the difference
    for arm in qa.ARMS:
        cfg = yaml.safe_load(open(REPO / "configs" / "ablation" / f"queue-{arm}.yaml"))
        assert set(cfg["model"]) <= {"loss", "queue_size", "momentum", "mask_same_concept", "learn_temperature"}, arm
        assert set(cfg.get("data", {})) <= {"batch_size"}, arm
        assert cfg["trainer"]["logger"]["init_args"]["name"] == f"queue-{arm}"
        if arm.endswith("-9k") and "steps" in arm:  # the long protocol's steps at batch 256 (8x the samples)
            assert cfg["trainer"]["max_steps"] == 9000 and cfg["data"]["batch_size"] == 256, arm
        elif arm.endswith("-9k"):  # the long protocol: 9,000 steps at batch 32, or their samples at batch 256
            assert cfg["trainer"]["max_steps"] * cfg.get("data", {}).get("batch_size", 32) == 9000 * 32, arm
        elif "steps" in arm or arm.startswith("b32"):
            assert "max_steps" not in cfg["trainer"]  # the protocol's step count
    samples = yaml.safe_load(open(REPO / "configs" / "ablation" / "queue-b256-samples.yaml"))
    assert samples["trainer"]["max_steps"] * 256 == protocol["trainer"]["max_steps"] * protocol["data"]["batch_size"]


def test_val_curve_reads_the_validation_rows(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("epoch,step,train/loss,val/t2i_R@1,val/t2i_R@1/en\n0,9,4.5,,\n0,249,,0.125,0.1\n1,499,,0.25,0.2\n")
    assert qa.val_curve(p) == [(250, 0.125), (500, 0.25)]
    q = tmp_path / "scale.csv"
    q.write_text("epoch,logit_scale,step,val/t2i_R@1\n0,14.25,9,\n0,,249,0.125\n0,15.5,259,\n0,,499,0.25\n")
    assert qa.final_logit_scale(q) == 15.5


def test_joined_curve_keeps_each_leg_up_to_the_step_it_was_packed_at(tmp_path):
    head = "epoch,step,train/loss,val/t2i_R@1\n"
    leg1, leg2, last = tmp_path / "leg1.csv", tmp_path / "leg2.csv", tmp_path / "last.csv"
    # leg 1 validated at 250 and 500, was packed at 500, and ran on to 620 before it was killed
    leg1.write_text(head + "0,249,,0.1\n0,499,,0.2\n0,619,4.0,\n")
    # leg 2 resumed at 500 (its rows start after it), validated at 750 and 1000, packed at 750: 1000 is lost
    leg2.write_text(head + "0,749,,0.3\n0,999,,0.35\n")
    last.write_text(head + "0,999,,0.4\n0,1249,,0.5\n")  # the last leg resumed at 750
    assert qa.joined_curve([(leg1, 500), (leg2, 750)], last) == [(250, 0.1), (500, 0.2), (750, 0.3), (1000, 0.4),
                                                                  (1250, 0.5)]
    assert qa.joined_curve([], last) == [(1000, 0.4), (1250, 0.5)]


def _record(arm, seed, closed, test, batch=32):
    views = {v: {"t2i_R@1": r, "t2i_R@10": r + 0.1, "i2t_R@1": r, "per_language_t2i_R@1": {}, "n_images": 10}
             for v, r in (("closed", closed), ("test", test))}
    return {"arm": arm, "seed": seed, "loss": "clip", "batch_size": batch, "queue_size": None, "momentum": None,
            "steps": 3000, "samples": 3000 * batch, "val_curve": [(250, 0.1), (500, 0.3 + seed / 100)],
            "views": views}


def test_table_mean_and_sd_over_seeds(tmp_path, monkeypatch):
    monkeypatch.setattr(qa, "RESULTS", tmp_path)
    for s, (c, t) in enumerate([(0.5, 0.1), (0.6, 0.2), (0.7, 0.3)]):
        (tmp_path / f"b32-inbatch-s{s}.json").write_text(json.dumps(_record("b32-inbatch", s, c, t)))
    (tmp_path / "b256-steps-s0.json").write_text(json.dumps(_record("b256-steps", 0, 0.8, 0.4, 256)))
    by_arm = qa.load_records()
    assert len(by_arm["b32-inbatch"]) == 3
    rows = qa.table(by_arm).splitlines()
    inbatch = next(r for r in rows if r.startswith("| b32-inbatch"))
    sd = statistics.stdev([0.5, 0.6, 0.7])
    assert f"0.600 ± {sd:.3f}" in inbatch and "| 3 |" in inbatch
    assert "0.300 (500), 0.310 (500), 0.320 (500)" in inbatch  # the best val point of each seed
    big = next(r for r in rows if r.startswith("| b256-steps"))
    assert "| 0.800 |" in big and "| 768000 |" in big
    qa.plot(by_arm, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_unknown_arm_is_refused(capsys):
    with pytest.raises(SystemExit):
        qa.main(["run", "b64-nonsense"])
    assert "invalid choice" in capsys.readouterr().err


def test_plateau_and_rolling_mean_against_hand_computed_values():
    curve = [(250, 0.1), (500, 0.2), (750, 0.3), (1000, 0.5), (1250, 0.4), (1500, 0.6), (1750, 0.6), (2000, 0.8)]
    late, before = qa.plateau(curve)  # last quarter: steps 1750, 2000; the quarter before: 1250, 1500
    assert late == pytest.approx((0.6 + 0.8) / 2) and before == pytest.approx((0.4 + 0.6) / 2)
    assert qa.rolling_mean([1, 2, 3, 4], [1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert qa.rolling_mean([1, 4, 5], [1.0, 3.0, 5.0], 2) == [1.0, 3.0, 4.0]  # a window in x, not in points
    with pytest.raises(ValueError, match="no two quarters"):
        qa.plateau([(250, 0.1)])


def test_an_arm_run_in_legs_packs_resumes_and_joins_its_record(tmp_path, monkeypatch, capsys):
    """`pack` then `run` with the training, export and evaluation faked: the second leg starts from the rebuilt
    checkpoint, and the record joins both legs' curves and wall times; the committed state is then removed."""
    import subprocess

    import torch

    arm, name = "b256-steps-9k", "queue-b256-steps-9k-s0"
    monkeypatch.setattr(qa, "REPO", tmp_path)
    monkeypatch.setattr(qa, "RESULTS", tmp_path / "results" / "queue")
    monkeypatch.setattr(qa, "STATES", tmp_path / "results" / "queue" / "state")
    (tmp_path / "configs" / "ablation").mkdir(parents=True)
    (tmp_path / "configs" / "ablation" / f"queue-{arm}.yaml").write_text("trainer: {max_steps: 9000}\n")
    conf = "data: {langs: [en], batch_size: 256}\nmodel: {loss: clip}\ntrainer: {max_steps: 9000}\n"
    head = "epoch,logit_scale,step,val/t2i_R@1\n"

    def leg(version, step, rows):
        run = tmp_path / "runs" / name / f"version_{version}"
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.yaml").write_text(conf)
        (run / "metrics.csv").write_text(head + rows)
        torch.save({"global_step": step, "state_dict": {"w": torch.ones(2)}}, run / "checkpoints" / "last.ckpt")

    leg(0, 250, "0,,249,0.1\n0,15.0,259,\n")  # leg 1: validated (and checkpointed) at 250, killed at 260
    qa.pack_arm(arm, 0)
    assert "packed queue-b256-steps-9k-s0 at step 250" in capsys.readouterr().out
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        if "fit" in cmd:
            ckpt = cmd[cmd.index("--ckpt_path") + 1]
            assert torch.load(ckpt, weights_only=True)["global_step"] == 250  # rebuilt from the packed state
            leg(1, 9000, "0,,499,0.2\n0,18.5,8999,\n0,,8999,0.3\n")
        if "eval" in cmd:
            r = {"languages": {"en": {"t2i": {"R@1": 0.5, "R@10": 0.9}, "i2t": {"R@1": 0.4}}}, "n_images": 10}
            return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps(r))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(qa.subprocess, "run", fake_run)
    rec = json.loads(qa.run_arm(arm, 0).read_text())
    assert [c[3] for c in calls] == ["fit", "export", "eval", "eval"]
    assert rec["val_curve"] == [[250, 0.1], [500, 0.2], [9000, 0.3]] and rec["final_logit_scale"] == 18.5
    assert [leg["step"] for leg in rec["legs"]] == [250, 9000]
    assert rec["wall_s"] == pytest.approx(sum(leg["wall_s"] for leg in rec["legs"]), abs=0.11)
    assert rec["steps"] == 9000 and rec["samples"] == 9000 * 256
    assert not (tmp_path / "results" / "queue" / "state" / f"{arm}-s0").exists()
