"""Latency in the search: building a target's table over a space's architectures, and repairing an architecture
over a latency budget.

A table built here on the machine a model ships on (`dsearch latency --space SPACE`) holds the parts of the
architectures a search of that space is likely to meet, and a few of them measured whole to fit the overhead;
copied to the machine that searches, it predicts there without measuring.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..checks import check_int, check_number
from ..cost.count import spec_cost
from ..data import Dataset
from ..errors import DsearchError, check_interrupted
from ..latency import LatencyModel, parse_target
from ..model.archspec import ArchSpec, ArchSpecError
from .budget import Budget, Params, build, random_recorder, repair
from .config import SearchConfig
from .spaces import Space, extreme_params, extreme_spec, load_space, sample

SAMPLE_TRIES = 200  # random draws per wanted architecture before a budget is taken as too tight for sampling


def sample_within(space_name: str, count: int, budget: Budget, in_channels: int, num_classes: int,
                  seed: int) -> list[ArchSpec]:
    """`count` distinct valid architectures drawn uniformly from the space, within `budget`."""
    space = load_space(space_name)
    rng = random.Random(seed)
    found: dict[str, ArchSpec] = {}
    for _ in range(SAMPLE_TRIES * count):
        if len(found) == count:
            break
        try:
            spec = sample(space, random_recorder(rng), in_channels, num_classes, budget.resolution)
        except ArchSpecError:
            continue
        if budget.fits(spec):
            found.setdefault(spec.to_json(), spec)
    return list(found.values())


def table_from_space(model: LatencyModel, space: str, samples: int, budget_mflops: float | None, in_channels: int,
                     num_classes: int, seed: int, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure the parts of `samples` sampled architectures (and the first few whole) into the model's table."""
    check_int(samples, "--samples", 1)
    if budget_mflops is not None:
        check_number(budget_mflops, "--budget-mflops", low=0, low_open=True)
    check_int(in_channels, "--in-channels", 1)
    check_int(num_classes, "--num-classes", 2)
    specs = sample_within(space, samples, Budget(budget_mflops), in_channels, num_classes, seed)
    measured = 0
    for i, spec in enumerate(specs, start=1):
        check_interrupted()
        prediction = model.predict(spec)
        measured += prediction.measured_now
        if log is not None and (i == len(specs) or i % 10 == 0):
            log(f"{i}/{len(specs)} architectures: {len(model.table.parts)} parts in the table "
                f"({measured} measured now), {len(model.table.networks)} whole networks")
    return {"architectures": len(specs), "parts": len(model.table.parts), "measured_now": measured,
            "networks": len(model.table.networks), "table": str(model.table.path)}


REPAIR_ROUNDS = 8  # tightened-MFLOPs repairs tried before the space's cheapest architecture
REPAIR_MARGIN = 0.97  # each round aims this far below the MFLOPs the latency budget suggests


def latency_repair(space: Space, params: Params, budget: Budget, ms_budget: float, model: LatencyModel,
                   in_channels: int, num_classes: int) -> tuple[ArchSpec, Params, int]:
    """An architecture of the space within `budget` and `ms_budget` (predicted), made from `params`.

    Latency follows MFLOPs closely along one repair path, so an architecture over the latency budget is repaired
    by the MFLOPs rule (dsearch.search.budget.repair) under a tightened MFLOPs budget, its MFLOPs x budget ms /
    predicted ms x REPAIR_MARGIN, until its predicted latency fits (at most REPAIR_ROUNDS rounds; only the parts of
    each round's result are measured); then the space's cheapest architecture. Returns (spec, params, changes).
    """
    spec, params, steps = repair(space, params, budget, in_channels, num_classes)
    for _ in range(REPAIR_ROUNDS):
        ms = model.predict_ms(spec)
        if ms <= ms_budget:
            return spec, params, steps
        mflops = spec_cost(spec, budget.resolution).mflops * ms_budget / ms * REPAIR_MARGIN
        tighter = replace(budget, mflops=min(mflops, budget.mflops or math.inf))
        spec, params, more = repair(space, params, tighter, in_channels, num_classes)
        steps += more
    cheapest = extreme_params(space, in_channels, num_classes, budget.resolution)
    spec, params = build(space, cheapest, in_channels, num_classes, budget.resolution)
    return spec, params, steps


def search_latency_model(cfg: SearchConfig, device: torch.device,
                         log: Callable[[str], None] | None = None) -> LatencyModel | None:
    """The latency model a search predicts (its cost target) or measures (--measure-latency) with; None: neither.

    Without a cost target, --measure-latency times on PyTorch eager on the training device (torch-cuda on a GPU,
    torch-cpu otherwise)."""
    target = cfg.cost_target
    if target is None and not cfg.measure_latency:
        return None
    if target is None:
        target = parse_target("torch-cuda" if device.type == "cuda" else "torch-cpu")
    table = Path(cfg.latency_table) if cfg.latency_table else None
    return LatencyModel.for_target(target, table=table, log=log)


def check_latency_reachable(space: Space, data: Dataset, cfg: SearchConfig, model: LatencyModel) -> None:
    """Fail at once when the space's cheapest architecture (by MACs) is predicted over --budget-ms."""
    if cfg.budget_ms is None:
        return
    cheapest = extreme_spec(space, data.in_channels, data.num_classes, cfg.resolution)
    ms = model.predict_ms(cheapest)
    if ms > cfg.budget_ms:
        raise DsearchError(
            f"no architecture of space '{space.name}' fits --budget-ms {cfg.budget_ms:g}: the cheapest by MFLOPs is "
            f"predicted at {ms:.3f} ms on {model.target.short} ({model.table.describe()}); raise the budget, or use "
            "a smaller space or resolution")
