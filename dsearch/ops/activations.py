"""Activation functions by name, shared by conv knobs and the model builder."""
from __future__ import annotations

from typing import Callable

from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "hardswish": lambda: nn.Hardswish(inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
}


def check_activation(name: object, allow_none: bool = False) -> str | None:
    """Error text for an unknown activation name, else None."""
    if name is None and allow_none:
        return None
    if name in ACTIVATIONS:
        return None
    valid = ", ".join(sorted(ACTIVATIONS)) + (", null" if allow_none else "")
    return f"unknown activation; valid: {valid}"


def make_activation(name: str) -> nn.Module:
    problem = check_activation(name)
    if problem:
        raise ValueError(f"activation {name!r}: {problem}")
    return ACTIVATIONS[name]()
