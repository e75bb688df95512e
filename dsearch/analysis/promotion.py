"""Which candidates a rung of the finals promotes: non-dominated rank over (score, cost), spread along cost.

The rule (after Syne Tune's MOASHA): candidates are sorted into fronts by non-dominated rank (score up,
cost down; score alone for an accuracy-only study). Whole fronts are promoted while they fit; from the first
front that does not fit, the promoted points are spread along log cost: first its most accurate point, then
repeatedly the point farthest (in log cost) from those already taken, so that cheap and expensive candidates
both survive.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def promoted_count(n: int, eta: int) -> int:
    """How many of `n` candidates a rung keeps: the best 1/eta, at least one."""
    return max(1, math.ceil(n / eta)) if n else 0


def nondominated_fronts(scores: Sequence[float], costs: Sequence[float] | None) -> list[list[int]]:
    """Indices grouped into fronts, best first: a front is what no remaining point dominates (score up, cost down).

    With `costs` None only the score counts: each front holds the points with equal scores.
    """
    score = np.asarray(scores, dtype=float)
    cost = np.zeros_like(score) if costs is None else np.asarray(costs, dtype=float)
    # dominated[i, j]: j is at least as good as i in both and better in one
    dominated = ((score[None, :] >= score[:, None]) & (cost[None, :] <= cost[:, None])
                 & ((score[None, :] > score[:, None]) | (cost[None, :] < cost[:, None])))
    left = set(range(len(score)))
    fronts = []
    while left:
        front = sorted(i for i in left if not any(dominated[i, j] for j in left))
        fronts.append(front)
        left -= set(front)
    return fronts


def spread(indices: Sequence[int], scores: Sequence[float], costs: Sequence[float], k: int) -> list[int]:
    """`k` of `indices` spread along log cost: the most accurate first, then each time the farthest from the taken."""
    if k >= len(indices):
        return list(indices)
    log_cost = {i: math.log(max(float(costs[i]), 1e-12)) for i in indices}
    first = min(indices, key=lambda i: (-scores[i], costs[i], i))
    taken = [first]
    while len(taken) < k:
        rest = [i for i in indices if i not in taken]
        taken.append(max(rest, key=lambda i: (min(abs(log_cost[i] - log_cost[t]) for t in taken), scores[i], -i)))
    return taken


def promote(scores: Sequence[float], costs: Sequence[float] | None, k: int) -> list[int]:
    """The indices of the `k` candidates a rung promotes (see the module's rule), best front first."""
    chosen: list[int] = []
    for front in nondominated_fronts(scores, costs):
        room = k - len(chosen)
        if room <= 0:
            break
        if len(front) <= room or costs is None:
            chosen += front[:room]
        else:
            chosen += spread(front, scores, costs, room)
    return chosen
