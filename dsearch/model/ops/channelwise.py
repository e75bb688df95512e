"""ChannelNets' channel-wise convolutions (Gao, Wang and Ji, NeurIPS 2018): `dscw` and `gcwconv` (docs/concepts.md).

A channel-wise conv is a 1-D conv sliding along the channel axis with weights shared over positions
(dsearch.model.layers.ChannelwiseConv, one Conv3d with a single input channel, which fvcore counts exactly):
`filters` filters of kernel d_c = s_c + cw_kernel - 1 and channel stride s_c map M channels to
filters * M / s_c. With s_c = 1 the kernel is cw_kernel, the paper's d_c.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...checks import is_positive_int
from ..layers import DepthwiseSeparableChannelwiseConv, GroupChannelwiseConv, channelwise_window, dscw_geometry
from .convs import MID_ACTIVATION, WITH_BN, _hw_out, _positive_int
from .registry import ConvType, Knob, register_conv


def _odd_positive(value: Any) -> str | None:
    ok = is_positive_int(value) and value % 2 == 1
    return None if ok else "must be an odd positive integer (1, 3, 5, 7, ...)"


def _dscw_window(m: int, n: int, kn: Mapping[str, Any]) -> tuple[int, int]:
    """(filters, d_c) of dscw's channel-wise map M -> N."""
    filters, channel_stride = dscw_geometry(m, n)
    return filters, channelwise_window(channel_stride, kn["cw_kernel"])


CW_KERNEL = Knob("cw_kernel", 7, _odd_positive, "channel-wise kernel at channel stride 1 (d_c = s_c + cw_kernel - 1)",
                 short="c")

register_conv(ConvType(
    name="dscw",
    build=DepthwiseSeparableChannelwiseConv,
    standalone="DepthwiseSeparableChannelwiseConv",
    params=lambda m, n, k, kn: m * k * k + _dscw_window(m, n, kn)[0] * _dscw_window(m, n, kn)[1],
    macs=lambda m, n, k, s, hw, kn: _hw_out(hw, k, s) * (m * k * k + n * _dscw_window(m, n, kn)[1]),
    knobs=(CW_KERNEL, WITH_BN, MID_ACTIVATION),
    inner_bn=lambda m, n, kn: (m if kn["with_bn"] else 0, True),
    doc="depthwise k x k on M (stride) [-> BN(M) if with_bn] [-> activation] -> channel-wise conv M -> N "
        "(N/gcd(M,N) filters, channel stride M/gcd(M,N), kernel s_c + cw_kernel - 1)",
    label="DWSCW",
))


def _common_divisors(m: int, n: int) -> str:
    return ", ".join(str(d) for d in range(1, min(m, n, 64) + 1) if m % d == 0 and n % d == 0)


def _groups_check(m: int, n: int, k: int, s: int, kn: Mapping[str, Any]) -> str | None:
    g = kn["groups"]
    if m % g or n % g:
        return f"groups={g} must divide in_channels={m} and out_channels={n}; valid groups: {_common_divisors(m, n)}"
    return None


def _gcw_fusion(n: int, kn: Mapping[str, Any]) -> tuple[int, int]:
    """(filters, d_c) of the group channel-wise fusion: g filters of channel stride g."""
    return kn["groups"], channelwise_window(kn["groups"], kn["cw_kernel"])


register_conv(ConvType(
    name="gcwconv",
    build=GroupChannelwiseConv,
    standalone="GroupChannelwiseConv",
    params=lambda m, n, k, kn: m * k * k + m * n // kn["groups"] + kn["groups"] * _gcw_fusion(n, kn)[1],
    macs=lambda m, n, k, s, hw, kn: _hw_out(hw, k, s) * (
        m * k * k + m * n // kn["groups"] + n * _gcw_fusion(n, kn)[1]),
    knobs=(Knob("groups", 2, _positive_int, "g: groups of the pointwise conv and filters of the fusion", short="g"),
           CW_KERNEL, WITH_BN, MID_ACTIVATION),
    check=_groups_check,
    inner_bn=lambda m, n, kn: (m if kn["with_bn"] else 0, True),
    doc="depthwise k x k on M (stride) [-> BN(M) if with_bn] [-> activation] -> g-group pointwise M -> N "
        "-> group channel-wise fusion N -> N (g filters, channel stride g, kernel g + cw_kernel - 1)",
    label="GCWConv",
))
