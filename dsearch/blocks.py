"""The block registry: which conv units each block kind holds and which layers class builds it.

Each block kind declares its conv units (so an ArchSpec can be validated and costed without
building it), the torch-only class in dsearch.layers that builds it, and the StageSpec fields
that class takes besides (in, out, stride). A new block kind plugs in through `register_block`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from . import layers
from .layers import hidden_channels

Unit = tuple[str, int, int, int]  # (name, in_channels, out_channels, stride)


@dataclass(frozen=True)
class BlockType:
    name: str
    units: Callable[[int, int, float, int], list[Unit]]  # (in, out, expansion, stride)
    module: type[nn.Module]  # a dsearch.layers class: (in, out, stride, kernel=, conv=, **{field: stage.field})
    fields: tuple[str, ...]  # StageSpec fields passed by keyword, besides kernel and conv
    short: str  # abbreviation in one-line summaries
    doc: str = ""


BLOCKS: dict[str, BlockType] = {}


def register_block(block: BlockType) -> BlockType:
    if block.name in BLOCKS:
        raise ValueError(f"block {block.name!r} is already registered")
    BLOCKS[block.name] = block
    return block


def conv_units(block: str, in_channels: int, out_channels: int, expansion: float, stride: int) -> list[Unit]:
    return BLOCKS[block].units(in_channels, out_channels, expansion, stride)


register_block(BlockType(
    "inverted_residual",
    units=lambda m, n, e, s: [("conv", hidden_channels(m, e), n, s)],
    module=layers.InvertedResidual,
    fields=("expansion", "activation", "residual"),
    short="ir",
    doc="MobileNetV2 block; the conv unit maps the expanded width to the output (dsc = depthwise + project)",
))
register_block(BlockType(
    "basic",
    units=lambda m, n, e, s: [("conv1", m, n, s), ("conv2", n, n, 1)],
    module=layers.BasicBlock,
    fields=("activation", "residual"),
    short="bb",
    doc="ResNet basic block with two conv units and a 1x1 projection shortcut when the shape changes",
))
register_block(BlockType(
    "separable",
    units=lambda m, n, e, s: [("conv", m, n, s)],
    module=layers.SeparableBlock,
    fields=("activation", "residual"),
    short="sep",
    doc="one conv unit + BN + activation (MobileNetV1 style)",
))
