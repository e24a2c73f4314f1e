"""The momentum-queue ablation of issue 15 (BriVL, Huo et al., 2021): one protocol, many arms.

    python scripts/queue_ablation.py run b32-inbatch b32-k4096-m99 --seeds 0 1 2   # fit, export, evaluate
    python scripts/queue_ablation.py table                                          # README table + curves

Each arm is ``configs/ablation/queue-ARM.yaml`` on top of ``configs/ablation/queue.yaml`` (the shared protocol)
and the three-style base run. A finished (arm, seed) leaves a small record in ``results/queue/ARM-sSEED.json``
(committed: the validation curve, the closed and held-out-family retrieval, wall time), so arms run in different
sittings add up to one table; an arm whose record exists is skipped. Checkpoints stay in ``runs/`` (not committed).

An arm longer than one sitting runs in legs: ``pack ARM --seeds S`` turns the run's last checkpoint into a small
pickle-free resume state in ``results/queue/state/ARM-sS/`` (:mod:`brivl.resume`; commit it), and ``run`` goes on
from it (``--ckpt_path``) on any machine; the record joins the legs' validation curves and wall times.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "results" / "queue"
STATES = RESULTS / "state"
DATA = "data/emoji-3"
BASE = ["configs/brivl-emoji.yaml", "configs/brivl-emoji3.yaml", "configs/ablation/queue.yaml"]
ARMS = ["b32-inbatch", "b32-k1024-m99", "b32-k1024-m999", "b32-k4096-m99", "b32-k4096-m999",
        "b32-k4096-m99-fnm", "b32-inbatch-fixedT", "b32-k4096-m99-fixedT", "b32-k1024-m90", "b32-k256-m99",
        "b256-samples", "b256-steps", "b32-inbatch-9k", "b32-k1024-m99-9k",
        "b256-samples-9k", "b32-k4096-m99-9k", "b32-k1024-m999-9k", "b32-k4096-m999-9k", "b256-steps-9k"]
# fnm: false-negative masking (no key of the query's own concept is a negative); fixedT: temperature frozen at 0.07;
# k1024-m90 and k256-m99: fresher keys than k1024-m99 (the staleness check); -9k: the long protocol (9,000 steps at
# batch 32, so that in-batch has flattened; b256-samples-9k: the same samples at batch 256, b256-steps-9k: the same steps)


def _py() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _mean_r1(result: dict, key: str = "R@1", direction: str = "t2i") -> float:
    langs = result["languages"]
    return statistics.fmean(m[direction][key] for m in langs.values())


def val_curve(metrics_csv: Path) -> list[tuple[int, float]]:
    """(step, val t2i R@1: the mean over the m9 languages) for every validation row of a CSVLogger file."""
    return [(int(r["step"]) + 1, float(r["val/t2i_R@1"])) for r in csv.DictReader(open(metrics_csv))
            if r.get("val/t2i_R@1") not in ("", None)]


def final_logit_scale(metrics_csv: Path) -> float | None:
    """The model's logit scale (1 / temperature) at the last logged training row of a CSVLogger file."""
    rows = [r["logit_scale"] for r in csv.DictReader(open(metrics_csv)) if r.get("logit_scale") not in ("", None)]
    return float(rows[-1]) if rows else None


def plateau(curve: list[tuple[int, float]], frac: float = 0.25) -> tuple[float, float]:
    """Mean val R@1 over the last `frac` of the steps and over the `frac` before it: equal means = a flat curve."""
    last = curve[-1][0]
    late = [v for s, v in curve if s > last * (1 - frac)]
    before = [v for s, v in curve if last * (1 - 2 * frac) < s <= last * (1 - frac)]
    if not late or not before:
        raise ValueError(f"a curve of {len(curve)} points has no two quarters to compare")
    return statistics.fmean(late), statistics.fmean(before)


