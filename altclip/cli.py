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

from brivl.cli import add_export_args, export_model, load_system_checkpoint, run_cli


def lightning_main(argv: list[str]) -> None:
    import pytorch_lightning as pl
    from pytorch_lightning.cli import LightningCLI

    LightningCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                 args=argv, save_config_kwargs={"overwrite": True}, seed_everything_default=0)


def cmd_export(a) -> None:
    """A stage-1 (TeacherLearningSystem) checkpoint -> AltCLIPModel folder."""
    from brivl.model import create_model

    from .model import build_student

    def build(hp):
        return build_student(create_model(hp["teacher"]), hp.get("student", "altclip-xlmr-tiny"), hp.get("tokenizer"),
                             teacher_name=hp["teacher"])

    export_model(load_system_checkpoint(a.ckpt, a.config, build), a)


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
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(list(sys.argv[1:] if argv is None else argv), lightning_main, build_parser())
