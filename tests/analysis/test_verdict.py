import math

import numpy as np
import pytest
from scipy import stats

from dsearch.analysis.verdict import Finalist, difference, make_verdict, mean_interval, tied, verdict_lines

T_975_DF2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (tables)


def test_mean_interval_is_the_t_interval():
    values = [0.80, 0.82, 0.87]
    mean = sum(values) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    half = T_975_DF2 * sd / math.sqrt(3)
    got = mean_interval(values)
    assert got == (pytest.approx(mean), pytest.approx(mean - half), pytest.approx(mean + half))
    assert mean_interval([0.5]) == (0.5, None, None)


def test_difference_is_welchs():
    a, b = [0.80, 0.82, 0.87, 0.85], [0.70, 0.79, 0.74]
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))  # Welch-Satterthwaite
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    d = difference(a, b)
    assert d["difference"] == pytest.approx(np.mean(a) - np.mean(b))
    assert d["low"] == pytest.approx(d["difference"] - half) and d["high"] == pytest.approx(d["difference"] + half)
    assert not tied(d)
    assert tied(difference([0.8, 0.9, 0.85], [0.82, 0.88, 0.86]))


def _f(key, mflops, val, test=None, within=True, trial=0):
    return Finalist(key, trial, key, mflops, 1.0, within, tuple(val), tuple(test or val))


def test_the_pick_is_the_cheapest_of_those_tied_with_the_best():
    best = _f("trial 1", 250.0, [0.870, 0.872, 0.868], trial=1)
    tied_cheap = _f("trial 2", 120.0, [0.865, 0.871, 0.862], trial=2)
    behind = _f("trial 3", 80.0, [0.80, 0.801, 0.799], trial=3)
    over = _f("trial 4", 400.0, [0.95, 0.95, 0.95], within=False, trial=4)
    v = make_verdict([best, tied_cheap, behind, over], None, 224, [0, 1, 2])
    roles = {r["key"]: r["role"] for r in v["rows"]}
    assert v["pick"] == 2 and v["best_val"] == "trial 1"
    assert roles == {"trial 1": "tied", "trial 2": "pick", "trial 3": "behind", "trial 4": "over budget"}
    assert "tied with trial 1" in v["sentences"][0] and "cheaper" in v["sentences"][0]


def test_baseline_sentence_says_beats_ties_and_trails():
    pick = _f("trial 1", 200.0, [0.87, 0.88, 0.86], trial=1)
    for base_test, word in (([0.80, 0.81, 0.80], "beats"), ([0.87, 0.86, 0.885], "tied with"),
                            ([0.95, 0.96, 0.95], "trails")):
        base = _f("mobilenet_v2_w0.75_dsc", 210.0, [0.8, 0.8, 0.81], base_test, trial=None)
        v = make_verdict([pick], base, 224, [0, 1, 2])
        assert word in v["sentences"][1], v["sentences"][1]
        assert v["rows"][-1]["role"] == "baseline"
        assert any("mobilenet_v2_w0.75_dsc" in line for line in verdict_lines(v))