def run_arm(arm: str, seed: int) -> Path:
    out = RESULTS / f"{arm}-s{seed}.json"
    if out.exists():
        print(f"{out.relative_to(REPO)} exists: skipped")
        return out
    cfg = REPO / "configs" / "ablation" / f"queue-{arm}.yaml"
    if not cfg.exists():
        raise SystemExit(f"no arm {arm!r} ({cfg.relative_to(REPO)} missing); known: {' '.join(ARMS)}")
    name = f"queue-{arm}-s{seed}"
    configs = [a for c in BASE + [str(cfg.relative_to(REPO))] for a in ("--config", c)]
    fit = [_py(), "-m", "brivl", "fit", *configs, "--seed_everything", str(seed),
           "--trainer.logger.init_args.name", name]
    state_dir = STATES / f"{arm}-s{seed}"
    legs = []
    if state_dir.exists():  # the earlier legs of this arm, packed by `pack`
        from brivl.resume import unpack_checkpoint

        ckpt = REPO / "runs" / name / "resume.ckpt"
        legs = unpack_checkpoint(state_dir, ckpt)["extra"]["legs"]
        fit += ["--ckpt_path", str(ckpt)]
        print(f"resuming {name} at step {legs[-1]['step']} from {state_dir.relative_to(REPO)}", flush=True)
    print("===", " ".join(fit[1:]), time.strftime("(%T)"), flush=True)
    t0 = time.time()
    subprocess.run(fit, cwd=REPO, check=True)
    wall = time.time() - t0
    run = latest_run(name)
    export = REPO / "runs" / "export" / name
    subprocess.run([_py(), "-m", "brivl", "export", "--ckpt", str(run / "checkpoints" / "last.ckpt"),
                    "--config", str(run / "config.yaml"), "--out", str(export)], cwd=REPO, check=True)
    import yaml  # the arm's effective settings, as the run wrote them

    conf = yaml.safe_load(open(run / "config.yaml"))
    langs = conf["data"]["langs"]  # evaluated in the languages it was trained on
    views = {}
    for view in ("closed", "test"):
        res = subprocess.run([_py(), "-m", "brivl", "eval", "--model", str(export), "--data", DATA, "--view", view,
                              "--langs", *langs, "--no-zeroshot", "--json"], cwd=REPO, check=True,
                             capture_output=True, text=True)
        views[view] = json.loads(res.stdout)
    record = {
        "arm": arm, "seed": seed, "run": str(run.relative_to(REPO)), "langs": langs,
        "loss": conf["model"]["loss"] + ("+fnm" if conf["model"].get("mask_same_concept") else "")
        + ("" if conf["model"].get("learn_temperature", True) else ", T=0.07"),
        "batch_size": conf["data"]["batch_size"],
        "queue_size": conf["model"]["queue_size"] if conf["model"]["loss"] == "moco" else None,
        "momentum": conf["model"]["momentum"] if conf["model"]["loss"] == "moco" else None,
        "steps": conf["trainer"]["max_steps"], "samples": conf["trainer"]["max_steps"] * conf["data"]["batch_size"],
        "wall_s": round(wall + sum(leg["wall_s"] for leg in legs), 1), "threads": os.environ.get("OMP_NUM_THREADS"),
        "val_curve": joined_curve([(state_dir / leg["metrics"], leg["step"]) for leg in legs], run / "metrics.csv"),
        "final_logit_scale": final_logit_scale(run / "metrics.csv"),
        "views": {v: {"t2i_R@1": _mean_r1(r), "t2i_R@10": _mean_r1(r, "R@10"), "i2t_R@1": _mean_r1(r, "R@1", "i2t"),
                      "per_language_t2i_R@1": {k: m["t2i"]["R@1"] for k, m in r["languages"].items()},
                      "n_images": r.get("n_images")} for v, r in views.items()},
    }
    from brivl.data.shards import atomic_write_json

    if legs:
        record["legs"] = legs + [{"step": record["steps"], "wall_s": round(wall, 1)}]
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, record)
    if legs:  # the record holds the joined curve now; the state stays in git history
        shutil.rmtree(state_dir)
    print(f"wrote {out.relative_to(REPO)}: closed t2i R@1 {record['views']['closed']['t2i_R@1']:.4f}, "
          f"test t2i R@10 {record['views']['test']['t2i_R@10']:.4f}", flush=True)
    return out


