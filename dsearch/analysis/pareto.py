"""Pareto analysis of a study: trials as a pandas DataFrame, non-dominated sets and hypervolume.

One row per trial: state, dsearch status, validation/test accuracy, cost at the deployment
resolution, training facts, and the architecture flattened into per-stage columns
(`stage1.conv`, `stage1.kernel`, `stage1.width`, ...) plus the share of each conv type among
the net's searchable conv units (`share.dsc`, ...) and the dominant one (`dominant_conv`).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import optuna
import pandas as pd

from ..errors import DsearchError
from ..model.archspec import ArchSpec, iter_conv_units
from ..model.ops import CONV_TYPES
from ..search.budget import Budget
from ..search.record import (
    ARCH_SUMMARY,
    AT_CHANCE,
    CHANCE_CAUSE,
    FACT_KEYS,
    LATENCY_MEASURED,
    REASON,
    STATUS,
    trial_arch,
)
from ..search.record import study_budget as study_budget  # where readers of a study have found it
from ..training.advice import chance_advice
from .verdict import rung_reached

BASE_COLUMNS = ["trial", "state", "status", "pareto", "rung", "val_acc", "test_acc", "mflops", "mparams", "latency_ms",
                "resolution", "mflops_train", "train_resolution", "train_time_s", "epochs", "batch_size", "lr",
                "device", "latency_target", "latency_measured_ms",
                "latency_p90_ms", "at_chance", "chance_cause", "arch", "dominant_conv", "reason", "datetime_start",
                "datetime_complete"]
# cost column -> (label with unit, what the axis means)
COSTS = {
    "mflops": "MFLOPs (millions of multiply-accumulates)",
    "mparams": "parameters (millions)",
    "latency_ms": "latency (ms)",
}


def arch_columns(spec: ArchSpec) -> dict[str, Any]:
    """The architecture as readable flat columns: per stage block/conv/kernel/width/depth/expansion, conv shares."""
    row: dict[str, Any] = {"stem.width": spec.stem.out_channels, "head.width": spec.head.channels,
                           "head.classifier": spec.head.classifier}
    for i, st in enumerate(spec.stages, start=1):
        row.update({f"stage{i}.block": st.block, f"stage{i}.conv": st.conv.kind, f"stage{i}.kernel": st.kernel,
                    f"stage{i}.width": st.out_channels, f"stage{i}.depth": st.repeats,
                    f"stage{i}.expansion": st.expansion})
        for knob, value in st.conv.knobs:
            row[f"stage{i}.{st.conv.kind}_{knob}"] = value
    counts = Counter(conv.kind for _, conv, *_ in iter_conv_units(spec))
    total = sum(counts.values()) or 1
    for kind in CONV_TYPES:
        row[f"share.{kind}"] = counts.get(kind, 0) / total
    # Ties go to the first kind in registry order, so the colour of a point is stable.
    row["dominant_conv"] = max(CONV_TYPES, key=lambda k: counts.get(k, 0)) if counts else None
    return row


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial with its dsearch attributes and its flattened architecture."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        row: dict[str, Any] = {
            "trial": t.number, "state": t.state.name, "status": a.get(STATUS, t.state.name.lower()),
            **{key: a.get(key) for key in FACT_KEYS},
            "arch": a.get(ARCH_SUMMARY), "dominant_conv": None, "at_chance": a.get(AT_CHANCE) is not None,
            "chance_cause": a.get(CHANCE_CAUSE), "reason": a.get(REASON) or t.system_attrs.get("fail_reason"),
            "datetime_start": t.datetime_start, "datetime_complete": t.datetime_complete,
        }
        if row["latency_ms"] is None:  # a study without a latency target: the latency measured with --measure-latency
            row["latency_ms"] = a.get(LATENCY_MEASURED)
        spec = trial_arch(a)
        if spec is not None:
            row.update(arch_columns(spec))
        rows.append(row)
    frame = _typed(pd.DataFrame(rows), rows)
    if not frame.empty:  # the highest rung of the finals each trained trial reached (0: the search only)
        reached = rung_reached(study)
        frame["rung"] = pd.array([reached.get(int(n), 0) if s == "complete" else None
                                  for n, s in zip(frame["trial"], frame["status"], strict=True)], dtype="Int64")
    frame["pareto"] = frame.index.isin(pareto_front(frame).index) if not frame.empty else pd.Series(dtype=bool)
    extra = sorted((c for c in frame.columns if c not in BASE_COLUMNS), key=_column_order)
    return frame.reindex(columns=BASE_COLUMNS + extra)


def _typed(frame: pd.DataFrame, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Integer columns as nullable integers and boolean ones as nullable booleans (pandas makes them float/object
    as soon as one trial lacks the value), so a table and a CSV show 3, not 3.0."""
    for column in frame.columns:
        kinds = {type(row[column]) for row in rows if row.get(column) is not None}
        if kinds == {bool}:
            frame[column] = frame[column].astype("boolean")
        elif kinds == {int}:
            frame[column] = frame[column].astype("Int64")
    return frame


