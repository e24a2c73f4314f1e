"""Plots people would rather see than read: loss curves from a Lightning CSV log."""
from __future__ import annotations

import csv
from pathlib import Path


def read_metrics_csv(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` from Lightning's CSVLogger ``metrics.csv``."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0))
            for k, v in row.items():
                if k in ("step", "epoch") or v in ("", None):
                    continue
                series.setdefault(k, []).append((step, float(v)))
    return series


def plot_loss_curve(metrics_csv: str | Path, out: str | Path, smooth: int = 20) -> Path:
    """Training loss (raw + moving average), validation loss and validation R@1 against step, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = read_metrics_csv(metrics_csv)
    fig, ax = plt.subplots(figsize=(7, 4))
    loss = s.get("train/loss", [])
    if loss:
        steps, vals = zip(*loss)
        ax.plot(steps, vals, alpha=0.3, color="C0", label="train/loss")
        if len(vals) > smooth:
            avg = [sum(vals[i - smooth:i]) / smooth for i in range(smooth, len(vals) + 1)]
            ax.plot(steps[smooth - 1:], avg, color="C0", label=f"train/loss (avg {smooth})")
    if s.get("val/loss"):  # a generator validates its loss (unseen concepts, fixed noise), not R@1
        steps, vals = zip(*s["val/loss"])
        ax.plot(steps, vals, "o-", color="C3", label="val/loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    val = {k: v for k, v in s.items() if k.endswith("t2i_R@1") and "/" in k and k.count("/") == 1}
    if val:
        ax2 = ax.twinx()
        for i, (k, v) in enumerate(sorted(val.items())):
            steps, vals = zip(*v)
            ax2.plot(steps, vals, "o-", color=f"C{i + 1}", label=k)
        ax2.set_ylabel("R@1")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    run = Path(metrics_csv).resolve().parent
    ax.set_title(f"{run.parent.name}/{run.name}")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
