"""Training throughput: our Lightning run vs open_clip's own training script, side by side.

Both sides train the same model config (brivl-tiny's towers with open_clip's default BPE tokenizer,
so that open_clip_train can tokenize), on the same shards (data/emoji train split, English names),
with the same batch, data workers, thread count, fp32, AdamW and ClipLoss. Each side runs in its own
subprocess; throughput = batch / mean step-to-step interval (data wait included) over the steps after
the warm-up, measured the same way on both sides (open_clip_train logs each step's batch time; our
side records the time at every `on_train_batch_end`).

    python benchmarks/train_throughput.py [--steps 40] [--warmup 5] [--batch 128] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = "bench-brivl-tiny-bpe"


def write_model_config(cfg_dir: Path) -> None:
    cfg = json.loads((REPO / "brivl" / "model_configs" / "brivl-tiny.json").read_text())
    text = cfg["text_cfg"]
    for k in ("pad_id", "eos_id", "pool_type"):  # open_clip's BPE: EOT is the highest id -> argmax pooling
        text.pop(k, None)
    text["vocab_size"] = 49408
    (cfg_dir / f"{MODEL}.json").write_text(json.dumps(cfg, indent=2))


try:  # the timing callback used inside our subprocess
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        def __init__(self, out: str):
            self.out, self.times = out, []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.times.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module):
            Path(self.out).write_text(json.dumps(self.times))
except ImportError:  # pragma: no cover
    pass


def run_ours(a, tmp: Path, shards_view: str) -> list[float]:
    out = tmp / "ours_times.json"
    code = f"""
import sys, torch
torch.set_num_threads({a.threads})
import open_clip; open_clip.add_model_config({str(tmp)!r})
sys.path.insert(0, {str(REPO)!r})
from brivl.cli import main
main(["fit", "--config", "configs/brivl-emoji.yaml",
      "--model.model", {MODEL!r}, "--model.tokenizer", "null", "--model.lr", "0.002", "--model.warmup_steps", "10",
      "--data.data_dir", {a.data!r}, "--data.train_view", {shards_view!r}, "--data.langs", "[en]",
      "--data.name_prob", "1.0", "--data.captions_per_image", "1",
      "--data.batch_size", "{a.batch}", "--data.num_workers", "{a.workers}",
      "--trainer.max_steps", "{a.warmup + a.steps}", "--trainer.limit_val_batches", "0",
      "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
      "--trainer.logger.init_args.save_dir", {str(tmp)!r},
      "--trainer.callbacks", {json.dumps([{"class_path": "benchmarks.train_throughput.StepTimer",
                                           "init_args": {"out": str(out)}}])!r}])
"""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(a.threads))
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL if not a.verbose else None)
    times = json.loads(out.read_text())
    return [t1 - t0 for t0, t1 in zip(times[a.warmup:], times[a.warmup + 1:])]


def run_open_clip(a, tmp: Path, shard_pattern: str) -> list[float]:
    code = f"""
import sys, torch
torch.set_num_threads({a.threads})
import open_clip; open_clip.add_model_config({str(tmp)!r})
from open_clip_train.main import main
main(sys.argv[1:])
"""
    args = ["--model", MODEL, "--train-data", shard_pattern, "--dataset-type", "webdataset", "--dataset-resampled",
            "--train-num-samples", str(a.batch * (a.warmup + a.steps + 1)), "--batch-size", str(a.batch),
            "--workers", str(a.workers), "--epochs", "1", "--lr", "0.002", "--warmup", "10", "--wd", "0.1",
            "--precision", "fp32", "--log-every-n-steps", "1", "--logs", str(tmp / "oc_logs"), "--name", "bench",
            "--save-frequency", "0", "--report-to", "", "--seed", "0"]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, check=True,
                          capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    rates = [float(m) for m in re.findall(r"Batch \(t\): [0-9.]+, ([0-9.]+)/s,", log)]
    if len(rates) <= a.warmup:
        raise RuntimeError("open_clip_train logged too few steps:\n" + log[-3000:])
    return [a.batch / r for r in rates[a.warmup + 1:]]  # per-step intervals, as on our side


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/emoji", help="emoji data folder (python -m brivl data emoji)")
    p.add_argument("--steps", type=int, default=40, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args()
    manifest = json.loads((Path(a.data) / "manifest.json").read_text())
    shards = manifest["splits"]["train"]["shards"]
    pattern = str(Path(a.data).resolve() / f"train-{{000000..{len(shards) - 1:06d}}}.tar")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        write_model_config(tmp)
        results = {}
        for side, fn, arg in (("ours (Lightning)", run_ours, "train"), ("open_clip_train", run_open_clip, pattern)):
            t0 = time.time()
            dt = fn(a, tmp, arg)
            results[side] = a.batch * len(dt) / sum(dt)
            print(f"{side:<18} {len(dt)} timed steps, batch {a.batch}: {results[side]:8.1f} samples/s "
                  f"(mean step {sum(dt) / len(dt) * 1000:.0f} ms; run {time.time() - t0:.0f} s)", flush=True)
    ratio = results["ours (Lightning)"] / results["open_clip_train"]
    print(f"model {MODEL} (brivl-tiny towers), {a.threads} threads, {a.workers} data worker(s), fp32, "
          "throughput = batch / mean step-to-step interval after warm-up")
    print(f"ratio ours/open_clip = {ratio:.2f}")


if __name__ == "__main__":
    main()
