"""A network as the parts a latency table times one by one: the stem, every block at its exact shape, the head.

A part's key is its exact shape as canonical JSON (kind, knobs, widths, expansion, kernel, stride, activation,
residual and input size), so two networks that share a block at the same shape share its table entry. Built
one after another on the input sizes they get in the network, the parts compute the network
(tests/latency: their MACs add up to the network's, and chaining them gives its outputs).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..model.archspec import ArchSpec, stage_blocks
from ..model.blocks import BLOCKS
from ..model.builder import conv_factory
from ..model.heads import CLASSIFIERS
from ..model.layers import classifier_head, conv_bn_act
from ..model.ops.registry import out_size


@dataclass(frozen=True)
class Part:
    """One part of a network: its table key, how to build it, and its input (channels, size)."""

    key: str
    kind: str  # stem | block | head
    build: Callable[[], nn.Module]
    channels: int
    size: int


def part_key(kind: str, **shape: Any) -> str:
    return json.dumps({"part": kind, **shape}, sort_keys=True, separators=(",", ":"))


def network_parts(spec: ArchSpec, size: int) -> list[Part]:
    """The stem, each block and the head of `spec` at a `size` x `size` input, in the order they run."""
    st0 = spec.stem
    parts = [Part(part_key("stem", cin=spec.in_channels, cout=st0.out_channels, kernel=st0.kernel,
                           stride=st0.stride, activation=st0.activation, size=size), "stem",
                  lambda: conv_bn_act(spec.in_channels, st0.out_channels, st0.kernel, st0.stride, st0.activation),
                  spec.in_channels, size)]
    channels, size = st0.out_channels, out_size(size, st0.kernel, st0.stride)
    for st in spec.stages:
        block = BLOCKS[st.block]
        extra = {name: getattr(st, name) for name in block.fields}
        for m_in, stride, in_size, out in stage_blocks(channels, st.out_channels, st.repeats, st.stride, size):
            key = part_key("block", block=st.block, conv=st.conv.to_dict(), cin=m_in, cout=st.out_channels,
                           stride=stride, kernel=st.kernel, size=in_size, **extra)
            parts.append(Part(key, "block", _block_builder(block.module, m_in, st.out_channels, stride, st.kernel,
                                                            st.conv, extra), m_in, in_size))
            size = out
        channels = st.out_channels
    head = spec.head
    parts.append(Part(part_key("head", cin=channels, channels=head.channels, activation=head.activation,
                               classifier=head.classifier, classes=spec.num_classes, size=size), "head",
                      lambda: classifier_head(channels, head.channels, head.activation, head.dropout,
                                              spec.num_classes, CLASSIFIERS[head.classifier].module),
                      channels, size))
    return parts


def _block_builder(module: Callable[..., nn.Module], m_in: int, m_out: int, stride: int, kernel: int, conv: Any,
                   extra: dict[str, Any]) -> Callable[[], nn.Module]:
    return lambda: module(m_in, m_out, stride, kernel=kernel, conv=conv_factory(conv, standalone=True), **extra)
