"""A callback for the SIGKILL resume test: the training process kills itself with SIGKILL after step ``step``
(no handler runs, no checkpoint is written on the way out: as when a machine is taken away)."""
import os
import signal

import pytorch_lightning as pl


class KillAtStep(pl.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
