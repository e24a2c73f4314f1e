"""Teacher-learning losses (AltCLIP stage 1): the student's embedding of text in language L is pulled
toward the frozen teacher's embedding of the parallel English text.

``mse`` (AltCLIP's choice, on the raw projected features), ``cosine`` (direction only), or
``contrastive`` (InfoNCE of student rows against teacher columns). The columns are the batch's own
teacher features, or a memory bank (Wu et al., 2018) of the teacher's features of *every* English target
of the corpus: the teacher is frozen, so unlike MoCo's queue the bank never goes stale, and each row
meets all targets as negatives instead of the few hundred that share its batch. Columns of the same
concept as a row (its own English text elsewhere in the batch; with a bank, the other English sides of
the same emoji) are not its negatives.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

KINDS = ("mse", "cosine", "contrastive")


class TeacherLearningLoss(nn.Module):
    def __init__(self, kind: str = "mse", temperature: float = 0.05):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"teacher-learning loss must be one of {', '.join(KINDS)}, got {kind!r}")
        self.kind, self.temperature = kind, temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, groups: torch.Tensor | None = None,
                bank: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                not_negative: torch.Tensor | None = None) -> torch.Tensor:
        """student, teacher: (B, D); groups: (B,) ids of the English text (equal ids = same target).
        Contrastive with a bank: bank (T, D) teacher features, labels (B,) each row's column in it,
        not_negative (B, T) True where a column is no negative of the row (its own label aside)."""
        if student.shape != teacher.shape:
            raise ValueError(f"student features {tuple(student.shape)} vs teacher {tuple(teacher.shape)}: the "
                             "student's projection must output the teacher's embedding width")
        if self.kind == "mse":
            return F.mse_loss(student, teacher)
        s, t = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
        if self.kind == "cosine":
            return (1 - (s * t).sum(-1)).mean()
        if bank is not None:
            logits = s @ F.normalize(bank, dim=-1).T / self.temperature  # (B, T)
            if not_negative is not None:
                own = F.one_hot(labels, len(bank)).bool()
                logits = logits.masked_fill(not_negative & ~own, float("-inf"))
            return F.cross_entropy(logits, labels)
        logits = s @ t.T / self.temperature  # (B, B)
        if groups is not None:  # another row with the same English target is no negative
            same = groups[:, None] == groups[None, :]
            logits = logits.masked_fill(same & ~torch.eye(len(s), dtype=torch.bool, device=s.device), float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(s), device=s.device))
