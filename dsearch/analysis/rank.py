"""Rank agreement between a predictor and a truth: Kendall tau-b, Spearman rho, percentile bootstrap intervals.

numpy only. Kendall's tau-b counts concordant minus discordant pairs over the geometric mean of the
pairs untied in each variable (Kendall 1945), so ties in either variable are handled; Spearman's rho
is the Pearson correlation of average ranks. Both are nan where undefined (fewer than 2 points, or one
variable constant). Intervals resample (predictor, truth) pairs with replacement.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0
MIN_VALID_SHARE = 0.5  # an interval from fewer defined resamples than this share would describe the few, not the data
CHUNK_ELEMENTS = 4_000_000  # pair-sign arrays per bootstrap chunk: bounds memory at any n

Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _as_pairs(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"need two 1-d sequences of equal length, got shapes {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("values must be finite numbers")
    return a, b


def average_ranks(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks 1..n; tied values share the mean of the ranks they span."""
    a = np.asarray(x, dtype=float)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(1, len(a) + 1)
    _, inverse = np.unique(a, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


def _tau_b_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """tau-b of each row of x against the same row of y (2-d arrays); O(n^2) per row, vectorised."""
    sx = np.sign(x[:, :, None] - x[:, None, :])
    sy = np.sign(y[:, :, None] - y[:, None, :])
    # Over ordered pairs every unordered pair counts twice, in the numerator and in both tie-free counts alike.
    s = (sx * sy).sum(axis=(1, 2))
    untied_x = (sx != 0).sum(axis=(1, 2))
    untied_y = (sy != 0).sum(axis=(1, 2))
    denom = np.sqrt(untied_x.astype(float) * untied_y)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, s / np.where(denom > 0, denom, 1.0), np.nan)


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    rx = np.apply_along_axis(average_ranks, 1, x)
    ry = np.apply_along_axis(average_ranks, 1, y)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    denom = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (rx * ry).sum(axis=1) / np.where(denom > 0, denom, 1.0), np.nan)


STATISTICS: dict[str, Statistic] = {"tau": _tau_b_rows, "spearman": _spearman_rows}


def kendall_tau(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Kendall's tau-b of x and y (ties handled); nan when undefined."""
    a, b = _as_pairs(x, y)
    return float(_tau_b_rows(a[None], b[None])[0]) if len(a) >= 2 else float("nan")


def spearman_rho(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rho of x and y (average ranks for ties); nan when undefined."""
    a, b = _as_pairs(x, y)
    return float(_spearman_rows(a[None], b[None])[0]) if len(a) >= 2 else float("nan")


def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """resamples x n indices drawn with replacement (the same draw for the same n and seed)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap(statistic: Statistic, x: np.ndarray, y: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The statistic on each resample of (x, y) pairs; nan where a resample leaves it undefined."""
    n = max(indices.shape[1], 1)
    step = max(1, CHUNK_ELEMENTS // (n * n))
    if len(indices) == 0:
        return np.empty(0)
    chunks = np.array_split(indices, list(range(step, len(indices), step)))
    return np.concatenate([statistic(x[rows], y[rows]) for rows in chunks])


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central `level` interval of the defined values; (nan, nan) when too few resamples are defined."""
    finite = values[np.isfinite(values)]
    if len(values) == 0 or len(finite) < MIN_VALID_SHARE * len(values):
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def agreement(predictor: Sequence[float] | np.ndarray, truth: Sequence[float] | np.ndarray, *,
              resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED) -> dict[str, Any]:
    """Kendall tau-b and Spearman rho of predictor vs truth with percentile bootstrap intervals (JSON-able)."""
    x, y = _as_pairs(predictor, truth)
    indices = resample_indices(len(x), resamples, seed)
    out: dict[str, Any] = {"n": len(x)}
    for name, statistic in STATISTICS.items():
        point = float(statistic(x[None], y[None])[0]) if len(x) >= 2 else float("nan")
        interval = percentile_interval(bootstrap(statistic, x, y, indices), level) if len(x) >= 2 else (
            float("nan"), float("nan"))
        out[name], out[f"{name}_ci"] = point, list(interval)
    return out


def paired_difference(predictor_a: Sequence[float] | np.ndarray, predictor_b: Sequence[float] | np.ndarray,
                      truth: Sequence[float] | np.ndarray, *, statistic: str = "tau", resamples: int = RESAMPLES,
                      level: float = LEVEL, seed: int = SEED) -> dict[str, Any]:
    """stat(a, truth) - stat(b, truth), with an interval from the same resamples for both (a paired bootstrap)."""
    a, y = _as_pairs(predictor_a, truth)
    b, _ = _as_pairs(predictor_b, truth)
    fn = STATISTICS[statistic]
    if len(y) < 2:
        return {"difference": float("nan"), "ci": [float("nan"), float("nan")]}
    indices = resample_indices(len(y), resamples, seed)
    diffs = bootstrap(fn, a, y, indices) - bootstrap(fn, b, y, indices)
    point = float(fn(a[None], y[None])[0] - fn(b[None], y[None])[0])
    return {"difference": point, "ci": list(percentile_interval(diffs, level))}
