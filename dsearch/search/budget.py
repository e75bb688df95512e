"""Budgets over a search space: how much of the space fits, and repairing samples that do not.

Everything here runs on the analytic cost model (dsearch.cost.spec_cost, well under a
millisecond per architecture), so a search can afford to cost thousands of candidates.

Repair rule (docs/concepts.md, budgets): an over-budget architecture is changed one parameter at a time. Each step
looks at every single change of one parameter to another of its choices (a block, a conv kind with its knobs, the
head's classifier kind, or a smaller width, depth, expansion, kernel, stem or head width) and measures the result
against the budget as r = max over the limits set of cost / limit (MFLOPs, M params, and a latency the caller
measured). If some change brings r <= 1, it takes the one of those with the highest r (the least shrinkage);
otherwise it takes the change with the lowest r (the largest saving), and repeats. If no change lowers r, it falls
back to the space's cheapest valid architecture (by MFLOPs or by params, whichever is further within the budget),
which the run checked fits.
"""
from __future__ import annotations

import functools
import itertools
import math
import numbers
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..cost.count import net_counts, spec_cost
from ..errors import DsearchError
from ..model.archspec import ArchSpec, ArchSpecError, ConvSpec, StageSpec, StemSpec
from .spaces import Choices, Space, extreme_params, sample, valid_stage_counts

Params = dict[str, Any]


# The record keys a budget's limits are checked against: a trial's user attrs, a baseline's record and a row of
# dsearch.analysis.pareto.trials_frame all name a cost this way.
MFLOPS, MPARAMS, LATENCY_MS = "mflops", "mparams", "latency_ms"
# Where a study keeps its budget, inside its stored identity (dsearch.search.record.IDENTITY_ATTR): the first two
# keys are those of every existing study; the latency keys are written only when a latency budget is set, so a
# study without `budget_ms` reads as one without a latency budget.
STORED = {MFLOPS: "budget_mflops", MPARAMS: "budget_mparams", LATENCY_MS: "budget_ms"}
STORED_TARGET = "budget_latency_target"