def _column_order(name: str) -> tuple:
    head, _, tail = name.partition(".")
    group = {"stem": 0, "head": 2, "share": 3}.get(head, 1)
    stage = int(head.removeprefix("stage")) if head.startswith("stage") and head[5:].isdigit() else 0
    return group, stage, tail


def chance_line(frame: pd.DataFrame) -> str | None:
    """A warning when trained trials scored chance accuracy (their results say nothing), else None."""
    done = trained(frame)
    if done.empty or not done["at_chance"].any():
        return None
    count = int(done["at_chance"].sum())
    numbers = ", ".join(str(int(n)) for n in done.loc[done["at_chance"].astype(bool), "trial"][:10])
    every = "every trained trial" if count == len(done) else f"{count} of {len(done)} trained trials"
    return (f"{every} scored chance accuracy (trial(s) {numbers}{', ...' if count > 10 else ''}): such a result says "
            f"nothing about the architecture; {chance_cause_of(done[done['at_chance'].astype(bool)])}")


def chance_cause_of(at_chance: pd.DataFrame) -> str:
    """The likely cause the first of these trials at chance recorded (a study's trials share their settings), or
    the general advice where none did (a study made before causes were recorded)."""
    causes = at_chance.sort_values("trial")["chance_cause"].dropna()
    if causes.empty:
        return chance_advice([])
    first = at_chance.loc[causes.index[0], "trial"]
    return causes.iloc[0] if len(at_chance) == 1 else f"trial {int(first)}'s {causes.iloc[0]}"


def failure_lines(frame: pd.DataFrame, most: int = 5) -> list[str]:
    """One line per failed trial with the reason it was kept with (the first `most`, then how many more)."""
    failed = frame[(frame["state"] == "FAIL") | (frame["status"] == "failed")] if not frame.empty else frame
    lines = [f"trial {int(row.trial)} failed: {row.reason or 'no reason recorded'}"
             for row in failed.head(most).itertuples()]
    if len(failed) > most:
        lines.append(f"... and {len(failed) - most} more failed trial(s) (--csv writes every trial's reason)")
    return lines


def trained(frame: pd.DataFrame, score: str = "val_acc") -> pd.DataFrame:
    """Trials that finished training with a score."""
    if frame.empty:
        return frame
    return frame[(frame["status"] == "complete") & frame[score].notna()]


def pareto_front(frame: pd.DataFrame, cost: str = "mflops", score: str = "val_acc") -> pd.DataFrame:
    """Trained trials not dominated in (score up, cost down), sorted by cost (ties: the earlier trial)."""
    if cost not in COSTS:
        raise DsearchError(f"unknown cost {cost!r}; valid: {', '.join(COSTS)}")
    done = trained(frame, score)
    if not done.empty:
        done = done[done[cost].notna()]
    if done.empty:
        return done
    done = done.sort_values([cost, score, "trial"], ascending=[True, False, True])
    best = float("-inf")
    keep = []
    for idx, value in done[score].items():
        if value > best:
            keep.append(idx)
            best = value
    return done.loc[keep]


