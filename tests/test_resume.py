"""A fit killed with SIGKILL mid-run resumes from its last checkpoint at the step it had reached and ends with the
weights of an uninterrupted run of the same seed: the training stream is a pure function of the seed and its
position is kept in every checkpoint (brivl.data.datamodule.TrainStream)."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from conftest import REPO

STEPS, KILL_AT, EVERY = 12, 7, 3
TOL = 1e-6  # same ops on the same CPU in the same order: the weights agree to float32 rounding


def _fit(tmp_path, data, name: str, *extra: str, kill: bool = False) -> subprocess.CompletedProcess:
    callbacks = [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                  "init_args": {"save_last": True, "save_top_k": -1, "every_n_train_steps": EVERY}}]
    if kill:
        callbacks.append({"class_path": "kill_at_step.KillAtStep", "init_args": {"step": KILL_AT}})
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    args = [sys.executable, "-m", "brivl", "fit", "--config", str(REPO / "configs" / "brivl-emoji.yaml"),
            "--config", str(cfg), "--model.model", "brivl-nano", "--model.tokenizer", str(data / "tokenizer"),
            "--data.data_dir", str(data), "--data.batch_size", "8", "--data.num_workers", "1",
            "--data.shuffle_buffer", "20", "--data.epoch_samples", "40",  # 5 batches an epoch: the kill is mid-epoch
            "--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", "5",
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.logger.init_args.name", name,
            "--trainer.enable_progress_bar", "false", "--model.warmup_steps", "2", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _state(ckpt: Path) -> tuple[int, dict]:
    s = torch.load(ckpt, map_location="cpu", weights_only=True)
    return s["global_step"], s["state_dict"]


def test_sigkill_mid_run_resumes_to_the_uninterrupted_weights(emoji_small, tmp_path):
    full = _fit(tmp_path, emoji_small, "full")
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _fit(tmp_path, emoji_small, "killed", kill=True)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    run = next((tmp_path / "killed").glob("version_*"))
    last = run / "checkpoints" / "last.ckpt"
    step, _ = _state(last)
    assert step == (KILL_AT // EVERY) * EVERY  # the last checkpoint before the kill; step 7's work is lost
    resumed = _fit(tmp_path, emoji_small, "resumed", "--ckpt_path", str(last))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    step_r, sd_r = _state(next((tmp_path / "resumed").glob("version_*")) / "checkpoints" / "last.ckpt")
    step_f, sd_f = _state(next((tmp_path / "full").glob("version_*")) / "checkpoints" / "last.ckpt")
    assert step_r == step_f == STEPS
    assert sd_r.keys() == sd_f.keys()
    worst = max(float((sd_r[k].float() - sd_f[k].float()).abs().max()) for k in sd_f)
    assert worst <= TOL, worst
    # and the kill mattered: the checkpoint it resumed from is not the final model
    _, sd_k = _state(last)
    assert max(float((sd_k[k].float() - sd_f[k].float()).abs().max()) for k in sd_f) > 1e-3