@dataclass(frozen=True)
class Budget:
    """A deployment budget, the only one: MFLOPs, M params and latency limits (None: no limit of that kind).

    MFLOPs are counted at `resolution` (None: the space's). `ms` is a latency limit in milliseconds measured on
    `latency_target` (e.g. "ort-cpu"); dsearch measures nothing here, so a caller checking a budget with `ms` set
    passes the measured latency, and a check without one raises DsearchError rather than pass.
    """

    mflops: float | None = None
    mparams: float | None = None
    resolution: int | None = None
    ms: float | None = field(default=None, kw_only=True)
    latency_target: str | None = field(default=None, kw_only=True)

    def limits(self) -> dict[str, float]:
        """The limits set, by the record key of the cost each bounds (MFLOPS, MPARAMS, LATENCY_MS)."""
        pairs = ((MFLOPS, self.mflops), (MPARAMS, self.mparams), (LATENCY_MS, self.ms))
        return {key: limit for key, limit in pairs if limit is not None}

    @property
    def limited(self) -> bool:
        """True when at least one limit is set."""
        return bool(self.limits())

    def _cost(self, costs: Mapping[str, Any], key: str) -> float | None:
        """The cost `key` of `costs` as a float; None when absent, NaN or not a number (a latency limit cannot do
        without it)."""
        value = costs.get(key)
        # NaN: a DataFrame row's missing value; not a number: a damaged record, which fits no limit either
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
            if key == LATENCY_MS:
                target = self.latency_target or "its target"
                raise DsearchError(f"the budget limits latency to {self.ms:g} ms on {target}, but no latency"
                                   " was given to check it; measure the latency (latency_ms) first")
            return None
        return float(value)

    def excess(self, costs: Mapping[str, Any]) -> dict[str, float]:
        """cost - limit for each limit set (> 0: over it); a cost absent from `costs` counts as infinitely over."""
        over = {}
        for key, limit in self.limits().items():
            value = self._cost(costs, key)
            over[key] = math.inf if value is None else value - limit
        return over

    def over(self, key: str, value: float) -> bool:
        """True when `value` of the cost `key` (MFLOPS, MPARAMS, LATENCY_MS) exceeds its limit (False: none set)."""
        limit = self.limits().get(key)
        return limit is not None and value > limit

    def fits_record(self, record: Mapping[str, Any]) -> bool:
        """True when a record (keys "mflops", "mparams", "latency_ms": a trial's attrs, a baseline, a frame row)
        costs at most every limit; a cost it lacks does not fit."""
        return all(over <= 0 for over in self.excess(record).values())

    def counts_ratio(self, macs: int, params: int, ms: float | None = None) -> float:
        """max(cost / limit) over the limits set: <= 1 means within budget (0 when no limit is set)."""
        costs = {MFLOPS: macs / 1e6, MPARAMS: params / 1e6, LATENCY_MS: ms}
        return max((costs_value / limit for key, limit in self.limits().items()
                    if (costs_value := self._cost(costs, key)) is not None), default=0.0)

    def ratio(self, spec: ArchSpec, ms: float | None = None) -> float:
        """counts_ratio of the architecture's analytic cost at the budget's resolution (and latency `ms`)."""
        cost = spec_cost(spec, self.resolution)
        return self.counts_ratio(cost.macs, cost.params, ms)

    def fits(self, spec: ArchSpec, ms: float | None = None) -> bool:
        """True when the architecture (with measured latency `ms`) is within every limit."""
        return self.ratio(spec, ms) <= 1.0

    def parts(self) -> dict[str, str]:
        """Each limit in words, by record key: "300 MFLOPs", "2 M params", "5 ms on ort-cpu"."""
        units = {MFLOPS: "MFLOPs", MPARAMS: "M params", LATENCY_MS: "ms"}
        target = f" on {self.latency_target}" if self.latency_target else ""
        return {key: f"{limit:g} {units[key]}" + (target if key == LATENCY_MS else "")
                for key, limit in self.limits().items()}

    def describe(self) -> str:
        """The budget in words: "300 MFLOPs and 2 M params"; "no budget" when no limit is set."""
        return " and ".join(self.parts().values()) or "no budget"

    def exceeded(self, excess: Mapping[str, float]) -> list[str]:
        """The limits an `excess` (from `excess`) goes over, in words: ["> 300 MFLOPs", ...]."""
        words = self.parts()
        return [f"> {words[key]}" for key, over in excess.items() if over > 0]

    def stored(self) -> dict[str, Any]:
        """The budget as a study's identity stores it: today's two keys always, the latency keys when set."""
        out: dict[str, Any] = {STORED[MFLOPS]: self.mflops, STORED[MPARAMS]: self.mparams}
        if self.ms is not None:
            out.update({STORED[LATENCY_MS]: self.ms, STORED_TARGET: self.latency_target})
        return out

    def as_record(self) -> dict[str, Any]:
        """The budget as a verdict records it ({"mflops": ..., "mparams": ...}, "latency_ms" when set)."""
        out: dict[str, Any] = {MFLOPS: self.mflops, MPARAMS: self.mparams}
        if self.ms is not None:
            out.update({LATENCY_MS: self.ms, "latency_target": self.latency_target})
        return out

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any], where: str = "the study") -> Budget:
        """The budget a study's stored identity holds (see `stored`); DsearchError naming `where` when damaged."""
        limits = {}
        for key, name in STORED.items():
            value = stored.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not math.isfinite(value) or value <= 0):
                raise DsearchError(f"{where}: its stored {name} is {value!r}, not a positive number")
            limits[key] = None if value is None else float(value)
        resolution, target = stored.get("resolution"), stored.get(STORED_TARGET)
        if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int)
                                       or resolution < 1):
            raise DsearchError(f"{where}: its stored resolution is {resolution!r}, not a whole number >= 1")
        if target is not None and not isinstance(target, str):
            raise DsearchError(f"{where}: its stored {STORED_TARGET} is {target!r}, not a target name")
        return cls(limits[MFLOPS], limits[MPARAMS], resolution, ms=limits[LATENCY_MS], latency_target=target)


class Recorder:
    """A Suggester that answers with `answer(name, choices)` and records the parameters actually asked for."""

    def __init__(self, answer: Callable[[str, list[Any]], Any]) -> None:
        self.answer = answer
        self.used: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        self.used[name] = self.answer(name, choices)
        return self.used[name]


def random_recorder(rng: random.Random) -> Recorder:
    """Picks uniformly among the choices, as Optuna's RandomSampler does, without a study."""
    return Recorder(lambda _name, choices: rng.choice(choices))


def build(space: Space, params: Mapping[str, Any], in_channels: int, num_classes: int,
          resolution: int | None = None) -> tuple[ArchSpec, Params]:
    """The ArchSpec `params` describe and the subset of `params` it uses (its active parameters)."""
    recorder = Recorder(lambda name, _choices: params[name])
    spec = sample(space, recorder, in_channels, num_classes, resolution)
    return spec, dict(recorder.used)


def _value(params: Mapping[str, Any], name: str, choices: Choices) -> Any:
    return choices[0] if len(choices) == 1 else params[name]