def hypervolume(front: pd.DataFrame, ref_cost: float, ref_score: float = 0.0, cost: str = "mflops",
                score: str = "val_acc") -> float:
    """Area dominated by `front` in (cost down, score up) and bounded by the reference point.

    Points costlier than `ref_cost` or scoring below `ref_score` add nothing. Units: score x cost
    (e.g. accuracy x MFLOPs).
    """
    return _dominated_area(zip(front[cost], front[score], strict=True), ref_cost, ref_score)


def _dominated_area(points: Iterable[tuple[float, float]], ref_cost: float, ref_score: float) -> float:
    # Only the non-dominated points bound the area: dropping the rest keeps the sum the same whatever is passed.
    front: list[tuple[float, float]] = []
    for c, s in sorted(((float(c), float(s)) for c, s in points if c < ref_cost and s > ref_score),
                       key=lambda p: (p[0], -p[1])):
        if not front or s > front[-1][1]:
            front.append((c, s))
    edges = [c for c, _ in front] + [ref_cost]
    return sum((edges[i + 1] - c) * (s - ref_score) for i, (c, s) in enumerate(front))


def reference_point(frame: pd.DataFrame, budget: float | None, cost: str = "mflops") -> float:
    """The cost coordinate of the hypervolume reference: the budget, else 1.1 x the costliest trained trial."""
    if budget is not None:
        return float(budget)
    done = trained(frame)
    costs = done[cost].dropna() if not done.empty else pd.Series(dtype=float)
    return 1.1 * float(costs.max()) if not costs.empty else 1.0


def progress_frame(frame: pd.DataFrame, budget: float | None, cost: str = "mflops",
                   score: str = "val_acc") -> pd.DataFrame:
    """After each finished trial (in trial order): best score within budget and hypervolume so far."""
    ref = reference_point(frame, budget, cost)
    finished = frame[frame["state"] != "RUNNING"].sort_values("trial") if not frame.empty else frame
    points: list[tuple[float, float]] = []
    best = None
    rows = []
    columns = (finished["trial"], finished["status"], finished[cost], finished[score])
    for trial, status, c, value in zip(*columns, strict=True):
        if status == "complete" and pd.notna(value):
            if pd.notna(c):
                points.append((float(c), float(value)))
            if budget is None or c <= ref:
                best = float(value) if best is None else max(best, float(value))
        rows.append({"trial": int(trial), "best_score": best, "hypervolume": _dominated_area(points, ref, 0.0)})
    return pd.DataFrame(rows, columns=["trial", "best_score", "hypervolume"])


def trained_within(frame: pd.DataFrame, budget: Budget, score: str = "val_acc") -> pd.DataFrame:
    """Trained trials within every limit of `budget` (Budget.fits_record on each row)."""
    done = trained(frame, score)
    if done.empty or not budget.limited:
        return done
    return done[[budget.fits_record(row) for row in done.to_dict("records")]]


def best_within_budget(frame: pd.DataFrame, budget: Budget, score: str = "val_acc") -> pd.Series:
    """The most accurate trained trial within every budget (ties: the cheaper, then the earlier)."""
    done = trained_within(frame, budget, score)
    if done.empty:
        raise DsearchError("no trained trial within the budget yet; run `dsearch run` longer or pick --trial N")
    return done.sort_values([score, "mflops", "trial"], ascending=[False, True, True]).iloc[0]


def arch_of(study: optuna.Study, number: int) -> ArchSpec:
    """The ArchSpec that trial `number` sampled."""
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise DsearchError(f"study '{study.study_name}' has no trial {number} (trials 0..{len(trials) - 1})")
    attrs = trials[number].user_attrs
    spec = trial_arch(attrs)
    if spec is None:
        raise DsearchError(f"trial {number} has no architecture (status {attrs.get(STATUS, 'unknown')}); "
                           "pick a trained trial, see `dsearch show`")
    return spec
