import itertools
import random

import pytest

from dsearch.analysis.promotion import nondominated_fronts, promote, promoted_count, spread


def dominates(a, b):
    """a = (score, cost) dominates b: at least as good in both, better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


@pytest.mark.parametrize("seed", range(5))
def test_fronts_are_the_nondominated_layers(seed):
    rng = random.Random(seed)
    points = [(round(rng.random(), 1), round(rng.random(), 1)) for _ in range(30)]
    fronts = nondominated_fronts([p[0] for p in points], [p[1] for p in points])
    assert sorted(itertools.chain(*fronts)) == list(range(30))
    for k, front in enumerate(fronts):
        later = list(itertools.chain(*fronts[k:]))
        for i in front:  # nothing in this front or after it dominates a member
            assert not any(dominates(points[j], points[i]) for j in later)
        if k:  # every member of a later front is dominated by someone in the front before
            assert all(any(dominates(points[j], points[i]) for j in fronts[k - 1]) for i in front)


def test_score_only_fronts_are_equal_scores_best_first():
    assert nondominated_fronts([0.5, 0.9, 0.5, 0.7], None) == [[1], [3], [0, 2]]


def test_spread_takes_the_most_accurate_then_the_farthest_in_log_cost():
    # One front: costlier is more accurate. Costs 1..16 by powers of two: log-spaced.
    costs = [1.0, 2.0, 4.0, 8.0, 16.0]
    scores = [0.5, 0.6, 0.7, 0.8, 0.9]
    assert spread(range(5), scores, costs, 1) == [4]
    assert spread(range(5), scores, costs, 2) == [4, 0]
    assert sorted(spread(range(5), scores, costs, 3)) == [0, 2, 4]


def test_promote_fills_whole_fronts_first_then_spreads_the_next():
    scores = [0.9, 0.8, 0.7, 0.85, 0.6, 0.5]
    costs = [100, 50, 10, 120, 5, 1]
    # front 0: 0 (0.9@100), 1 (0.8@50), 2 (0.7@10), 4 (0.6@5), 5 (0.5@1); front 1: 3 (0.85@120)
    assert sorted(promote(scores, costs, 5)) == [0, 1, 2, 4, 5]
    chosen = promote(scores, costs, 2)
    assert chosen[0] == 0 and chosen[1] == 5  # the most accurate, then the cheapest end of the front
    assert promote(scores, costs, 6)[-1] == 3


def test_promote_by_score_alone_for_an_accuracy_study():
    assert promote([0.1, 0.9, 0.5, 0.7], None, 2) == [1, 3]


def test_promoted_count_is_the_best_one_over_eta_at_least_one():
    assert [promoted_count(n, 3) for n in (0, 1, 2, 3, 4, 10, 30)] == [0, 1, 1, 1, 2, 4, 10]
