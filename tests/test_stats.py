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


def _ranks_written_out(x):
    """Average ranks by sorting: each run of equal values gets the mean of the positions it fills (1-based)."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks, i = [0.0] * len(x), 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


@pytest.mark.parametrize("seed", [0, 1])
def test_spearman_with_ties_against_pearson_of_written_out_ranks(seed):
    from brivl.stats import average_ranks, paired_ci, spearman

    rng = random.Random(seed)
    a = [rng.randint(1, 8) for _ in range(40)]  # many ties
    b = [x + rng.randint(-3, 3) for x in a]
    ra, rb = _ranks_written_out(a), _ranks_written_out(b)
    assert average_ranks(torch.tensor(a)).tolist() == pytest.approx(ra)
    ma, mb = statistics.mean(ra), statistics.mean(rb)
    want = sum((x - ma) * (y - mb) for x, y in zip(ra, rb)) / (
        sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    assert float(spearman(torch.tensor(a), torch.tensor(b))) == pytest.approx(want)
    assert float(spearman(torch.tensor(a), -torch.tensor(a))) == pytest.approx(-1.0)
    # the paired interval resamples (a_i, b_i) together: the same draws written out give the same interval
    boots = sorted(float(spearman(torch.tensor([a[i] for i in row]), torch.tensor([b[i] for i in row])))
                   for row in bootstrap_draws(len(a), 200, seed).tolist())
    assert paired_ci(a, b, spearman, 200, seed) == pytest.approx([boots[round(0.025 * 199)], boots[round(0.975 * 199)]])