def params_counts(space: Space, params: Mapping[str, Any], in_channels: int, num_classes: int,
                  resolution: int | None = None) -> tuple[int, int] | None:
    """(MACs, params) of the architecture `params` pick, equal to spec_cost of it, without validating an ArchSpec.

    Stage costs are cached, so costing many architectures that differ in one choice is cheap. None
    where the choices do not make a valid architecture.
    """
    stages = []
    for i, st in enumerate(space.stages, start=1):
        p = f"stage{i}"
        kind = _value(params, f"{p}.conv", st.conv)
        knobs = {k: _value(params, f"{p}.{kind}_{k}", c) for k, c in space.knob_choices(kind).items()}
        stages.append(StageSpec(
            block=_value(params, f"{p}.block", st.block), out_channels=_value(params, f"{p}.width", st.width),
            repeats=_value(params, f"{p}.depth", st.depth), stride=st.stride,
            kernel=_value(params, f"{p}.kernel", st.kernel),
            expansion=float(_value(params, f"{p}.expansion", st.expansion)), conv=_conv_spec(kind, knobs),
            activation=st.activation, residual=st.residual))
    stem = StemSpec(_value(params, "stem.width", space.stem_width), space.stem_kernel, space.stem_stride,
                    space.stem_activation)
    return net_counts(in_channels, num_classes, stem, stages, _value(params, "head.width", space.head_width),
                      resolution or space.resolution, stage=valid_stage_counts,
                      classifier=_value(params, "head.classifier", space.head_classifier))


@functools.lru_cache(maxsize=4096)
def _conv_spec_cached(kind: str, knobs: tuple[tuple[str, Any], ...]) -> ConvSpec:
    return ConvSpec(kind, knobs)


def _conv_spec(kind: str, knobs: Mapping[str, Any]) -> ConvSpec:
    return _conv_spec_cached(kind, tuple(sorted(knobs.items())))


def _multi(name: str, choices: Choices) -> Iterator[tuple[str, Any]]:
    """(name, choice) pairs for a parameter that is a real choice (single values are not parameters)."""
    if len(choices) > 1:
        for c in choices:
            yield name, c


def single_changes(space: Space, params: Mapping[str, Any]) -> Iterator[Params]:
    """Every parameter set that differs from `params` in one choice and may cost less.

    A conv kind change brings its knobs; widths, depths, kernels and expansions only go down.
    """
    current = dict(params)
    plain: list[tuple[str, Choices]] = [("stem.width", space.stem_width), ("head.width", space.head_width),
                                        ("head.classifier", space.head_classifier)]
    for i, st in enumerate(space.stages, start=1):
        p = f"stage{i}"
        plain += [(f"{p}.block", st.block), (f"{p}.width", st.width), (f"{p}.depth", st.depth),
                  (f"{p}.kernel", st.kernel), (f"{p}.expansion", st.expansion)]
        kind_now = current.get(f"{p}.conv", st.conv[0])
        for kind in st.conv:
            knobs = space.knob_choices(kind)
            names = [f"{p}.{kind}_{k}" for k in knobs]
            for combo in itertools.product(*knobs.values()):
                change = {f"{p}.conv": kind} if len(st.conv) > 1 else {}
                change.update({n: v for n, v, c in zip(names, combo, knobs.values(), strict=True) if len(c) > 1})
                same = kind == kind_now and all(current.get(n) == v for n, v in change.items())
                if not same:
                    yield {**current, **change}
    for name, choices in plain:
        now = current.get(name)
        for _, c in _multi(name, choices):
            # Larger widths, depths, kernels and expansions never cost less: only smaller ones can repair.
            if c != now and (name.endswith((".block", ".classifier")) or c < now):
                yield {**current, name: c}


def repair(space: Space, params: Mapping[str, Any], budget: Budget, in_channels: int, num_classes: int,
           max_steps: int = 200) -> tuple[ArchSpec, Params, int]:
    """The architecture the repair rule (module docstring) makes of `params`: (spec, its params, steps taken)."""
    spec, params = build(space, params, in_channels, num_classes, budget.resolution)
    ratio = budget.ratio(spec)
    steps = 0
    while ratio > 1.0 and steps < max_steps:
        fitting: tuple[float, Params] | None = None
        lowest: tuple[float, Params] | None = None
        for candidate in single_changes(space, params):
            counts = params_counts(space, candidate, in_channels, num_classes, budget.resolution)
            if counts is None:
                continue  # e.g. SCC groups that do not divide a width
            r = budget.counts_ratio(*counts)
            if r <= 1.0 and (fitting is None or r > fitting[0]):
                fitting = (r, candidate)
            if lowest is None or r < lowest[0]:
                lowest = (r, candidate)
        steps += 1
        if fitting is not None:
            spec, params = build(space, fitting[1], in_channels, num_classes, budget.resolution)
            return spec, params, steps
        if lowest is None or lowest[0] >= ratio:
            break
        ratio, params = lowest[0], build(space, lowest[1], in_channels, num_classes, budget.resolution)[1]
    if ratio > 1.0:
        spec, params = build(space, cheapest_params(space, budget, in_channels, num_classes), in_channels,
                             num_classes, budget.resolution)
    return spec, params, steps


