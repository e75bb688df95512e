"""Activation names, shared by conv knobs and the model builder (the modules live in dsearch.model.layers)."""
from __future__ import annotations

from ..layers import ACTIVATIONS, make_activation

__all__ = ["ACTIVATIONS", "check_activation", "make_activation"]


def check_activation(name: object, allow_none: bool = False) -> str | None:
    """Error text for an unknown activation name, else None."""
    if name is None and allow_none:
        return None
    if isinstance(name, str) and name in ACTIVATIONS:  # a list or a mapping is no name (nor hashable)
        return None
    valid = ", ".join(sorted(ACTIVATIONS)) + (", null" if allow_none else "")
    return f"unknown activation; valid: {valid}"
