"""Lightning callbacks: the loss-curve plot written next to the CSV log at the end of a fit."""
from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl

from .plots import plot_loss_curve

log = logging.getLogger(__name__)


class LossCurvePlot(pl.Callback):
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.logger is None or not trainer.logger.log_dir:
            return
        csv = Path(trainer.logger.log_dir) / "metrics.csv"
        trainer.logger.save()
        if csv.exists():
            out = plot_loss_curve(csv, csv.with_name("loss_curve.png"))
            log.info("loss curve: %s", out)
            print(f"loss curve written to {out}")
