"""``python -m altclip``: AltCLIP teacher learning (stage 1) and contrastive tuning (stage 2) runs, export.

    python -m altclip fit --config configs/altclip-distill.yaml        # stage 1: parallel text only
    python -m altclip export --ckpt runs/altclip-distill/version_0/checkpoints/last.ckpt \\
        --config runs/altclip-distill/version_0/config.yaml --out models/altclip-emoji-distill --eval-data data/emoji
    python -m altclip fit --config configs/altclip-contrastive.yaml    # stage 2: image tower locked
    python -m brivl export --ckpt runs/altclip-contrastive/.../last.ckpt --config ... --out models/altclip-emoji

The run configs name their LightningModule / LightningDataModule by ``class_path`` (stage 1:
``altclip.system.TeacherLearningSystem`` + ``altclip.data.ParallelTextDataModule``; stage 2: brivl's
``DualTowerSystem`` + ``ShardDataModule``). Model folders are ``transformers.AltCLIPModel`` folders;
``python -m brivl eval --model DIR`` evaluates them like any other.
"""
from __future__ import annotations

import argparse
import sys

from brivl.cli import add_export_args, export_model, load_system_checkpoint, named_folder, run_cli


def lightning_main(argv: list[str]) -> None:
    import pytorch_lightning as pl
    from pytorch_lightning.cli import LightningCLI

    LightningCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                 args=argv, save_config_kwargs={"overwrite": True}, seed_everything_default=0)


def cmd_export(a) -> None:
    """A stage-1 (TeacherLearningSystem) checkpoint -> AltCLIPModel folder."""
    from brivl.factory import create_model

    from .model import build_student

    def build(hp):
        return build_student(create_model(hp["teacher"]), hp.get("student", "altclip-xlmr-tiny"), hp.get("tokenizer"),
                             teacher_name=hp["teacher"])

    export_model(load_system_checkpoint(a.ckpt, a.config, build), a)


def ablation_table(teacher: dict, rows: dict[str, dict], langs: list[str], view: str = "closed",
                   metric: str = "R@1") -> tuple[str, dict]:
    """Markdown table of text->image ``metric`` (R@1, R@5, R@10) per language (the teacher in English only) +
    AltCLIP's targets.

    ``teacher`` / ``rows``: eval results (``brivl eval --json`` objects, ``eval.json`` entries)."""
    en = teacher["languages"]["en"]["t2i"][metric]
    head = f"| {view} t2i {metric} | " + " | ".join(langs) + " | mean |"
    lines = [head, "|" + "---|" * (len(langs) + 2), f"| English teacher (en only) | {en:.3f}" + " | " * len(langs) + "|"]
    means = {}
    for name, res in rows.items():
        vals = [res["languages"][lang]["t2i"][metric] for lang in langs]
        means[name] = sum(vals) / len(vals)
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {means[name]:.3f} |")
    checks = {"teacher_en": en, "means": means}
    names = list(rows)
    if len(names) >= 2:  # the tuned student (2nd row) vs 0.95 x teacher in every language; vs the last row
        tuned = rows[names[1]]
        worst = min(langs, key=lambda lang: tuned["languages"][lang]["t2i"][metric])
        checks["worst_lang"] = worst
        checks["worst_ratio"] = tuned["languages"][worst]["t2i"][metric] / en if en else float("nan")
        if len(names) >= 3:  # rows 3.. are baselines; the last is the one the +10 target is taken against
            checks["margins"] = {name: means[names[1]] - means[name] for name in names[2:]}
            checks["margin_over_last"] = checks["margins"][names[-1]]
    return "\n".join(lines), checks


def cmd_ablation(a) -> None:
    import json
    from pathlib import Path

    from brivl.data.emoji import M9

    def load(folder):
        path = Path(folder) / "eval.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: export the model with --eval-data to write it")
        views = json.loads(path.read_text())
        if a.view not in views:
            raise ValueError(f"{path} has no view {a.view!r}; it has: {' '.join(views)}")
        return views[a.view]

    rows = dict(named_folder(r) for r in a.rows)
    table, checks = ablation_table(load(a.teacher), {k: load(v) for k, v in rows.items()}, a.langs or list(M9), a.view,
                                   a.metric)
    print(table)
    if "worst_ratio" in checks:
        names = list(rows)
        print(f"\n{names[1]}: lowest language {checks['worst_lang']} = {checks['worst_ratio']:.3f} x the teacher's "
              f"English {a.metric} {checks['teacher_en']:.3f} (target >= 0.95 in every language)")
        for name, margin in checks.get("margins", {}).items():
            target = " (target >= +10)" if name == names[-1] else ""
            print(f"{names[1]} - {name}: {100 * margin:+.1f} points mean {a.metric}{target}")


