"""ShuffleNet's grouped pointwise convolutions with a channel shuffle between them (Zhang et al., CVPR 2018)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..layers import ShuffleConv, shuffle_mid_channels
from .channelwise import _groups_check
from .convs import MID_ACTIVATION, WITH_BN, _fraction, _hw_out, _positive_int
from .registry import ConvType, Knob, register_conv


def _mid(m: int, kn: Mapping[str, Any]) -> int:
    return shuffle_mid_channels(m, kn["mid"], kn["groups"])


register_conv(ConvType(
    name="shuffle",
    build=ShuffleConv,
    standalone="ShuffleConv",
    params=lambda m, n, k, kn: m * _mid(m, kn) // kn["groups"] + _mid(m, kn) * k * k + _mid(m, kn) * n // kn["groups"],
    macs=lambda m, n, k, s, hw, kn: (hw[0] * hw[1] * m * _mid(m, kn) // kn["groups"]
                                     + _hw_out(hw, k, s) * (_mid(m, kn) * k * k + _mid(m, kn) * n // kn["groups"])),
    knobs=(
        Knob("groups", 4, _positive_int, "g: groups of both pointwise convs (and of the shuffle)", short="g"),
        Knob("mid", 1.0, _fraction, "M' = g * max(1, ceil(mid * M / g)): width inside the unit", short="m"),
        Knob("with_bn", False, WITH_BN.check, "batch-norm after the first grouped pointwise conv"),
        Knob("activation", None, MID_ACTIVATION.check, "activation after the first grouped pointwise conv "
             "(and its batch-norm); null: none"),
    ),
    check=_groups_check,
    inner_bn=lambda m, n, kn: (_mid(m, kn) if kn["with_bn"] else 0, False),
    doc="g-group pointwise M -> M' [-> BN(M') if with_bn] [-> activation] -> channel shuffle -> depthwise k x k "
        "on M' (stride) -> g-group pointwise M' -> N",
    label="ShuffleNet",
))
