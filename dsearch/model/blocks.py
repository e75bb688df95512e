"""The block registry: which conv units each block kind holds and which layers class builds it.

Each block kind declares its conv units (so an ArchSpec can be validated and costed without
building it), the torch-only class in dsearch.model.layers that builds it, and the StageSpec fields
that class takes besides (in, out, stride). A new block kind plugs in through `register_block`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from . import layers
from .layers import hidden_channels
from .ops.registry import out_size

Unit = tuple[str, int, int, int]  # (name, in_channels, out_channels, stride)
Counts = tuple[int, int]  # (MACs, params)
UnitCost = Callable[[int, int, int, int], Counts]  # the stage's conv unit: (in, out, stride, size) -> counts


@dataclass(frozen=True)
class BlockType:
    name: str
    units: Callable[[int, int, float, int], list[Unit]]  # (in, out, expansion, stride)
    module: type[nn.Module]  # a dsearch.model.layers class: (in, out, stride, kernel=, conv=, **{field: stage.field})
    fields: tuple[str, ...]  # StageSpec fields passed by keyword, besides kernel and conv
    short: str  # abbreviation in one-line summaries
    # Analytic cost, equal to fvcore's count of `module`: (in, out, stride, input size, unit cost, **fields).
    cost: Callable[..., Counts]
    doc: str = ""


BLOCKS: dict[str, BlockType] = {}


def register_block(block: BlockType) -> BlockType:
    if block.name in BLOCKS:
        raise ValueError(f"block {block.name!r} is already registered")
    BLOCKS[block.name] = block
    return block


def conv_units(block: str, in_channels: int, out_channels: int, expansion: float, stride: int) -> list[Unit]:
    return BLOCKS[block].units(in_channels, out_channels, expansion, stride)


def conv_bn_cost(in_channels: int, out_channels: int, kernel: int, stride: int, size: int) -> Counts:
    """A regular conv + affine batch-norm (fvcore: 2 per BN element in eval mode); activations are free."""
    out = out_size(size, kernel, stride) ** 2
    return (out * out_channels * (in_channels * kernel * kernel + 2),
            out_channels * (in_channels * kernel * kernel + 2))


def _add(*parts: Counts) -> Counts:
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def _bn(channels: int, size: int) -> Counts:
    return 2 * channels * size * size, 2 * channels


def _inverted_residual_cost(m: int, n: int, stride: int, size: int, unit: UnitCost, *, expansion: float,
                            **_: object) -> Counts:
    hidden = hidden_channels(m, expansion)
    expand = conv_bn_cost(m, hidden, 1, 1, size) if hidden != m else (0, 0)
    return _add(expand, unit(hidden, n, stride, size), _bn(n, out_size(size, 1, stride)))


def _basic_cost(m: int, n: int, stride: int, size: int, unit: UnitCost, *, residual: bool, **_: object) -> Counts:
    out = out_size(size, 1, stride)  # every odd kernel with "same" padding gives this size
    projection = residual and not (stride == 1 and m == n)
    shortcut = conv_bn_cost(m, n, 1, stride, size) if projection else (0, 0)
    return _add(unit(m, n, stride, size), _bn(n, out), unit(n, n, 1, out), _bn(n, out), shortcut)


def _separable_cost(m: int, n: int, stride: int, size: int, unit: UnitCost, **_: object) -> Counts:
    return _add(unit(m, n, stride, size), _bn(n, out_size(size, 1, stride)))


register_block(BlockType(
    "inverted_residual",
    units=lambda m, n, e, s: [("conv", hidden_channels(m, e), n, s)],
    module=layers.InvertedResidual,
    fields=("expansion", "activation", "residual"),
    short="ir",
    cost=_inverted_residual_cost,
    doc="MobileNetV2 block; the conv unit maps the expanded width to the output (dsc = depthwise + project)",
))
register_block(BlockType(
    "basic",
    units=lambda m, n, e, s: [("conv1", m, n, s), ("conv2", n, n, 1)],
    module=layers.BasicBlock,
    fields=("activation", "residual"),
    short="bb",
    cost=_basic_cost,
    doc="ResNet basic block with two conv units and a 1x1 projection shortcut when the shape changes",
))
register_block(BlockType(
    "separable",
    units=lambda m, n, e, s: [("conv", m, n, s)],
    module=layers.SeparableBlock,
    fields=("activation", "residual"),
    short="sep",
    cost=_separable_cost,
    doc="one conv unit + BN + activation (MobileNetV1 style)",
))