def latest_run(name: str) -> Path:
    versions = sorted((REPO / "runs" / name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not versions:
        raise SystemExit(f"no run of {name} under runs/: start it with `python scripts/queue_ablation.py run`")
    return versions[-1]


def joined_curve(legs: list[tuple[Path, int]], last_metrics: Path) -> list[tuple[int, float]]:
    """The val curve of an arm run in legs: each earlier leg's rows up to the step it was packed at (a leg killed
    after its last checkpoint validated nothing that the next leg keeps), then the last leg's rows."""
    curve, start = [], 0
    for metrics, step in legs:
        curve += [(s, v) for s, v in val_curve(metrics) if start < s <= step]
        start = step
    return curve + [(s, v) for s, v in val_curve(last_metrics) if s > start]


def pack_arm(arm: str, seed: int) -> Path:
    """Pack the last checkpoint of an unfinished (arm, seed) run into its committed resume state."""
    import torch

    from brivl.data.shards import write_folder_atomically
    from brivl.resume import pack_checkpoint, read_state

    name = f"queue-{arm}-s{seed}"
    run = latest_run(name)
    ckpt = run / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        raise SystemExit(f"{run.relative_to(REPO)} has no last.ckpt yet: it is written at the first validation")
    state_dir = STATES / f"{arm}-s{seed}"
    legs = read_state(state_dir)["extra"]["legs"] if state_dir.exists() else []
    step = int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])
    metrics = f"metrics-leg{len(legs) + 1}.csv"
    # wall time of this leg up to its checkpoint: from the run's config (written at the start) to the checkpoint
    wall = ckpt.stat().st_mtime - (run / "config.yaml").stat().st_mtime
    legs = legs + [{"step": step, "wall_s": round(wall, 1), "metrics": metrics, "run": str(run.relative_to(REPO))}]

    def write(tmp: Path) -> None:  # the earlier legs' curves, this leg's, and the packed checkpoint
        for leg in legs[:-1]:
            shutil.copyfile(state_dir / leg["metrics"], tmp / leg["metrics"])
        shutil.copyfile(run / "metrics.csv", tmp / metrics)
        pack_checkpoint(ckpt, tmp, extra={"arm": arm, "seed": seed, "legs": legs})

    write_folder_atomically(state_dir, write)  # a failure midway leaves the previous state as it was
    size = sum(p.stat().st_size for p in state_dir.iterdir()) / 1e6
    print(f"packed {name} at step {step} into {state_dir.relative_to(REPO)} ({size:.1f} MB): commit it; "
          f"`python scripts/queue_ablation.py run {arm} --seeds {seed}` goes on from there")
    return state_dir


def load_records() -> dict[str, list[dict]]:
    by_arm: dict[str, list[dict]] = {}
    for p in sorted(RESULTS.glob("*-s*.json")):
        r = json.loads(p.read_text())
        by_arm.setdefault(r["arm"], []).append(r)
    return by_arm


