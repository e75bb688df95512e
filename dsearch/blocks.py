"""Blocks: conv units composed with batch-norm, activation and skip connections.

Each block kind declares its conv units (so an ArchSpec can be validated without building
it) and how to build itself. A new block kind plugs in through `register_block`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from torch import Tensor, nn

from .ops import make_activation, make_conv
from .ops.convs import conv2d

if TYPE_CHECKING:
    from .archspec import StageSpec

Unit = tuple[str, int, int, int]  # (name, in_channels, out_channels, stride)


@dataclass(frozen=True)
class BlockType:
    name: str
    units: Callable[[int, int, float, int], list[Unit]]  # (in, out, expansion, stride)
    build: Callable[[int, "StageSpec", int], nn.Module]  # (in, stage, stride)
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


def hidden_channels(in_channels: int, expansion: float) -> int:
    """Width inside an inverted-residual block (torchvision's rounding)."""
    return int(round(in_channels * expansion))


def conv_unit(stage: "StageSpec", in_channels: int, out_channels: int, stride: int) -> nn.Module:
    return make_conv(stage.conv.kind, in_channels, out_channels, stage.kernel, stride, **stage.conv.knob_dict)


def conv_bn_act(in_channels: int, out_channels: int, kernel: int, stride: int, activation: str | None) -> nn.Sequential:
    """A regular conv + batch-norm (+ activation), for stems, heads and expansions."""
    layers: list[nn.Module] = [conv2d(in_channels, out_channels, kernel, stride), nn.BatchNorm2d(out_channels)]
    if activation is not None:
        layers.append(make_activation(activation))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """[1x1 expand M -> hidden, BN, act] -> conv unit hidden -> N (stride) -> BN [+ x]."""

    def __init__(self, in_channels: int, stage: "StageSpec", stride: int) -> None:
        super().__init__()
        hidden = hidden_channels(in_channels, stage.expansion)
        layers: list[nn.Module] = []
        if hidden != in_channels:
            layers.append(conv_bn_act(in_channels, hidden, 1, 1, stage.activation))
        layers += [conv_unit(stage, hidden, stage.out_channels, stride), nn.BatchNorm2d(stage.out_channels)]
        self.body = nn.Sequential(*layers)
        self.use_residual = stage.residual and stride == 1 and in_channels == stage.out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return x + y if self.use_residual else y


class BasicBlock(nn.Module):
    """ResNet basic block: conv unit M -> N (stride), BN, act, conv unit N -> N, BN, + shortcut, act."""

    def __init__(self, in_channels: int, stage: "StageSpec", stride: int) -> None:
        super().__init__()
        out = stage.out_channels
        self.body = nn.Sequential(
            conv_unit(stage, in_channels, out, stride), nn.BatchNorm2d(out), make_activation(stage.activation),
            conv_unit(stage, out, out, 1), nn.BatchNorm2d(out),
        )
        self.shortcut: nn.Module | None = None
        if stage.residual:
            same = stride == 1 and in_channels == out
            self.shortcut = nn.Identity() if same else conv_bn_act(in_channels, out, 1, stride, None)
        self.act = make_activation(stage.activation)

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        return self.act(y)


class SeparableBlock(nn.Module):
    """MobileNetV1-style: conv unit M -> N (stride), BN, act [+ x when shapes match]."""

    def __init__(self, in_channels: int, stage: "StageSpec", stride: int) -> None:
        super().__init__()
        out = stage.out_channels
        self.body = nn.Sequential(
            conv_unit(stage, in_channels, out, stride), nn.BatchNorm2d(out), make_activation(stage.activation)
        )
        self.use_residual = stage.residual and stride == 1 and in_channels == out

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return x + y if self.use_residual else y


register_block(BlockType(
    "inverted_residual",
    units=lambda m, n, e, s: [("conv", hidden_channels(m, e), n, s)],
    build=InvertedResidual,
    short="ir",
    doc="MobileNetV2 block; the conv unit maps the expanded width to the output (dsc = depthwise + project)",
))
register_block(BlockType(
    "basic",
    units=lambda m, n, e, s: [("conv1", m, n, s), ("conv2", n, n, 1)],
    build=BasicBlock,
    short="bb",
    doc="ResNet basic block with two conv units and a 1x1 projection shortcut when the shape changes",
))
register_block(BlockType(
    "separable",
    units=lambda m, n, e, s: [("conv", m, n, s)],
    build=SeparableBlock,
    short="sep",
    doc="one conv unit + BN + activation (MobileNetV1 style)",
))
