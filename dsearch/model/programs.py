"""The programs an architecture is exported as: which image sizes they take and the ONNX program itself.

One definition for `dsearch export` (model.onnx, model.pt2) and the latency targets (dsearch.latency), so the
ONNX program a latency is measured on is the one a user ships.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .archspec import ArchSpec, cumulative_strides


@dataclass(frozen=True)
class SizeRange:
    """The image sizes (pixels, each of height and width) an exported program takes: lo..hi, hi None: no limit."""

    lo: int
    hi: int | None

    def __contains__(self, size: object) -> bool:
        return isinstance(size, int) and self.lo <= size and (self.hi is None or size <= self.hi)

    def describe(self) -> str:
        if self.hi is None:
            return f"height and width each {self.lo} or more"
        if self.lo == self.hi:
            return f"height and width {self.lo} only"
        return f"height and width each from {self.lo} to {self.hi}"


def export_sizes(spec: ArchSpec, size: int) -> SizeRange:
    """The input sizes the ONNX and .pt2 programs traced at `size` x `size` take, per axis.

    torch.export (which the ONNX exporter runs too) specialises every feature map that is 1 pixel on an axis,
    since broadcasting (a residual addition) asks whether a size is 1, and fails to export a dynamic range in
    which some map is 1 pixel at one end and more at the other. A map at total stride S is ceil(H / S) pixels
    (cumulative_strides), 1 exactly when H <= S; so the program covers the sizes between the two total strides
    around `size`, S_j < H <= S_j+1: above the net's total stride S that is every H > S (e.g. 33 and more for
    stride 32), below it a bounded range (17..32 for a 28-pixel input at stride 32).
    """
    strides = cumulative_strides(spec)
    lo = max((s + 1 for s in strides if s < size), default=1)
    return SizeRange(lo, min((s for s in strides if s >= size), default=None))


def dynamic_shapes(sizes: SizeRange) -> tuple[dict[int, Any]]:
    """Batch free; height and width each free in `sizes` (fixed where it holds one size)."""
    shapes: dict[int, Any] = {0: torch.export.Dim("batch", min=1)}
    if sizes.hi != sizes.lo:
        bounds = {"min": sizes.lo} if sizes.hi is None else {"min": sizes.lo, "max": sizes.hi}
        shapes[2], shapes[3] = torch.export.Dim("height", **bounds), torch.export.Dim("width", **bounds)
    return (shapes,)


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path, sizes: SizeRange) -> None:
    """`model` as one ONNX file (no external data) taking any batch and the image sizes in `sizes`."""
    # Under no_grad SCC layers run from their dense eval weight, so the graph holds dense weights and no scatter.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter prints and warns about its progress
        torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_shapes=dynamic_shapes(sizes), external_data=False)
