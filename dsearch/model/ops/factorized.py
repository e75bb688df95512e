"""Higher-order factorisations of a k x k conv (Kossaifi et al.): CP and Tucker-2 (docs/concepts.md)."""
from __future__ import annotations

from ..layers import CPConv, TuckerConv, cp_rank, tucker_ranks
from .convs import _fraction, _hw_out
from .registry import ConvType, Knob, out_size, register_conv


def _cp_macs(m: int, n: int, k: int, s: int, hw: tuple[int, int], r: int) -> int:
    h_out, w_out = out_size(hw[0], k, s), out_size(hw[1], k, s)
    return hw[0] * hw[1] * m * r + h_out * hw[1] * r * k + h_out * w_out * (r * k + r * n)


register_conv(ConvType(
    name="cp",
    build=CPConv,
    standalone="CPConv",
    params=lambda m, n, k, kn: cp_rank(n, kn["rank"]) * (m + 2 * k + n),
    macs=lambda m, n, k, s, hw, kn: _cp_macs(m, n, k, s, hw, cp_rank(n, kn["rank"])),
    knobs=(Knob("rank", 0.5, _fraction, "R = max(1, floor(rank * N + 1/2))", short="r"),),
    doc="pointwise M -> R -> depthwise k x 1 (stride (s,1)) -> depthwise 1 x k (stride (1,s)) -> pointwise R -> N; "
        "linear (no BN or activation inside)",
    label="CP",
))


def _tucker_params(m: int, n: int, k: int, rank: float) -> int:
    r1, r2 = tucker_ranks(m, n, rank)
    return m * r1 + r1 * r2 * k * k + r2 * n


def _tucker_macs(m: int, n: int, k: int, s: int, hw: tuple[int, int], rank: float) -> int:
    r1, r2 = tucker_ranks(m, n, rank)
    return hw[0] * hw[1] * m * r1 + _hw_out(hw, k, s) * (r1 * r2 * k * k + r2 * n)


register_conv(ConvType(
    name="tucker",
    build=TuckerConv,
    standalone="TuckerConv",
    params=lambda m, n, k, kn: _tucker_params(m, n, k, kn["rank"]),
    macs=lambda m, n, k, s, hw, kn: _tucker_macs(m, n, k, s, hw, kn["rank"]),
    knobs=(Knob("rank", 0.25, _fraction, "R1 = max(1, ceil(rank * M)), R2 = max(1, ceil(rank * N))", short="r"),),
    doc="pointwise M -> R1 -> k x k R1 -> R2 (stride) -> pointwise R2 -> N; linear (no BN or activation inside)",
    label="Tucker",
))
