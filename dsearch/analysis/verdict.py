"""The verdict of a search: its finalists' full-schedule accuracy over several seeds, with intervals and ties;
and how the finals' results are read back from a study (the verdict, which rung each trial reached).

Validation accuracy chooses, test accuracy is only reported. The pick is the finalist within the budget
with the best validation mean, or, among the finalists statistically tied with that one, the cheapest. Two
finalists are tied when the 95% interval of the difference of their validation means (Welch's t, unequal
variances) contains 0. The pick is set against the best hand-designed baseline trained the same way by the
difference of their test means, with its Welch interval. Statistics from scipy.stats.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from ..checks import is_int
from ..search.record import RUNG_PREFIX, VERDICT_ATTR, damaged, kind_of

RECORD_PREFIX = RUNG_PREFIX  # + "<rung>.<target>.s<seed>": one training of the finals
VERDICT_FIX = ("rerun the finals with `dsearch run` on the study (its own settings; they replace the verdict), or "
               "ignore the verdict and name a trial (`--trial N`)")
LEVEL = 0.95
ROLES = {"pick": "the pick", "tied": "tied with the best", "behind": "behind the best",
         "over budget": "over the budget", "baseline": "baseline"}


@dataclass(frozen=True)
class Finalist:
    """One architecture of the final rung and its full-schedule accuracies, one per seed (same seeds for all)."""

    key: str  # "trial 7" or the baseline's label
    trial: int | None  # the study's trial number; None for a baseline
    summary: str  # the architecture in one line
    mflops: float  # at the deployment resolution
    mparams: float
    within_budget: bool
    val: tuple[float, ...]
    test: tuple[float, ...]
    # On the study's latency target (None: the study has none): the whole network measured end to end, median and
    # p90 (`measured` False: predicted from a latency table copied from another machine, where it cannot be timed).
    latency_ms: float | None = None
    latency_p90_ms: float | None = None
    measured: bool = True

    def cost(self, name: str) -> float:
        """The cost the verdict picks by: "mflops" or "latency_ms"."""
        value = self.latency_ms if name == "latency_ms" else self.mflops
        if value is None:
            raise ValueError(f"{self.key} has no {name}")
        return value


# The costs the sentence against the baseline states as ratios, in order: (Finalist field, what it is of).
COST_RATIOS = (("latency_ms", "latency"), ("mflops", "MFLOPs"), ("mparams", "params"))


def study_verdict(study: optuna.Study) -> dict[str, Any] | None:
    """The verdict stored on the study by its finals (`dsearch run`), if they have finished; checked.

    A stored verdict that is not one (hand-edited, written by another version, half-written) raises a one-line
    DsearchError naming the study, the record and what to do (VERDICT_FIX).
    """
    if VERDICT_ATTR not in study.user_attrs:
        return None
    verdict = study.user_attrs[VERDICT_ATTR]
    problem = verdict_problem(verdict)
    if problem is not None:
        raise damaged(study, VERDICT_ATTR, f"cannot be read ({problem})", VERDICT_FIX)
    return verdict


def verdict_plan(study: optuna.Study) -> str | None:
    """The id of the finals' plan the stored verdict closes; None without a readable verdict (the finals redo it)."""
    verdict = study.user_attrs.get(VERDICT_ATTR)
    if not isinstance(verdict, dict) or verdict_problem(verdict) is not None:
        return None
    plan = verdict.get("plan")
    return plan if isinstance(plan, str) else None


def _number(value: Any, empty: bool = False) -> bool:
    """True for a finite int or float (not a bool); also for None when `empty`."""
    if value is None:
        return empty
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _row_problem(row: Any) -> str | None:
    """What makes one verdict row unreadable, or None."""
    if not isinstance(row, dict):
        return f"a row is {kind_of(row)}, not an object"
    for key in ("key", "summary"):
        if not isinstance(row.get(key), str):
            return f"a row's {key} is not text"
    if row.get("role") not in ROLES:
        return f"a row's role is {row.get('role')!r}"
    if row.get("trial") is not None and not is_int(row["trial"], 0):
        return f"a row's trial is {row['trial']!r}"
    if not is_int(row.get("n"), 1):
        return f"a row's n is {row.get('n')!r}"
    for key in ("mflops", "mparams", "val_mean", "test_mean"):
        if not _number(row.get(key)):
            return f"a row's {key} is {row.get(key)!r}, not a number"
    for key in ("val_low", "val_high", "test_low", "test_high"):
        if not _number(row.get(key), empty=True):
            return f"a row's {key} is {row.get(key)!r}, not a number"
    for key in ("val", "test"):
        values = row.get(key)
        if not isinstance(values, list) or not values or not all(_number(v) for v in values):
            return f"a row's {key} is not a list of accuracies"
    return None


