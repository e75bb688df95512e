"""Regular, depthwise-separable and blueprint-separable convolutions: knobs, cost formulas (docs/concepts.md's table)
and the BSConv-S regulariser. The modules themselves live in dsearch.model.layers."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ...checks import is_int, is_positive_int
from ..layers import BSConvS, BSConvU, DepthwiseSeparableConv, bsconv_s_mid_channels, conv2d
from .activations import check_activation
from .registry import ConvType, Knob, Regularizer, out_size, register_conv


def _is_bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _is_activation_or_none(value: Any) -> str | None:
    return check_activation(value, allow_none=True)


def _positive_int(value: Any) -> str | None:
    return None if is_positive_int(value) else "must be a positive integer"


def _fraction(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1
    return None if ok else "must be a number in (0, 1]"


WITH_BN = Knob("with_bn", False, _is_bool, "batch-norm between the two parts")
def _dilation(value: Any) -> str | None:
    return None if is_int(value, 1, 3) else "must be 1, 2 or 3"


# The depthwise part's dilation; "same" padding dilation * (k // 2) keeps the output size and k^2 taps keep the MACs.
DILATION = Knob("dilation", 1, _dilation, "dilation of the depthwise k x k part (1: none)", short="d", implicit=True)
MID_ACTIVATION = Knob(
    "activation", None, _is_activation_or_none,
    "activation between the depthwise and the pointwise part (null: none, a linear operator)",
)


def bsconv_reg_loss(model: nn.Module | Sequence[BSConvS], alpha: float = 0.1) -> torch.Tensor:
    """alpha * sum over BSConv-S layers of ||W1 W1^T - I||_F (Frobenius norm, not squared).

    `model` is a network, or the list of its BSConv-S layers (a training loop finds them once, not every step).
    """
    layers = [m for m in model.modules() if isinstance(m, BSConvS)] if isinstance(model, nn.Module) else model
    terms = []
    for layer in layers:
        w1 = layer.get_parameter("pw1.weight").flatten(1)  # M' x M (typed, unlike the attribute path)
        gram = w1 @ w1.t()
        eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
        terms.append(torch.linalg.matrix_norm(gram - eye, ord="fro"))
    if not terms:
        param = next(model.parameters(), None) if isinstance(model, nn.Module) else None
        return torch.zeros((), device=param.device if param is not None else None)
    return alpha * torch.stack(terms).sum()


def _hw_out(hw: tuple[int, int], k: int, s: int) -> int:
    return out_size(hw[0], k, s) * out_size(hw[1], k, s)


register_conv(ConvType(
    name="regular",
    build=conv2d,
    standalone="conv2d",
    params=lambda m, n, k, kn: n * m * k * k,
    macs=lambda m, n, k, s, hw, kn: _hw_out(hw, k, s) * n * m * k * k,
    doc="k x k conv M -> N",
    label="regular",
    baseline=False,  # a dense k x k conv on the expanded width is no mobile design
))

register_conv(ConvType(
    name="dsc",
    build=DepthwiseSeparableConv,
    standalone="DepthwiseSeparableConv",
    params=lambda m, n, k, kn: m * k * k + m * n,
    macs=lambda m, n, k, s, hw, kn: _hw_out(hw, k, s) * (m * k * k + m * n),
    knobs=(WITH_BN, MID_ACTIVATION, DILATION),
    inner_bn=lambda m, n, kn: (m if kn["with_bn"] else 0, True),
    doc="depthwise k x k on M (stride) -> pointwise M -> N",
    label="DSC",
))

register_conv(ConvType(
    name="bsconv_u",
    build=BSConvU,
    standalone="BSConvU",
    params=lambda m, n, k, kn: m * n + n * k * k,
    macs=lambda m, n, k, s, hw, kn: hw[0] * hw[1] * m * n + _hw_out(hw, k, s) * n * k * k,
    knobs=(WITH_BN, DILATION),
    inner_bn=lambda m, n, kn: (n if kn["with_bn"] else 0, False),
    doc="pointwise M -> N -> depthwise k x k on N (stride)",
    label="BSConv-U",
))


def _bsconv_s_mid(m: int, kn: Mapping[str, Any]) -> int:
    return bsconv_s_mid_channels(m, kn["p"], kn["min_mid_channels"])


register_conv(ConvType(
    name="bsconv_s",
    build=BSConvS,
    standalone="BSConvS",
    params=lambda m, n, k, kn: m * _bsconv_s_mid(m, kn) + _bsconv_s_mid(m, kn) * n + n * k * k,
    macs=lambda m, n, k, s, hw, kn: (
        hw[0] * hw[1] * (m * _bsconv_s_mid(m, kn) + _bsconv_s_mid(m, kn) * n) + _hw_out(hw, k, s) * n * k * k
    ),
    knobs=(
        Knob("p", 0.25, _fraction, "share of input channels kept by the first pointwise conv", short="p"),
        Knob("min_mid_channels", 4, _positive_int, "lower bound on M'"),
        WITH_BN,
        DILATION,
    ),
    inner_bn=lambda m, n, kn: (n if kn["with_bn"] else 0, False),
    doc="pointwise M -> M' -> pointwise M' -> N -> depthwise k x k on N (stride)",
    label="BSConv-S",
    regularizer=Regularizer(BSConvS, bsconv_reg_loss, "bsconv_alpha"),
))
