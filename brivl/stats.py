"""The percentile bootstrap (Efron & Tibshirani, 1993, "An Introduction to the Bootstrap", ch. 13), in one place.

Every 95% interval the repo reports comes from here: the paired comparison of dual towers (``brivl compare``),
the Winoground scores of the compositional tier, and the generation recall of AltDiffusion. One resampling rule
and one percentile rule, so two intervals that look alike were made alike:

* a resample draws ``n`` items with replacement, ``B`` times: ``torch.randint`` from
  ``torch.Generator().manual_seed(seed)`` (:func:`bootstrap_draws`, ``(B, n)`` indices);
* the interval is the nearest-rank percentiles of the ``B`` sorted resampled statistics: the order statistics
  at ``round(q * (B - 1))`` for ``q = (1 - level) / 2`` and ``1 - q`` (:func:`percentile_ci`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

Stat = Callable[[torch.Tensor], torch.Tensor]  # (B, n) resampled values -> (B,) one statistic per resample


def mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=-1)


def median(x: torch.Tensor) -> torch.Tensor:
    """The median as ``statistics.median`` defines it (the mean of the two middle values when n is even)."""
    return torch.quantile(x, 0.5, dim=-1)


def bootstrap_draws(n: int, n_boot: int = 1000, seed: int = 0) -> torch.Tensor:
    """``(B, n)`` item indices, one row per resample (with replacement)."""
    if n < 1:
        raise ValueError("bootstrap of an empty sample: there is nothing to resample")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (n_boot, n), generator=g)


def resample_counts(n: int, n_boot: int = 1000, seed: int = 0) -> torch.Tensor:
    """``(B, n)``: how many times each item is drawn in each resample of :func:`bootstrap_draws` (the weights of a
    paired bootstrap, where several statistics are computed on the same resamples)."""
    draws = bootstrap_draws(n, n_boot, seed)
    ones = torch.ones_like(draws, dtype=torch.float64)
    return torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(1, draws, ones)


def percentile_ci(boots: torch.Tensor | Sequence[float], level: float = 0.95) -> list[float]:
    """``[lo, hi]``: the nearest-rank ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the resampled
    statistics ``boots`` ``(B,)``."""
    s = torch.as_tensor(boots, dtype=torch.float64).flatten().sort().values
    q, last = (1 - level) / 2, len(s) - 1
    return [float(s[round(q * last)]), float(s[round((1 - q) * last)])]


def bootstrap_ci(values: torch.Tensor | Sequence[float], stat: Stat = mean, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> list[float]:
    """The percentile interval of ``stat(values)``, resampling the values with replacement."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()  # (n,)
    return percentile_ci(stat(v[bootstrap_draws(len(v), n_boot, seed)]), level)  # (B, n) -> (B,)


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n along the last dim, ties given the mean of the ranks they span (``(..., n)`` -> same shape)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    less = (x[..., None, :] < x[..., :, None]).sum(-1)  # (..., n): items strictly below each one
    ties = (x[..., None, :] == x[..., :, None]).sum(-1)  # (..., n): items equal to each one (itself included)
    return less + (ties + 1) / 2


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation along the last dim: Pearson's r of the average ranks (``(..., n)`` -> ``(...)``)."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    return (ra * rb).sum(-1) / ((ra * ra).sum(-1) * (rb * rb).sum(-1)).sqrt()


def paired_ci(a: Sequence[float], b: Sequence[float], stat: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
              n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> list[float]:
    """The percentile interval of ``stat(a, b)`` with the pairs ``(a[i], b[i])`` resampled together."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    idx = bootstrap_draws(len(a), n_boot, seed)  # (B, n)
    return percentile_ci(stat(a[idx], b[idx]), level)