def verdict_problem(verdict: Any) -> str | None:
    """What makes a stored verdict unreadable (in a few words), or None for one `make_verdict` could have made."""
    if not isinstance(verdict, dict):
        return f"it is {kind_of(verdict)}, not a JSON object"
    rows, sentences, seeds = verdict.get("rows"), verdict.get("sentences"), verdict.get("seeds")
    if not isinstance(rows, list) or not rows:
        return "it has no rows"
    if not isinstance(sentences, list) or not sentences or not all(isinstance(s, str) for s in sentences):
        return "its sentences are not a list of text"
    if not isinstance(seeds, list) or not seeds or not all(is_int(s, 0) for s in seeds):
        return "its seeds are not a list of whole numbers"
    if not is_int(verdict.get("resolution"), 1):
        return f"its resolution is {verdict.get('resolution')!r}"
    level = verdict.get("level")
    if not _number(level) or not 0 < float(level or 0) < 1:
        return f"its level is {level!r}"
    pick = verdict.get("pick")
    if pick is not None and not is_int(pick, 0):
        return f"its pick is {pick!r}, not a trial number"
    for row in rows:
        problem = _row_problem(row)
        if problem is not None:
            return problem
    if pick is not None and not any(row["trial"] == pick and row["role"] == "pick" for row in rows):
        return f"its pick, trial {pick}, is not the row marked as the pick"
    return None


def rung_record_problem(record: Any) -> str | None:
    """What makes a stored rung record (one training of the finals) unusable, or None."""
    if not isinstance(record, dict):
        return f"it is {kind_of(record)}, not a JSON object"
    if record.get("status") not in ("complete", "failed"):
        return f"its status is {record.get('status')!r}"
    if not _number(record.get("train_time_s")) or not is_int(record.get("train_resolution"), 1):
        return "its training facts are missing"
    if "config" not in record:
        return "it has no schedule"
    if record["status"] == "failed":
        return None if isinstance(record.get("reason"), str) else "a failed training without a reason"
    if not _number(record.get("val_acc")) or not _number(record.get("test_acc")):
        return "a complete training without accuracies"
    return None


def record_key(rung: int, target: str, seed: int) -> str:
    """The study user attr of one finals training; `target` is "trial<N>" or "baseline:<label>"."""
    return f"{RECORD_PREFIX}{rung}.{target}.s{seed}"


def rung_reached(study: optuna.Study) -> dict[int, int]:
    """Trial number -> the highest rung of the finals it was trained in (trials the finals never took: absent)."""
    found: dict[int, int] = {}
    pattern = re.compile(rf"^{RECORD_PREFIX}(\d+)\.trial(\d+)\.s\d+$")
    for key, value in study.user_attrs.items():
        m = pattern.match(key)
        if m and rung_record_problem(value) is None:  # a damaged record: the finals train it again
            rung, number = int(m.group(1)), int(m.group(2))
            found[number] = max(found.get(number, 0), rung)
    return found


