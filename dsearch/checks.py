"""Argument rules, checked before anything is allocated or written; each error states the rule it broke.

Numbers must be finite and in range. Whether a resolution fits in memory is checked by
dsearch.cost.memory.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .errors import DsearchError

MIN_RESOLUTION = 8
MAX_SEED = 2**31 - 1
# Bounds on an architecture far beyond any network dsearch can search or train, so that a typo or a hostile file
# (a depth of 10**9, a width of 10**30) is one clear line rather than a hang or an overflow deep inside torch.
MAX_RESOLUTION = 1 << 20  # far past memory: a larger one is refused for it (dsearch.cost.memory)
MAX_CHANNELS = 1 << 16
MAX_REPEATS = 256
MAX_EXPANSION = 64
MAX_STAGES = 64
MAX_CLASSES = 1_000_000


def check_number(value: float, flag: str, *, low: float = -math.inf, high: float = math.inf,
                 low_open: bool = False, high_open: bool = False) -> None:
    """A finite number within [low, high] (or open ends); the error states the range."""
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        parts = []
        if low > -math.inf:
            parts.append(f"{'>' if low_open else '>='} {low:g}")
        if high < math.inf:
            parts.append(f"{'<' if high_open else '<='} {high:g}")
        rule = f" {' and '.join(parts)}" if parts else ""
        raise DsearchError(f"{flag} must be a finite number{rule}, got {value!r}")


def is_int(value: Any, low: int | None = None, high: int | None = None) -> bool:
    """Whether `value` is an integer (a bool is not one) within [low, high] (None: no bound)."""
    return (isinstance(value, int) and not isinstance(value, bool)
            and (low is None or value >= low) and (high is None or value <= high))


def is_positive_int(value: Any) -> bool:
    """Whether `value` is an integer >= 1 (a bool is not one)."""
    return is_int(value, 1)


def check_int(value: int, flag: str, low: int, high: int | None = None) -> None:
    """An integer within [low, high]; the error states the range."""
    if not is_int(value, low, high):
        rule = f">= {low}" if high is None else f"from {low} to {high}"
        raise DsearchError(f"{flag} must be an integer {rule}, got {value!r}")


def check_resolution(value: int | None, flag: str) -> None:
    if value is not None:
        check_int(value, flag, MIN_RESOLUTION)


def check_seed(value: int, flag: str = "--seed") -> None:
    check_int(value, flag, 0, MAX_SEED)


def check_device(requested: str) -> None:
    """`auto` or a device string PyTorch understands (cpu, cuda, cuda:1, mps, ...)."""
    if requested == "auto":
        return
    try:
        torch.device(requested)
    except (RuntimeError, ValueError):
        raise DsearchError(f"--device {requested!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
