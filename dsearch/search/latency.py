"""Latency in the search: building a target's table over a space's architectures.

A table built here on the machine a model ships on (`dsearch latency --space SPACE`) holds the parts of the
architectures a search of that space is likely to meet, and a few of them measured whole to fit the overhead;
copied to the machine that searches, it predicts there without measuring.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from ..checks import check_int, check_number
from ..errors import check_interrupted
from ..latency import LatencyModel
from ..model.archspec import ArchSpec, ArchSpecError
from .budget import Budget, random_recorder
from .spaces import load_space, sample

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
