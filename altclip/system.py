"""AltCLIP stage 1, teacher learning, as a LightningModule.

The frozen teacher (an English CLIP: a brivl model folder, an open_clip name, or a Hugging Face CLIP)
embeds the English side of each parallel pair; the student (``altclip.model.build_student``) embeds
the other side and learns to land on the teacher's vector. No images are seen in training; the
validation view measures text->image retrieval per language with the teacher's own image tower.
Stage 2 (contrastive tuning with the image tower locked) is ``brivl.system.DualTowerSystem`` with
``lock_image: true`` on the stage-1 folder (``configs/altclip-contrastive.yaml``).
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch

from brivl.data.emoji import M9
from brivl.data.languages import resolve_for_datamodule
from brivl.factory import create_model
from brivl.system import adamw_warmup_cosine, log_retrieval

from .losses import TeacherLearningLoss
from .model import build_student


class TeacherLearningSystem(pl.LightningModule):
    def __init__(
        self,
        teacher: str = "models/clip-emoji-en",
        student: str = "altclip-xlmr-tiny",
        tokenizer: str | None = None,
        loss: str = "mse",
        temperature: float = 0.05,
        negatives: str = "batch",
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 100,
        fused_optimizer: bool = True,
        eval_langs: list[str] = list(M9),
        teacher_cache_size: int = 200_000,
    ):
        super().__init__()
        self.save_hyperparameters()
        if negatives not in ("batch", "bank"):
            raise ValueError(f"negatives must be 'batch' (in-batch teacher features) or 'bank' (all of the "
                             f"corpus's English targets), got {negatives!r}")
        if negatives == "bank" and loss != "contrastive":
            raise ValueError(f"negatives: bank is for loss: contrastive (got loss: {loss})")
        self.teacher = create_model(teacher).eval().requires_grad_(False)
        self.model = build_student(self.teacher, student, tokenizer, teacher_name=teacher).train()
        self.model.lock_image_tower()  # the image side is the teacher's, untouched
        self.criterion = TeacherLearningLoss(loss, temperature)
        self._teacher_cache: dict[str, torch.Tensor] = {}  # English text -> teacher feature (D,)
        self._bank = None  # (features (T, D), English text -> column, (concept -> row, (K, T) membership))

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "configure_preprocess"):
            dm.configure_preprocess(self.model.image_size, *self.model.image_mean_std)
        self.hparams.eval_langs = resolve_for_datamodule(self.hparams.eval_langs, dm)  # 'all': the covered ones

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher never trains (no dropout)
        return self

    def training_step(self, batch, batch_idx):
        texts, english = batch["texts"], batch["english"]  # B texts in language L, B English counterparts
        pred = self.model.encode_text(self.model.tokenize(texts).to(self.device), normalize=False)  # (B, D)
        if self.hparams.negatives == "bank":
            bank, column, concepts = self.teacher_bank()
            labels = torch.tensor([column[t] for t in english], device=self.device)  # (B,)
            not_negative = None
            if concepts is not None and batch.get("keys") and batch["keys"][0] is not None:
                row, member = concepts
                not_negative = member[torch.tensor([row[k] for k in batch["keys"]], device=self.device)]  # (B, T)
            loss = self.criterion(pred, bank[labels], bank=bank, labels=labels, not_negative=not_negative)
        else:
            target = self.teacher_targets(english)  # (B, D)
            groups = None
            if self.criterion.kind == "contrastive":
                ids = {t: i for i, t in enumerate(dict.fromkeys(english))}
                groups = torch.tensor([ids[t] for t in english], device=self.device)
            loss = self.criterion(pred, target, groups)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(texts))
        return loss

    @torch.no_grad()
    def teacher_targets(self, english: list[str]) -> torch.Tensor:
        """The teacher's features (B, D) of the English side. The teacher is frozen and runs in eval mode,
        so a text's feature never changes: each distinct text is embedded once and kept, up to
        ``teacher_cache_size`` texts (CLDR has a few thousand distinct English sides, so after the first
        steps the teacher costs nothing; 0 turns the cache off)."""
        cache = self._teacher_cache
        missing = list(dict.fromkeys(t for t in english if t not in cache))
        fresh = {}
        if missing:
            feats = self.teacher.encode_text(self.teacher.tokenize(missing).to(self.device), normalize=False)
            fresh = dict(zip(missing, feats))  # (D,) each
            if len(cache) + len(missing) <= self.hparams.teacher_cache_size:
                cache.update(fresh)
        return torch.stack([cache[t] if t in cache else fresh[t] for t in english]).to(self.device)

    @torch.no_grad()
    def teacher_bank(self):
        """The memory bank for ``negatives: bank``, built once on the first training step: the teacher's
        features (T, D) of every distinct English side of the training corpus (2,806 for CLDR m9), the
        column of each text, and, where the corpus names each pair's concept, which columns belong to
        each concept ((K, T) bool), so a keyword list is no negative of its own emoji's name."""
        if self._bank is None:
            corpus = getattr(getattr(self.trainer, "datamodule", None), "corpus", None)
            if corpus is None:
                raise RuntimeError("negatives: bank needs the training corpus: fit with altclip.data.ParallelTextDataModule")
            english = list(dict.fromkeys(e for _, e, _ in corpus.pairs))
            column = {t: i for i, t in enumerate(english)}
            bank = torch.cat([self.teacher_targets(english[i:i + 1024]) for i in range(0, len(english), 1024)])
            concepts = None
            if corpus.keys is not None:
                row = {k: i for i, k in enumerate(dict.fromkeys(corpus.keys))}
                member = torch.zeros(len(row), len(english), dtype=torch.bool)
                for (_, t, _), k in zip(corpus.pairs, corpus.keys):
                    member[row[k], column[t]] = True
                concepts = (row, member.to(self.device))
            self._bank = (bank, column, concepts)
        return self._bank

    def validation_step(self, batch, batch_idx):
        log_retrieval(self, self.model, batch, "val", self.hparams.eval_langs)

    def test_step(self, batch, batch_idx):
        log_retrieval(self, self.model, batch, "test", self.hparams.eval_langs)

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_warmup_cosine(self, self.model.named_parameters(), hp.lr, hp.weight_decay, hp.betas,
                                   hp.warmup_steps, hp.fused_optimizer)