def cheapest_params(space: Space, budget: Budget, in_channels: int, num_classes: int) -> Params:
    """The space's valid architecture with the fewest MACs or the one with the fewest params, whichever is
    further within `budget` (with one budget set, the one cheapest in what it counts)."""
    def ratio(params: Params) -> float:
        counts = params_counts(space, params, in_channels, num_classes, budget.resolution)
        return math.inf if counts is None else budget.counts_ratio(*counts)

    return min((extreme_params(space, in_channels, num_classes, budget.resolution, by_params=by_params)
                for by_params in (False, True)), key=ratio)


@dataclass(frozen=True)
class BudgetShare:
    """What share of a space fits a budget, estimated from uniform random samples."""

    samples: int
    within: int
    invalid: int
    seconds: float
    largest_within: ArchSpec | None  # the costliest sampled architecture that fits

    @property
    def share(self) -> float:
        return self.within / max(1, self.samples)

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """Wilson 95% interval of the share."""
        n, p = max(1, self.samples), self.share
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)


def budget_share(space: Space, budget: Budget, in_channels: int, num_classes: int, samples: int = 10_000,
                 seed: int = 0) -> BudgetShare:
    """Sample the space uniformly (as Optuna's RandomSampler would) and count the samples within `budget`."""
    rng = random.Random(seed)
    start = time.perf_counter()
    within = invalid = 0
    best: tuple[float, ArchSpec] | None = None
    for _ in range(samples):
        try:
            spec = sample(space, random_recorder(rng), in_channels, num_classes, budget.resolution)
        except ArchSpecError:
            invalid += 1
            continue
        r = budget.ratio(spec)
        if r <= 1.0:
            within += 1
            if best is None or r > best[0]:
                best = (r, spec)
    return BudgetShare(samples=samples, within=within, invalid=invalid, seconds=time.perf_counter() - start,
                       largest_within=best[1] if best else None)


ENUMERATE_AT_MOST = 20_000  # spaces up to this size are counted exactly; larger ones are never exhausted in practice


def all_params(space: Space) -> Iterator[Params]:
    """Every architecture of the space as its active parameters (conv knobs only where the kind is used)."""
    per_stage: list[list[Params]] = []
    for i, st in enumerate(space.stages, start=1):
        p = f"stage{i}"
        plain: list[list[tuple[str, Any] | None]] = [list(_multi(f"{p}.{key}", getattr(st, key))) or [None]
                                                     for key in ("block", "width", "depth", "kernel", "expansion")]
        options: list[Params] = []
        for kind in st.conv:
            knobs = space.knob_choices(kind)
            for combo in itertools.product(*knobs.values()):
                conv = {f"{p}.conv": kind} if len(st.conv) > 1 else {}
                conv.update({f"{p}.{kind}_{k}": v
                             for (k, c), v in zip(knobs.items(), combo, strict=True) if len(c) > 1})
                for picks in itertools.product(*plain):
                    options.append({**conv, **dict(x for x in picks if x is not None)})
        per_stage.append(options)
    ends: list[list[tuple[str, Any] | None]] = [list(_multi("stem.width", space.stem_width)) or [None],
                                                list(_multi("head.width", space.head_width)) or [None],
                                                list(_multi("head.classifier", space.head_classifier)) or [None]]
    for stages in itertools.product(*per_stage):
        for stem_head in itertools.product(*ends):
            params: Params = dict(x for x in stem_head if x is not None)
            for stage in stages:
                params.update(stage)
            yield params


def feasible_count(space: Space, budget: Budget, in_channels: int, num_classes: int) -> int | None:
    """How many distinct valid architectures of the space fit `budget`; None for spaces too large to count."""
    feasible = feasible_params(space, budget, in_channels, num_classes)
    return None if feasible is None else len(feasible)


def feasible_params(space: Space, budget: Budget, in_channels: int, num_classes: int) -> list[Params] | None:
    """Every architecture of the space within `budget`, as parameters; None for spaces too large to enumerate."""
    from .spaces import space_size

    if space_size(space) > ENUMERATE_AT_MOST:
        return None
    return list(_feasible_params(space, budget, in_channels, num_classes))


@functools.lru_cache(maxsize=64)
def _feasible_params(space: Space, budget: Budget, in_channels: int, num_classes: int) -> tuple[Params, ...]:
    fitting = []
    for params in all_params(space):
        counts = params_counts(space, params, in_channels, num_classes, budget.resolution)
        if counts is not None and budget.counts_ratio(*counts) <= 1.0:
            fitting.append(params)
    return tuple(fitting)
