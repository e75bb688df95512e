"""Regular, depthwise-separable and blueprint-separable convolutions (DESIGN.md's table)."""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Mapping

import torch
from torch import nn

from .activations import check_activation, make_activation
from .registry import ConvType, Knob, out_size, register_conv


def _is_bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _is_activation_or_none(value: Any) -> str | None:
    return check_activation(value, allow_none=True)


def _positive_int(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    return None if ok else "must be a positive integer"


def _fraction(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1
    return None if ok else "must be a number in (0, 1]"


WITH_BN = Knob("with_bn", False, _is_bool, "batch-norm between the two parts")
MID_ACTIVATION = Knob(
    "activation", None, _is_activation_or_none,
    "activation between the depthwise and the pointwise part (null: none, a linear operator)",
)


def conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A bias-free conv with "same" padding k//2."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)


def depthwise_pointwise_layers(
    in_channels: int, kernel_size: int, stride: int, pointwise: nn.Module, with_bn: bool, activation: str | None
) -> OrderedDict[str, nn.Module]:
    """Depthwise k x k (carries the stride), optional BN/activation, then a pointwise map."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        dw=conv2d(in_channels, in_channels, kernel_size, stride, groups=in_channels)
    )
    if with_bn:
        layers["bn"] = nn.BatchNorm2d(in_channels)
    if activation is not None:
        layers["act"] = make_activation(activation)
    layers["pw"] = pointwise
    return layers


class DepthwiseSeparableConv(nn.Sequential):
    """DSC: depthwise k x k on M (carries the stride) -> pointwise M -> N."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 with_bn: bool = False, activation: str | None = None) -> None:
        super().__init__(depthwise_pointwise_layers(
            in_channels, kernel_size, stride, conv2d(in_channels, out_channels, 1), with_bn, activation
        ))


class BSConvU(nn.Sequential):
    """Unconstrained blueprint-separable conv: pointwise M -> N, then depthwise k x k on N."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 with_bn: bool = False) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(pw=conv2d(in_channels, out_channels, 1))
        if with_bn:
            layers["bn"] = nn.BatchNorm2d(out_channels)
        layers["dw"] = conv2d(out_channels, out_channels, kernel_size, stride, groups=out_channels)
        super().__init__(layers)


def bsconv_s_mid_channels(in_channels: int, p: float, min_mid_channels: int = 4) -> int:
    """M' = min(M, max(min_mid_channels, ceil(p * M)))."""
    # round() first so that e.g. 0.25 * 96 is not ceil'ed up by float noise.
    return min(in_channels, max(min_mid_channels, math.ceil(round(p * in_channels, 9))))


class BSConvS(nn.Sequential):
    """Subspace blueprint-separable conv: pointwise M -> M', pointwise M' -> N, depthwise k x k on N.

    `bsconv_reg_loss` adds the orthonormality term for `pw1`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 p: float = 0.25, min_mid_channels: int = 4, with_bn: bool = False) -> None:
        mid = bsconv_s_mid_channels(in_channels, p, min_mid_channels)
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            pw1=conv2d(in_channels, mid, 1), pw2=conv2d(mid, out_channels, 1)
        )
        if with_bn:
            layers["bn"] = nn.BatchNorm2d(out_channels)
        layers["dw"] = conv2d(out_channels, out_channels, kernel_size, stride, groups=out_channels)
        super().__init__(layers)


def bsconv_reg_loss(model: nn.Module, alpha: float = 0.1) -> torch.Tensor:
    """alpha * sum over BSConv-S layers of ||W1 W1^T - I||_F (Frobenius norm, not squared)."""
    terms = []
    for module in model.modules():
        if isinstance(module, BSConvS):
            w1 = module.pw1.weight.flatten(1)  # M' x M
            gram = w1 @ w1.t()
            eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
            terms.append(torch.linalg.matrix_norm(gram - eye, ord="fro"))
    if not terms:
        param = next(model.parameters(), None)
        return torch.zeros((), device=param.device if param is not None else None)
    return alpha * torch.stack(terms).sum()


def _hw_out(hw: tuple[int, int], k: int, s: int) -> int:
    return out_size(hw[0], k, s) * out_size(hw[1], k, s)


register_conv(ConvType(
    name="regular",
    build=lambda m, n, k, s: conv2d(m, n, k, s),
    params=lambda m, n, k, kn: n * m * k * k,
    macs=lambda m, n, k, s, hw, kn: _hw_out(hw, k, s) * n * m * k * k,
    doc="k x k conv M -> N",
))

register_conv(ConvType(
    name="dsc",
    build=DepthwiseSeparableConv,
    params=lambda m, n, k, kn: m * k * k + m * n,
    macs=lambda m, n, k, s, hw, kn: _hw_out(hw, k, s) * (m * k * k + m * n),
    knobs=(WITH_BN, MID_ACTIVATION),
    doc="depthwise k x k on M (stride) -> pointwise M -> N",
))

register_conv(ConvType(
    name="bsconv_u",
    build=BSConvU,
    params=lambda m, n, k, kn: m * n + n * k * k,
    macs=lambda m, n, k, s, hw, kn: hw[0] * hw[1] * m * n + _hw_out(hw, k, s) * n * k * k,
    knobs=(WITH_BN,),
    doc="pointwise M -> N -> depthwise k x k on N (stride)",
))


def _bsconv_s_mid(m: int, kn: Mapping[str, Any]) -> int:
    return bsconv_s_mid_channels(m, kn["p"], kn["min_mid_channels"])


register_conv(ConvType(
    name="bsconv_s",
    build=BSConvS,
    params=lambda m, n, k, kn: m * _bsconv_s_mid(m, kn) + _bsconv_s_mid(m, kn) * n + n * k * k,
    macs=lambda m, n, k, s, hw, kn: (
        hw[0] * hw[1] * (m * _bsconv_s_mid(m, kn) + _bsconv_s_mid(m, kn) * n) + _hw_out(hw, k, s) * n * k * k
    ),
    knobs=(
        Knob("p", 0.25, _fraction, "share of input channels kept by the first pointwise conv"),
        Knob("min_mid_channels", 4, _positive_int, "lower bound on M'"),
        WITH_BN,
    ),
    doc="pointwise M -> M' -> pointwise M' -> N -> depthwise k x k on N (stride)",
))