def _fmt(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.fmean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def table(by_arm: dict[str, list[dict]]) -> str:
    head = ("| arm | loss | batch | K | m | steps | samples | seeds | closed t2i R@1 | closed t2i R@10 "
            "| held-out t2i R@1 | held-out t2i R@10 | best val R@1 (step) | val R@1: last quarter / quarter before | logit scale at end |")
    lines = [head, "|" + "---|" * 15]
    for arm in [a for a in ARMS if a in by_arm] + sorted(set(by_arm) - set(ARMS)):
        rs = by_arm[arm]
        r0 = rs[0]
        col = lambda v, k: _fmt([r["views"][v][k] for r in rs])  # noqa: E731
        best = [max(r["val_curve"], key=lambda sv: sv[1]) for r in rs if r["val_curve"]]
        best_s = ", ".join(f"{v:.3f} ({s})" for s, v in best)
        flat = [plateau(r["val_curve"]) for r in rs if len(r["val_curve"]) >= 4]
        flat_s = ", ".join(f"{a:.3f} / {b:.3f}" for a, b in flat)
        scale_s = ", ".join(f"{r['final_logit_scale']:.1f}" for r in rs if r.get("final_logit_scale")) or "-"
        lines.append(f"| {arm} | {r0['loss']} | {r0['batch_size']} | {r0['queue_size'] or '-'} | "
                     f"{r0['momentum'] or '-'} | {r0['steps']} | {r0['samples']} | {len(rs)} | "
                     f"{col('closed', 't2i_R@1')} | {col('closed', 't2i_R@10')} | {col('test', 't2i_R@1')} | "
                     f"{col('test', 't2i_R@10')} | {best_s} | {flat_s} | {scale_s} |")
    n_closed = next(iter(by_arm.values()))[0]["views"]["closed"]["n_images"] if by_arm else None
    lines.append("")
    langs = " ".join(next(iter(by_arm.values()))[0].get("langs") or []) if by_arm else ""
    lines.append(f"closed view: every concept in every style ({n_closed} renders); held-out: the test families; "
                 f"t2i R@k mean over the trained languages ({langs}); mean ± sd over seeds where there are several")
    return "\n".join(lines)


def rolling_mean(x: list[float], v: list[float], width: float) -> list[float]:
    """Trailing mean of v over the points whose x lies in (x_i - width, x_i] (the first points average what there
    is): a window in samples, so arms validated at different intervals are smoothed alike."""
    return [statistics.fmean([vj for xj, vj in zip(x, v) if xi - width < xj <= xi]) for xi in x]


def plot(by_arm: dict[str, list[dict]], out: Path, arms: list[str] | None = None, smooth: int = 1,
         log_x: bool = False) -> None:
    """Val curves against samples seen; `arms` keeps a subset, `smooth` > 1 draws a trailing mean over the samples
    of that many batch-32 validations (250 steps each) over the raw curve (faint); `log_x` for arms whose sample
    counts differ by an order of magnitude (batch 256 for as many steps as batch 32 sees 8x the samples)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, rs in by_arm.items():
        if arms is not None and arm not in arms:
            continue
        for i, r in enumerate(rs):
            if not r["val_curve"]:
                continue
            s, v = zip(*r["val_curve"])
            x = [step * r["batch_size"] / 32 for step in s]  # samples, in batch-32 steps
            if arms is not None and len(arms) <= 10:  # a small subset: the first distinct colours
                colour = plt.cm.tab10(arms.index(arm) % 10)
            else:  # 20 distinct colours, one per arm
                colour = plt.cm.tab20(ARMS.index(arm) if arm in ARMS else 19)
            if smooth > 1:
                ax.plot(x, v, alpha=0.2, color=colour)
                v = rolling_mean(x, list(v), smooth * 250)
            ax.plot(x, v, label=arm if i == 0 else None, alpha=0.8, color=colour)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("samples seen / 32 (= steps at batch 32)" + (", log scale" if log_x else ""))
    ax.set_ylabel("val t2i R@1" + (f" (trailing mean over {smooth * 250} steps' samples)" if smooth > 1 else ""))
    ax.set_title("momentum queue vs in-batch InfoNCE (val families, three styles)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("arms", nargs="+", choices=ARMS)
    r.add_argument("--seeds", type=int, nargs="+", default=[0])
    pk = sub.add_parser("pack", help="pack an unfinished run's last checkpoint into results/queue/state/ (commit it)")
    pk.add_argument("arms", nargs="+", choices=ARMS)
    pk.add_argument("--seeds", type=int, nargs="+", default=[0])
    sub.add_parser("table")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        if not (REPO / DATA / "manifest.json").exists():
            raise SystemExit(f"{DATA} missing: python -m brivl data emoji --out {DATA} "
                             "--styles noto twemoji openmoji --split-by family")
        for seed in args.seeds:
            for arm in args.arms:
                run_arm(arm, seed)
    elif args.cmd == "pack":
        for seed in args.seeds:
            for arm in args.arms:
                pack_arm(arm, seed)
    else:
        by_arm = load_records()
        if not by_arm:
            raise SystemExit(f"no records in {RESULTS.relative_to(REPO)}: run `python scripts/queue_ablation.py run ...`")
        print(table(by_arm))
        plot(by_arm, RESULTS / "val_curves.png", arms=[a for a in by_arm if not a.endswith("-9k")])
        long = [a for a in by_arm if a.endswith("-9k")]
        if long:  # the long protocol, smoothed: 69 val families make a raw curve jump by 0.014 a concept
            plot(by_arm, RESULTS / "val_curves_9k.png", arms=long, smooth=8, log_x=True)
        print(f"curves: {(RESULTS / 'val_curves.png').relative_to(REPO)}"
              + (f", {(RESULTS / 'val_curves_9k.png').relative_to(REPO)}" if long else ""))


if __name__ == "__main__":
    main()
