"""AltCLIP beyond m18: the per-language report of a student that covers every CLDR language of the data.

Rows are languages grouped by script and sorted by closed-view text->image R@1; reference columns are the
English teacher (its en R@1, the target's yardstick) and the m9-only student in the same language. The checks
are the targets of teacher learning at this scale:

* closed view: every covered language >= ``ratio`` x the teacher's English R@1;
* the m9 languages lose at most ``max_m9_loss`` of closed R@1 against the m9-only student;
* held-out concepts (test view): mean R@10 over the languages outside m9 >= ``gain`` x the baseline's.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from brivl.data.emoji import M9


def _get(res: dict | None, lang: str, metric: str) -> float | None:
    if not res or lang not in res.get("languages", {}):
        return None
    return res["languages"][lang]["t2i"][metric]


def language_checks(student: dict[str, dict], reference: dict[str, dict], baseline: dict[str, dict],
                    teacher_en: float, ratio: float = 0.90, max_m9_loss: float = 0.02, gain: float = 2.0) -> dict:
    """``student``/``reference``/``baseline``: view -> eval result (``brivl eval --json`` objects)."""
    langs = list(student["closed"]["languages"])
    closed = {lang: _get(student["closed"], lang, "R@1") for lang in langs}
    worst = min(closed, key=closed.get)
    m9_loss = {lang: _get(reference["closed"], lang, "R@1") - closed[lang] for lang in M9
               if lang in closed and _get(reference["closed"], lang, "R@1") is not None}
    train_loss = {}  # the same on the concepts both students learnt from (when a "train" view is given)
    if "train" in student and "train" in reference:
        train_loss = {lang: _get(reference["train"], lang, "R@1") - _get(student["train"], lang, "R@1")
                      for lang in m9_loss if _get(student["train"], lang, "R@1") is not None}
    outside = [lang for lang in langs if lang not in M9]
    held = statistics.mean(_get(student["test"], lang, "R@10") for lang in outside) if outside else float("nan")
    base = statistics.mean(_get(baseline["test"], lang, "R@10") for lang in outside) if outside else float("nan")
    below = sorted(lang for lang, v in closed.items() if v < ratio * teacher_en)
    return {
        "teacher_en_R@1": teacher_en,
        "closed_worst": {"lang": worst, "R@1": closed[worst], "ratio": closed[worst] / teacher_en},
        "closed_below_target": below, "closed_target_met": not below,
        "m9_max_loss": max(m9_loss.values()), "m9_loss": m9_loss,
        "m9_target_met": max(m9_loss.values()) <= max_m9_loss,
        **({"m9_loss_train": train_loss, "m9_max_loss_train": max(train_loss.values())} if train_loss else {}),
        "test_outside_m9_mean_R@10": held, "baseline_test_outside_m9_mean_R@10": base,
        "test_target_met": held >= gain * base, "n_outside_m9": len(outside),
    }


def language_table(student: dict[str, dict], reference: dict[str, dict], scripts: dict[str, str],
                   teacher_en: float) -> str:
    """Markdown: one row per language, grouped by script (largest group first), by closed R@1 within."""
    langs = list(student["closed"]["languages"])
    groups: dict[str, list[str]] = {}
    for lang in langs:
        groups.setdefault(scripts.get(lang, "UNKNOWN"), []).append(lang)
    order = sorted(groups, key=lambda s: (-len(groups[s]), s))
    f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| script | language | closed R@1 | × teacher en | m9 student closed R@1 | test R@10 | "
             "m9 student test R@10 |", "|---|---|---|---|---|---|---|",
             f"| (teacher) | en, English teacher | {teacher_en:.3f} | 1.000 | | | |"]
    for script in order:
        for lang in sorted(groups[script], key=lambda g: -_get(student["closed"], g, "R@1")):
            r1 = _get(student["closed"], lang, "R@1")
            lines.append(f"| {script.title()} | {lang}{' (m9)' if lang in M9 else ''} | {r1:.3f} | "
                         f"{r1 / teacher_en:.3f} | {f(_get(reference['closed'], lang, 'R@1'))} | "
                         f"{f(_get(student['test'], lang, 'R@10'))} | {f(_get(reference['test'], lang, 'R@10'))} |")
    return "\n".join(lines)


def plot_languages(student: dict[str, dict], reference: dict[str, dict], scripts: dict[str, str],
                   teacher_en: float, out: str | Path, ratio: float = 0.90) -> Path:
    """Bars: closed R@1 per language (sorted, coloured by script); dots: the m9 student; lines: the targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = sorted(student["closed"]["languages"], key=lambda g: -_get(student["closed"], g, "R@1"))
    names = sorted({scripts.get(g, "UNKNOWN") for g in langs}, key=lambda s: -sum(scripts.get(g) == s for g in langs))
    cmap = plt.get_cmap("nipy_spectral")
    colour = {s: cmap(0.05 + 0.9 * i / max(1, len(names) - 1)) for i, s in enumerate(names)}
    fig, ax = plt.subplots(figsize=(max(10, 0.16 * len(langs)), 4.2))
    x = range(len(langs))
    ax.bar(x, [_get(student["closed"], g, "R@1") for g in langs],
           color=[colour[scripts.get(g, "UNKNOWN")] for g in langs], width=0.8)
    ref = [(i, _get(reference["closed"], g, "R@1")) for i, g in enumerate(langs)]
    ax.scatter([i for i, v in ref if v is not None], [v for _, v in ref if v is not None], s=8, c="k", zorder=3,
               label="m9-only student")
    ax.axhline(teacher_en, color="k", lw=0.8, ls="--", label=f"English teacher, en ({teacher_en:.3f})")
    ax.axhline(ratio * teacher_en, color="r", lw=0.8, ls=":", label=f"target: {ratio:.2f} x teacher")
    ax.set_xticks(list(x), langs, rotation=90, fontsize=6)
    ax.set_xlim(-1, len(langs))
    ax.set_ylim(0, 1)
    ax.set_ylabel("closed-view text->image R@1")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[s]) for s in names]
    leg = ax.legend(loc="upper right", fontsize=7)
    ax.add_artist(leg)
    ax.legend(handles, [s.title() for s in names], loc="upper left", bbox_to_anchor=(1.005, 1.0), ncol=1 + len(names) // 16,
              fontsize=6, title="script", title_fontsize=7)
    ax.set_title(f"Student over {len(langs)} CLDR languages, closed view (1 bar per language)", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out