def cmd_languages(a) -> None:
    """Every covered language: the student against the English teacher, the m9-only student and a baseline."""
    import json
    from pathlib import Path

    from brivl.cli import run_eval
    from brivl.data.views import load_view
    from brivl.data.languages import covered_languages
    from brivl.data.shards import atomic_write_json
    from brivl.factory import create_model
    from brivl.tokenizer import script_of

    from .languages import language_checks, language_table, plot_languages

    langs = covered_languages(a.data)
    views = {v: load_view(a.data, v) for v in ("closed", "train", "test")}
    scripts = {lang: script_of([n for s in views["closed"][0] for n in (s["meta"].get("captions") or {}).get(lang, [])])
               for lang in langs}

    def evaluate(folder: str) -> dict:
        """Each view from the export's own eval.json when it covers every language, else evaluated here."""
        saved = Path(folder) / "eval.json"
        res = json.loads(saved.read_text()) if saved.is_file() else {}
        out = {v: res[v] for v in views if set(langs) <= set(res.get(v, {}).get("languages", {}))}
        missing = [v for v in views if v not in out]
        if missing:
            model = create_model(folder)
            print(f"evaluating {folder} in {len(langs)} languages on {', '.join(missing)} ...", flush=True)
            out.update({v: run_eval(model, a.data, v, langs, name=folder, loaded=views[v]) for v in missing})
        return out

    teacher = json.loads((Path(a.teacher) / "eval.json").read_text())["closed"]["languages"]["en"]["t2i"]["R@1"]
    student, reference, baseline = evaluate(a.model), evaluate(a.reference), evaluate(a.baseline)
    checks = language_checks(student, reference, baseline, teacher)
    table = language_table(student, reference, scripts, teacher)
    out = Path(a.out or a.model)
    png = plot_languages(student, reference, scripts, teacher, out / "languages.png")
    atomic_write_json(out / "languages.json", {
        "model": a.model, "teacher": a.teacher, "reference": a.reference, "baseline": a.baseline, "data": a.data,
        "languages": langs, "scripts": scripts, "checks": checks,
        "student_train_eval": student["train"], "reference_eval": reference, "baseline_eval": baseline})
    (out / "languages.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    c = checks
    print(f"\nclosed view: lowest {c['closed_worst']['lang']} R@1 {c['closed_worst']['R@1']:.3f} = "
          f"{c['closed_worst']['ratio']:.3f} x the teacher's en {teacher:.3f} (target >= 0.90 in every language: "
          f"{'met' if c['closed_target_met'] else 'not met, ' + str(len(c['closed_below_target'])) + ' below'})")
    print(f"m9 vs the m9-only student: largest loss {100 * c['m9_max_loss']:+.1f} points closed R@1 "
          f"(target <= 2: {'met' if c['m9_target_met'] else 'not met'})"
          + (f"; on the train split (concepts both learnt from): {100 * c['m9_max_loss_train']:+.1f}"
             if "m9_max_loss_train" in c else ""))
    print(f"held-out concepts, {c['n_outside_m9']} languages outside m9: mean R@10 "
          f"{c['test_outside_m9_mean_R@10']:.3f} vs {a.baseline} {c['baseline_test_outside_m9_mean_R@10']:.3f} "
          f"(target >= 2x: {'met' if c['test_target_met'] else 'not met'})")
    print(f"-> {out / 'languages.md'}, {out / 'languages.json'}, {png}")


def cmd_models(a) -> None:
    from .model import list_student_configs

    print("\n".join(list_student_configs()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m altclip", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for c in ("fit", "validate", "test"):
        sub.add_parser(c, help=f"Lightning {c} (LightningCLI; --config configs/altclip-*.yaml)")
    add_export_args(sub.add_parser("export", help="stage-1 checkpoint -> AltCLIPModel folder")).set_defaults(
        func=cmd_export)
    sub.add_parser("models", help="list student text-tower configs").set_defaults(func=cmd_models)
    t = sub.add_parser("ablation", help="teacher-learning table from the models' eval.json")
    t.add_argument("--teacher", required=True, help="English teacher folder (its en figure of --metric is the reference)")
    t.add_argument("--rows", nargs="+", required=True,
                   help="NAME=FOLDER in order: stage 1, stage 2, then baselines (the margin is printed against each; the target against the last)")
    t.add_argument("--view", default="closed", help="an eval.json view: closed, test, style:NAME, test+style:NAME")
    t.add_argument("--metric", default="R@1", choices=["R@1", "R@5", "R@10"], help="text->image recall to tabulate")
    t.add_argument("--langs", nargs="+", default=None)
    t.set_defaults(func=cmd_ablation)
    g = sub.add_parser("languages", help="per-language report of an all-language student (table, plot, targets)")
    g.add_argument("--model", default="models/altclip-emoji-all")
    g.add_argument("--teacher", default="models/clip-emoji-en", help="its English closed R@1 is the yardstick")
    g.add_argument("--reference", default="models/altclip-emoji", help="the m9-only student")
    g.add_argument("--baseline", default="models/brivl-emoji", help="held-out R@10 outside m9 to double")
    g.add_argument("--data", default="data/emoji")
    g.add_argument("--out", default=None, help="folder for languages.{md,json,png} (default: --model)")
    g.set_defaults(func=cmd_languages)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(list(sys.argv[1:] if argv is None else argv), lightning_main, build_parser())
