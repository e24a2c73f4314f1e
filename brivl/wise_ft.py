"""WiSE-FT: weight-space ensembling of a model and its fine-tuned continuation.

Wortsman et al., 2022, "Robust fine-tuning of zero-shot models" (CVPR). Fine-tuning a contrastive model for
a new skill costs part of what it could do before; the linear path between the two weight vectors,
``theta(alpha) = (1 - alpha) * theta_0 + alpha * theta_1``, often keeps most of both, because a fine-tuned
copy stays in the same basin as its start. Here ``theta_0`` is a shipped dual tower and ``theta_1`` a
continuation of it (the NegCLIP arms of issue 15, which buy relation scores with retrieval).

    python -m brivl wise-ft --zero-shot models/brivl-emoji --fine-tuned runs/export/negclip-parallel-low \
        --alpha 0.5 --out runs/export/negclip-parallel-low-wise-0.5 --eval-data data/emoji

Both folders must hold the same architecture and tokenizer; ``alpha`` 0 gives ``theta_0``, 1 gives ``theta_1``.
"""
from __future__ import annotations

from pathlib import Path

import torch

TOKENIZER_FILE = "tokenizer.json"


def interpolate(theta0: dict[str, torch.Tensor], theta1: dict[str, torch.Tensor],
                alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * theta0 + alpha * theta1`` for every floating tensor; integer buffers must be equal."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha {alpha} is outside [0, 1] (0: the zero-shot weights, 1: the fine-tuned ones)")
    if theta0.keys() != theta1.keys():
        only0, only1 = sorted(theta0.keys() - theta1.keys()), sorted(theta1.keys() - theta0.keys())
        raise ValueError(f"the two models are not the same architecture: only in the first {only0[:5]}, "
                         f"only in the second {only1[:5]}")
    out = {}
    for k, b in theta1.items():
        a = theta0[k]
        if a.shape != b.shape:
            raise ValueError(f"{k}: shape {tuple(a.shape)} vs {tuple(b.shape)}: not the same architecture")
        if b.is_floating_point():
            out[k] = torch.lerp(a.float(), b.float(), alpha).to(b.dtype)
        elif torch.equal(a, b):
            out[k] = b.clone()
        else:
            raise ValueError(f"{k}: the integer buffers of the two models differ, so they cannot be interpolated")
    return out


def same_tokenizer(folder0: str | Path, folder1: str | Path) -> bool:
    """Whether two model folders tokenize alike (their ``tokenizer.json`` files are equal)."""
    f0, f1 = Path(folder0) / TOKENIZER_FILE, Path(folder1) / TOKENIZER_FILE
    return f0.exists() == f1.exists() and (not f0.exists() or f0.read_bytes() == f1.read_bytes())


def wise_ft(zero_shot: str | Path, fine_tuned: str | Path, alpha: float, device: str = "cpu"):
    """The DualTower at ``alpha`` on the path from ``zero_shot`` to ``fine_tuned`` (two model folders); its
    ``info`` records both ends and ``alpha``."""
    from .factory import create_model

    if not same_tokenizer(zero_shot, fine_tuned):
        raise ValueError(f"{zero_shot} and {fine_tuned} have different tokenizers: WiSE-FT needs a continuation "
                         "of the same model")
    m0 = create_model(str(zero_shot), device=device)
    m1 = create_model(str(fine_tuned), device=device)
    m1.clip.load_state_dict(interpolate(m0.clip.state_dict(), m1.clip.state_dict(), alpha))
    m1.info["wise_ft"] = {"zero_shot": str(zero_shot), "fine_tuned": str(fine_tuned), "alpha": alpha}
    return m1
