"""Seconds per training step of each arm of the momentum-queue ablation (issue 15), side by side in one run.

BriVL's queue costs a second (momentum) forward of both towers and a (B, K) similarity per side; in-batch InfoNCE
at batch 256 costs 8x the forward and backward of batch 32. This times the full training step of
``brivl.system.DualTowerSystem`` (forward, loss, backward, AdamW; the momentum update and enqueue for the queue)
on random images and real-length captions, for every arm, in interleaved rounds (median), so the ratios are
measured under the same machine load. Run it with training paused.

    python benchmarks/queue_cost.py [--model brivl-tiny] [--rounds 5] [--steps 4] [--threads 2]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (arm, loss, batch, queue size, momentum): the arms of configs/ablation/queue-*.yaml
ARMS = [("b32-inbatch", "clip", 32, None, None), ("b32-k1024-m99", "moco", 32, 1024, 0.99),
        ("b32-k4096-m99", "moco", 32, 4096, 0.99), ("b256 in-batch", "clip", 256, None, None)]


def make_system(model: str, tokenizer: str, loss: str, queue: int | None, momentum: float | None):
    from brivl.losses import make_clip_loss
    from brivl.system import DualTowerSystem

    kw = dict(loss=loss, temperature=None) if loss == "clip" else dict(
        loss=loss, queue_size=queue, momentum=momentum, temperature=None)
    system = DualTowerSystem(model=model, tokenizer=tokenizer, **kw)
    system.clip_loss = make_clip_loss()  # what setup() does without a trainer
    system.log = lambda *a, **k: None  # no trainer: logging is not what is timed
    opt = torch.optim.AdamW([p for p in system.parameters() if p.requires_grad], lr=1e-4)
    return system, opt


def batch(system, bsz: int, words: list[str], rng: random.Random) -> dict:
    size = system.model.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 4))) for _ in range(bsz)]
    return {"images": torch.randn(bsz, 3, size, size), "texts": [texts]}


def step(system, opt, b) -> None:
    loss = system.training_step(b, 0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="brivl-tiny")
    ap.add_argument("--tokenizer", default=str(REPO / "data" / "emoji-3" / "tokenizer"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per arm per round")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if not Path(args.tokenizer, "tokenizer.json").exists():
        raise SystemExit(f"no tokenizer at {args.tokenizer}: build the data first (python -m brivl data emoji ...)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = random.Random(0)
    words = ["cat", "face", "red", "heart", "smiling", "with", "rocket", "猫", "visage", "корабль", "sol", "사과"]
    systems = {a: make_system(args.model, args.tokenizer, loss, k, m) for a, loss, _, k, m in ARMS}
    for name, loss, bsz, k, _ in ARMS:  # warm-up; fills the queue so the timed steps use all K keys
        s, opt = systems[name]
        for _ in range((k or bsz) // bsz + 1):
            step(s, opt, batch(s, bsz, words, rng))
    times: dict[str, list[float]] = {a[0]: [] for a in ARMS}
    for _ in range(args.rounds):
        for name, _, bsz, _, _ in ARMS:
            s, opt = systems[name]
            bs = [batch(s, bsz, words, rng) for _ in range(args.steps)]
            t0 = time.perf_counter()
            for b in bs:
                step(s, opt, b)
            times[name].append((time.perf_counter() - t0) / args.steps)
    base = statistics.median(times["b32-inbatch"])
    print(f"{args.model}, {args.threads} threads, median of {args.rounds} interleaved rounds x {args.steps} steps")
    print(f"{'arm':16s} {'batch':>5s} {'s/step':>8s} {'samples/s':>10s} {'x b32 in-batch (per step)':>26s}")
    for name, _, bsz, _, _ in ARMS:
        t = statistics.median(times[name])
        print(f"{name:16s} {bsz:5d} {t:8.3f} {bsz / t:10.1f} {t / base:26.2f}")


if __name__ == "__main__":
    main()