def mean_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float | None, float | None]:
    """Mean and its t interval; no interval from one value."""
    from scipy import stats  # here: reading a study's frame (pareto) does not load scipy

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, None, None
    sem = float(stats.sem(x))
    if sem == 0:
        return mean, mean, mean
    low, high = stats.t.interval(level, len(x) - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


def difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> dict[str, float | None]:
    """Mean of `a` minus mean of `b`, with the Welch interval and p value (None where they are undefined)."""
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return {"difference": diff, "low": None, "high": None, "p": None}
    if x.var() == 0 and y.var() == 0:  # no spread at all: the difference is exact
        return {"difference": diff, "low": diff, "high": diff, "p": 1.0 if diff == 0 else 0.0}
    result = stats.ttest_ind(x, y, equal_var=False)
    ci = result.confidence_interval(level)
    return {"difference": diff, "low": float(ci.low), "high": float(ci.high), "p": float(result.pvalue)}


def tied(d: dict[str, float | None]) -> bool:
    """Whether a difference is not distinguishable from 0 at the level (no interval: tied unless exactly equal)."""
    low, high = d["low"], d["high"]
    if low is None or high is None:
        return d["difference"] == 0
    return low <= 0 <= high


def _clean(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def make_verdict(finalists: Sequence[Finalist], baseline: Finalist | None, resolution: int,
                 seeds: Sequence[int], level: float = LEVEL, cost: str = "mflops",
                 target: str | None = None) -> dict[str, Any]:
    """The verdict as a JSON-able dict: a row per finalist (and the baseline), the pick, and its sentences.

    `cost` is what the pick is the cheapest in among those tied with the best: "mflops", or "latency_ms" on
    `target` (every finalist then has its latency)."""
    within = [f for f in finalists if f.within_budget]
    if not within:
        raise ValueError("no finalist within the budget")
    best = max(within, key=lambda f: (float(np.mean(f.val)), -f.cost(cost)))
    versus_best = {f.key: difference(f.val, best.val, level) for f in within}
    contenders = [f for f in within if f is best or tied(versus_best[f.key])]
    pick = min(contenders, key=lambda f: (f.cost(cost), -float(np.mean(f.val))))
    rows = []
    for f in [*finalists, *([baseline] if baseline else [])]:
        if f is baseline:
            role = "baseline"
        elif not f.within_budget:
            role = "over budget"
        else:
            role = "pick" if f is pick else "tied" if f in contenders else "behind"
        val, test = mean_interval(f.val, level), mean_interval(f.test, level)
        rows.append({"key": f.key, "trial": f.trial, "summary": f.summary, "mflops": f.mflops, "mparams": f.mparams,
                     "role": role, "n": len(f.val), "val": list(f.val), "test": list(f.test),
                     "val_mean": val[0], "val_low": _clean(val[1]), "val_high": _clean(val[2]),
                     "test_mean": test[0], "test_low": _clean(test[1]), "test_high": _clean(test[2]),
                     **({"latency_ms": f.latency_ms, "latency_p90_ms": f.latency_p90_ms, "latency_measured": f.measured}
                        if f.latency_ms is not None else {})})
    words = _CostWords(cost, target, resolution)
    sentences = [_pick_sentence(pick, best, contenders, versus_best, words, level)]
    comparison = None
    if baseline is not None:
        comparison = difference(pick.test, baseline.test, level)
        sentences.append(_baseline_sentence(pick, baseline, comparison, level, target))
    return {"level": level, "resolution": resolution, "seeds": list(seeds), "pick": pick.trial, "pick_key": pick.key,
            "best_val": best.key, "rows": rows, "versus_baseline": comparison, "sentences": sentences,
            "cost": cost, **({"latency_target": target} if target else {})}


@dataclass(frozen=True)
class _CostWords:
    """How the pick's sentence names costs: MFLOPs at the resolution, and the latency on the target first when it
    is the cost."""

    cost: str
    target: str | None
    resolution: int

    def of(self, f: Finalist) -> str:
        flops = f"{f.mflops:.1f} MFLOPs@{self.resolution}x{self.resolution}"
        if self.cost != "latency_ms":
            return flops
        how = "" if f.measured else " predicted"
        return f"{f.cost(self.cost):.3f} ms on {self.target}{how}, {flops}"

    def cheaper(self, f: Finalist) -> str:
        """The pick against the best finalist `f`: "cheaper (250.0 MFLOPs)", or "faster (3.456 ms)"."""
        if self.cost == "latency_ms":
            return f"faster ({f.cost(self.cost):.3f} ms)"
        return f"cheaper ({f.mflops:.1f} MFLOPs)"


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}"


def _pick_sentence(pick: Finalist, best: Finalist, contenders: list[Finalist],
                   versus_best: dict[str, dict[str, float | None]], words: _CostWords, level: float) -> str:
    cost = words.of(pick)
    if pick is best:
        others = [f.key for f in contenders if f is not pick]
        each = "each slower" if words.cost == "latency_ms" else "each costlier"
        tie = (f"; tied with {', '.join(others)} ({each})" if others else "")
        return (f"{pick.key} ({cost}): the best full-schedule validation mean ({np.mean(pick.val):.4f} over "
                f"{len(pick.val)} seeds){tie}")
    d = versus_best[pick.key]
    return (f"{pick.key} ({cost}): statistically tied with {best.key}, which has the best validation mean "
            f"({np.mean(best.val):.4f} vs {np.mean(pick.val):.4f}; difference {_points(d['difference'])} points, "
            f"{level:.0%} interval [{_points(d['low'])}, {_points(d['high'])}]), and {words.cheaper(best)}")


def cost_ratios(pick: Finalist, baseline: Finalist, target: str | None = None) -> str:
    """The pick's costs as shares of the baseline's, e.g. "62% of its latency on ort-cpu, 54% of its MFLOPs"; empty
    when the pick costs the same in each (COST_RATIOS: a cost either lacks is left out)."""
    parts = []
    for name, what in COST_RATIOS:
        mine, theirs = getattr(pick, name), getattr(baseline, name)
        if mine is None or theirs is None or not theirs > 0:
            continue
        on = f" on {target}" if name == "latency_ms" and target else ""
        parts.append((round(mine / theirs, 2), f"{100 * mine / theirs:.0f}% of its {what}{on}"))
    if all(ratio == 1.0 for ratio, _ in parts):
        return ""
    return ", ".join(text for _, text in parts)


def _baseline_sentence(pick: Finalist, baseline: Finalist, d: dict[str, float | None], level: float,
                       target: str | None = None) -> str:
    figures = (f"{_points(d['difference'])} points of test accuracy, {level:.0%} interval "
               f"[{_points(d['low'])}, {_points(d['high'])}], Welch t over {len(pick.test)} and {len(baseline.test)} "
               "seeds")
    ratios = cost_ratios(pick, baseline, target)
    at = f", at {ratios}" if ratios else ""
    if d["low"] is not None and d["low"] > 0:
        return f"{pick.key} beats the best baseline, {baseline.key}{at}, by {figures[1:]}"
    if d["high"] is not None and d["high"] < 0:
        return f"{pick.key} trails the best baseline, {baseline.key}{at}: {figures}"
    return f"{pick.key} is tied with the best baseline, {baseline.key}{at}: {figures}"


def _interval(mean: float, low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return f"{mean:.4f}"
    return f"{mean:.4f} [{low:.4f}, {high:.4f}]"


def verdict_lines(verdict: dict[str, Any]) -> list[str]:
    """The verdict as a table and its sentences, for a terminal."""
    r, level = verdict["resolution"], verdict["level"]
    seeds = ", ".join(map(str, verdict["seeds"]))
    target = verdict.get("latency_target")
    latency = target is not None and any(row.get("latency_ms") is not None for row in verdict["rows"])
    header = (f"{'finalist':<28} {'role':<18} {'val acc, mean [' + f'{level:.0%}' + ' CI]':>27} "
              f"{'test acc, mean [CI]':>27} {f'MFLOPs@{r}':>11} {'M params':>8}"
              + (f" {f'ms on {target} (p90)':>24}" if latency else ""))
    picks = "the fastest" if verdict.get("cost") == "latency_ms" else "the cheapest"
    lines = [f"verdict: full-schedule training, seeds {seeds}; validation accuracy chooses ({picks} of those tied "
             "with the best), test accuracy is only reported", header]
    for row in verdict["rows"]:
        line = (f"{row['key'][:28]:<28} {ROLES[row['role']]:<18} "
                f"{_interval(row['val_mean'], row['val_low'], row['val_high']):>27} "
                f"{_interval(row['test_mean'], row['test_low'], row['test_high']):>27} "
                f"{row['mflops']:>11.1f} {row['mparams']:>8.3f}")
        if latency:
            ms = row.get("latency_ms")
            shown = "" if ms is None else f"{ms:.3f} ({row['latency_p90_ms']:.3f})" if row.get("latency_measured") \
                else f"{ms:.3f} predicted"
            line += f" {shown:>24}"
        lines.append(line)
    if latency:
        lines.append(f"  latency: {verdict.get('latency_machine', 'the machine it was measured on')}")
    return lines + [f"  {s}" for s in verdict["sentences"]]
