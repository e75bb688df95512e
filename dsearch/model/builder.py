"""build_model: ArchSpec -> nn.Module (stem, stages of blocks, head), from dsearch.model.layers."""
from __future__ import annotations

import functools
from typing import Any

from torch import nn

from ..errors import DsearchError
from . import layers
from .archspec import ArchSpec, ConvSpec
from .blocks import BLOCKS
from .heads import CLASSIFIERS
from .layers import Net, classifier_head, conv_bn_act, make_stage
from .ops import CONV_TYPES, make_conv


def conv_factory(conv: ConvSpec, standalone: bool = False) -> functools.partial:
    """(in, out, kernel, stride) -> the conv unit `conv` describes; `standalone`: the torch-only form of
    dsearch.model.layers that model.py holds (ConvType.standalone) instead of dsearch's training form."""
    knobs: dict[str, Any] = conv.knob_dict  # make_conv's **knobs: knob names never clash with its positional ones
    if standalone:
        name = CONV_TYPES[conv.kind].standalone
        if not name:
            raise DsearchError(f"conv kind {conv.kind!r} has no standalone form (ConvType.standalone)")
        return functools.partial(getattr(layers, name), **knobs)
    return functools.partial(make_conv, conv.kind, **knobs)


def build_model(spec: ArchSpec, standalone: bool = False) -> nn.Module:
    """The untrained network that `spec` describes; `standalone`: built from the torch-only layers model.py
    holds (the network `dsearch export` ships: same parameters and outputs)."""
    if not isinstance(spec, ArchSpec):
        what = f"dsearch.create_model({spec!r})" if isinstance(spec, str) else "dsearch.create_model(...)"
        raise DsearchError(f"build_model takes an ArchSpec, got {type(spec).__name__}; for a preset name or an "
                           f"ArchSpec JSON file use {what}")
    stem = conv_bn_act(spec.in_channels, spec.stem.out_channels, spec.stem.kernel, spec.stem.stride,
                       spec.stem.activation)
    stages = []
    channels = spec.stem.out_channels
    for st in spec.stages:
        block = BLOCKS[st.block]
        extra = {name: getattr(st, name) for name in block.fields}
        stages.append(make_stage(block.module, channels, st.out_channels, st.repeats, st.stride, kernel=st.kernel,
                                 conv=conv_factory(st.conv, standalone), **extra))
        channels = st.out_channels
    head = classifier_head(channels, spec.head.channels, spec.head.activation, spec.head.dropout, spec.num_classes,
                           CLASSIFIERS[spec.head.classifier].module)
    return Net(stem, nn.Sequential(*stages), head)
