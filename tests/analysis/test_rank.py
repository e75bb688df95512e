"""Rank agreement against independent truths: hand-worked examples, published values, brute-force definitions."""
import itertools
import math
import random
import statistics

import numpy as np
import pytest

from dsearch.analysis.rank import (
    agreement,
    average_ranks,
    bootstrap,
    kendall_tau,
    paired_difference,
    percentile_interval,
    resample_indices,
    spearman_rho,
)


def brute_tau_b(x, y):
    """Kendall (1945): (concordant - discordant) / sqrt((n0 - ties in x) * (n0 - ties in y)), pair by pair."""
    concordant = discordant = tied_x = tied_y = 0
    pairs = list(itertools.combinations(range(len(x)), 2))
    for i, j in pairs:
        dx, dy = x[i] - x[j], y[i] - y[j]
        tied_x += dx == 0
        tied_y += dy == 0
        if dx * dy > 0:
            concordant += 1
        elif dx * dy < 0:
            discordant += 1
    denom = math.sqrt((len(pairs) - tied_x) * (len(pairs) - tied_y))
    return (concordant - discordant) / denom if denom else math.nan


def brute_ranks(x):
    """Rank = values below + (values equal, itself included, + 1) / 2: the mean rank over a tie."""
    return [sum(v < a for v in x) + (sum(v == a for v in x) + 1) / 2 for a in x]


def brute_spearman(x, y):
    rx, ry = brute_ranks(x), brute_ranks(y)
    if len(set(rx)) < 2 or len(set(ry)) < 2:
        return math.nan
    return statistics.correlation(rx, ry)


def test_hand_worked_examples():
    # One swapped pair of 6: (5 - 1) / 6; squared rank differences 0+1+1+0: 1 - 6*2 / (4 * 15).
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # Ties: 4 concordant, 0 discordant, one pair tied in x, another in y: tau-b 4 / sqrt(5 * 5), not tau-a's 4/6.
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)
    # Average ranks (1, 2.5, 2.5, 4) and (1, 2, 3.5, 3.5): centred cross sum 3.75 over sqrt(4.5 * 4.5).
    assert spearman_rho([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(3.75 / 4.5)


def test_published_values_with_ties():
    # The worked examples of SciPy's kendalltau and spearmanr documentation.
    assert kendall_tau([12, 2, 1, 12, 2], [1, 4, 7, 1, 0]) == pytest.approx(-0.47140452079103173)
    assert spearman_rho([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)


def test_perfect_and_inverse_orderings_and_undefined_cases():
    x = [0.3, 0.1, 0.9, 0.5, 0.7]
    assert kendall_tau(x, x) == pytest.approx(1) and spearman_rho(x, x) == pytest.approx(1)
    inverse = [-v for v in x]
    assert kendall_tau(x, inverse) == pytest.approx(-1) and spearman_rho(x, inverse) == pytest.approx(-1)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3])) and math.isnan(spearman_rho([1, 1, 1], [1, 2, 3]))
    assert math.isnan(kendall_tau([1], [2])) and math.isnan(spearman_rho([], []))
    with pytest.raises(ValueError):
        kendall_tau([1, 2], [1, 2, 3])


def test_average_ranks():
    assert list(average_ranks([10, 20, 20, 5, 20])) == [2, 4, 4, 1, 4]


def test_invariant_to_monotone_transforms():
    rng = random.Random(3)
    x = [rng.random() for _ in range(15)]
    y = [a + rng.gauss(0, 0.3) for a in x]
    for f, g in ((math.exp, lambda v: v ** 3), (lambda v: 5 * v - 2, math.atan)):
        assert kendall_tau([f(v) for v in x], [g(v) for v in y]) == pytest.approx(kendall_tau(x, y))
        assert spearman_rho([f(v) for v in x], [g(v) for v in y]) == pytest.approx(spearman_rho(x, y))


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_brute_force_definitions_on_random_data_with_ties(seed):
    rng = random.Random(seed)
    n = rng.randint(2, 30)
    x = [rng.randint(0, 5) for _ in range(n)]  # a small range: many ties
    y = [rng.randint(0, 5) + 0.5 * a for a in x]
    for fast, brute in ((kendall_tau, brute_tau_b), (spearman_rho, brute_spearman)):
        want = brute(x, y)
        got = fast(x, y)
        assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want)


def test_bootstrap_resamples_pairs_and_takes_percentiles():
    x = np.array([0.1, 0.4, 0.35, 0.8, 0.6, 0.9, 0.2])
    y = np.array([0.2, 0.3, 0.5, 0.7, 0.9, 0.8, 0.1])
    idx = resample_indices(len(x), 200, seed=7)
    assert idx.shape == (200, 7) and (resample_indices(len(x), 200, seed=7) == idx).all()
    from dsearch.analysis.rank import STATISTICS

    values = bootstrap(STATISTICS["tau"], x, y, idx)
    brute = [brute_tau_b(list(x[r]), list(y[r])) for r in idx]
    np.testing.assert_allclose(values, brute, equal_nan=True)
    finite = sorted(v for v in brute if not math.isnan(v))
    low, high = percentile_interval(values, 0.9)
    assert low == pytest.approx(np.percentile(finite, 5)) and high == pytest.approx(np.percentile(finite, 95))


def test_agreement_intervals():
    rng = random.Random(0)
    x = [rng.random() for _ in range(20)]
    y = [a + rng.gauss(0, 0.2) for a in x]
    result = agreement(x, y, resamples=500)
    assert result["n"] == 20
    assert result["tau"] == pytest.approx(brute_tau_b(x, y)) and result["spearman"] == pytest.approx(
        brute_spearman(x, y))
    for name in ("tau", "spearman"):
        low, high = result[f"{name}_ci"]
        assert -1 <= low < result[name] < high <= 1
    assert agreement(x, y, resamples=500) == result  # seeded
    wide = agreement(x, y, resamples=500, level=0.99)["tau_ci"]
    narrow = agreement(x, y, resamples=500, level=0.5)["tau_ci"]
    assert wide[0] < narrow[0] < narrow[1] < wide[1]
    perfect = agreement(x, x, resamples=300)
    assert perfect["tau_ci"] == [pytest.approx(1), pytest.approx(1)]


def test_paired_difference():
    rng = random.Random(1)
    truth = [rng.random() for _ in range(12)]
    good = [t + rng.gauss(0, 0.05) for t in truth]
    noise = [rng.random() for _ in truth]
    same = paired_difference(good, good, truth, resamples=300)
    assert same == {"difference": 0.0, "ci": [0.0, 0.0]}
    better = paired_difference(good, noise, truth, resamples=300)
    assert better["difference"] == pytest.approx(kendall_tau(good, truth) - kendall_tau(noise, truth))
    assert 0 < better["ci"][0] < better["difference"] < better["ci"][1]
