"""brivl.stats: the one percentile bootstrap, against resamples written out one by one."""
import random
import statistics

import pytest
import torch

from brivl.stats import bootstrap_ci, bootstrap_draws, median, percentile_ci, resample_counts


def _written_out(values, stat, n_boot, seed):
    """Resample by resample with the same draws, the statistic computed by the standard library, nearest rank."""
    boots = sorted(stat([values[i] for i in row]) for row in bootstrap_draws(len(values), n_boot, seed).tolist())
    return [boots[round(0.025 * (n_boot - 1))], boots[round(0.975 * (n_boot - 1))]]


@pytest.mark.parametrize("stat,ref", [("mean", statistics.fmean), ("median", statistics.median)])
@pytest.mark.parametrize("n", [1, 7, 30])
def test_bootstrap_ci_matches_a_written_out_resampling(stat, ref, n):
    rng = random.Random(n)
    values = [float(rng.randrange(1, 500)) for _ in range(n)]
    kw = {} if stat == "mean" else {"stat": median}
    got = bootstrap_ci(values, n_boot=200, seed=5, **kw)
    assert got == pytest.approx(_written_out(values, ref, 200, 5), abs=1e-9)
    assert got[0] <= ref(values) <= got[1]


def test_interval_narrows_with_n_and_is_a_point_for_constants():
    assert bootstrap_ci([3.0] * 40) == [3.0, 3.0]
    wide = bootstrap_ci([0.0, 1.0] * 10)
    narrow = bootstrap_ci([0.0, 1.0] * 200)
    assert wide[0] < narrow[0] <= 0.5 <= narrow[1] < wide[1]


def test_percentile_ci_and_counts():
    assert percentile_ci(list(range(1000))) == [25.0, 974.0]  # round(0.025 * 999), round(0.975 * 999)
    assert percentile_ci(torch.arange(11.0).flip(0), level=0.8) == [1.0, 9.0]  # order of the input is irrelevant
    counts = resample_counts(9, n_boot=50, seed=2)
    draws = bootstrap_draws(9, n_boot=50, seed=2)
    assert counts.shape == (50, 9) and torch.all(counts.sum(1) == 9)
    assert all(int(counts[b, i]) == int((draws[b] == i).sum()) for b in range(50) for i in range(9))
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
