"""Cost per training sample of the registry's UNets on this machine: parameters, FLOPs, seconds per step.

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one forward of one sample (convolutions,
matmuls and attention; a training step costs about three times that). Seconds per step: a full training
step (forward, MSE, backward, AdamW) of batch ``--batch`` with random inputs and 8 text tokens, median of
``--steps`` after a warm-up, fp32, and the same under CPU bf16 autocast; all configs in one run, one after
the other.

    python benchmarks/denoiser_cost.py [--configs unet-emoji-32 unet-emoji-32s unet-emoji-32p] [--batch 64]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def inputs(unet, batch: int, width: int = 128, tokens: int = 8):
    from diffusion.pipeline_alt_diffusion import denoiser_inputs

    s, c = unet.config.sample_size, unet.config.in_channels
    x = torch.randn(batch, c, s, s)
    t = torch.randint(0, 1000, (batch,))
    return x, t, denoiser_inputs(unet, torch.randn(batch, tokens, width), torch.ones(batch, tokens))


def flops_per_sample(unet) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    x, t, kw = inputs(unet, 1)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(x, t, **kw)
    return counter.get_total_flops()


def step_seconds(unet, batch: int, steps: int, bf16: bool) -> float:
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x, t, kw = inputs(unet, batch)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = unet(x, t, **kw).sample
        loss = (out.float() - x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main() -> None:
    from diffusion.model import create_unet, list_unet_configs

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=[c for c in list_unet_configs() if c != "unet-tiny"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"batch {a.batch}, {a.threads} threads, median of {a.steps} steps after a warm-up")
    print(f"{'UNet':18s} {'params':>8s} {'GFLOP/sample fwd':>17s} {'s/step fp32':>12s} {'samples/s':>10s} "
          f"{'s/step bf16':>12s} {'samples/s':>10s}")
    for name in a.configs:
        torch.manual_seed(0)
        unet = create_unet(name, 128).train()
        params = sum(q.numel() for q in unet.parameters()) / 1e6
        gflop = flops_per_sample(unet) / 1e9
        fp32 = step_seconds(unet, a.batch, a.steps, False)
        bf16 = step_seconds(unet, a.batch, a.steps, True)
        print(f"{name:18s} {params:7.2f}M {gflop:17.3f} {fp32:12.2f} {a.batch / fp32:10.1f} {bf16:12.2f} "
              f"{a.batch / bf16:10.1f}", flush=True)


if __name__ == "__main__":
    main()
