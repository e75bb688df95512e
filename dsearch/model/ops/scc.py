"""Sliding-channel convolution (SCC, DSXplore): depthwise k x k, then a cyclic channel-window pointwise map.

Output channel c reads the K = M / g input channels (s_c + j) mod M, j < K, with
s_c = floor(c (1 - o) K) mod M: windows slide by (1 - o) K channels and overlap by o K.

Inside dsearch the pointwise part runs as the custom op `dsearch::scc_pointwise`, so that cost
counters see one op with N*K MACs per output pixel whatever kernel computes it. On CPU the
fastest exact form measured is a dense 1x1 conv whose weight is scattered from the N x K real
weights each call (benchmarks/bench_convs.py); autograd is written out so gradients reach only
those weights. `dsearch.model.layers.SlidingChannelConv` is the portable gather + grouped-conv form
that export writes out; both have the same parameters and outputs.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import layers
from ..layers import SCC_FLOAT_SLACK, scc_dense_weight, scc_index, scc_window_starts
from .convs import DILATION, MID_ACTIVATION, WITH_BN, _hw_out, _positive_int
from .registry import ConvType, Knob, register_conv

__all__ = ["SCC", "SlidingChannelConvOp", "scc_dense_weight", "scc_index", "scc_pointwise", "scc_pointwise_macs",
           "scc_window_starts"]


@torch.library.custom_op("dsearch::scc_pointwise", mutates_args=())
def scc_pointwise(x: Tensor, weight: Tensor, index: Tensor, in_channels: int) -> Tensor:
    """y[:, c] = sum_j weight[c, j] * x[:, index[c, j]] (1x1, stride 1)."""
    dense = scc_dense_weight(weight, index, in_channels).to(x.dtype)
    return F.conv2d(x, dense[:, :, None, None])


@scc_pointwise.register_fake
def _scc_pointwise_fake(x: Tensor, weight: Tensor, index: Tensor, in_channels: int) -> Tensor:
    out = x.new_empty((x.shape[0], weight.shape[0], x.shape[2], x.shape[3]))
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def _scc_setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    x, weight, index, in_channels = inputs
    ctx.save_for_backward(x, weight, index)
    ctx.in_channels = in_channels


def _scc_backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
    x, weight, index = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dense = scc_dense_weight(weight, index, ctx.in_channels).to(grad.dtype)[:, :, None, None]
    # Under autocast the forward conv may have run in bf16 on an fp32 input: compute in grad's dtype.
    grad_x, grad_dense, _ = torch.ops.aten.convolution_backward(
        grad, x.to(grad.dtype), dense, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [need_x, need_w, False]
    )
    grad_x = grad_x.to(x.dtype) if need_x else None
    grad_w = grad_dense.flatten(1).gather(1, index).to(weight.dtype) if need_w else None
    return grad_x, grad_w, None, None


scc_pointwise.register_autograd(_scc_backward, setup_context=_scc_setup_context)


def scc_pointwise_macs(inputs: list, outputs: list) -> int:
    """fvcore handle: K MACs per output element (weight is N x K)."""
    k = inputs[1].type().sizes()[1]
    return math.prod(outputs[0].type().sizes()) * k


class SlidingChannelConvOp(layers.SlidingChannelConv):
    """The sliding-channel pointwise map running as `dsearch::scc_pointwise` (counted, fast on CPU)."""

    def forward(self, x: Tensor) -> Tensor:
        return scc_pointwise(x, self.weight, self.index, self.in_channels)


class SCC(layers.SCC):
    """dsearch's SCC: the layers.SCC structure with the custom-op pointwise map."""

    pointwise_type = SlidingChannelConvOp


def _overlap(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1
    return None if ok else "must be a number in [0, 1)"


def _scc_check(m: int, n: int, k: int, s: int, kn: Mapping[str, Any]) -> str | None:
    groups, overlap = kn["groups"], kn["overlap"]
    if m % groups:
        divisors = [d for d in range(1, min(m, 64) + 1) if m % d == 0]  # up to 64: a line, not all of them
        return f"groups={groups} must divide in_channels={m}; valid groups: {', '.join(map(str, divisors))}"
    window = m // groups
    if (1 - overlap) * window < 1 - SCC_FLOAT_SLACK:
        return (f"overlap={overlap:g} with window K={window} slides by (1-overlap)*K = {(1 - overlap) * window:g}"
                f" < 1 channel; use overlap <= {1 - 1 / window:g}")
    return None


register_conv(ConvType(
    name="scc",
    build=SCC,
    params=lambda m, n, k, kn: m * k * k + n * (m // kn["groups"]),
    macs=lambda m, n, k, s, hw, kn: _hw_out(hw, k, s) * (m * k * k + n * (m // kn["groups"])),
    knobs=(
        Knob("groups", 2, _positive_int, "g: each output channel reads K = M / g input channels", short="g"),
        Knob("overlap", 0.5, _overlap, "o: share of K that neighbouring windows share", short="o"),
        WITH_BN,
        MID_ACTIVATION,
        DILATION,
    ),
    check=_scc_check,
    inner_bn=lambda m, n, kn: (m if kn["with_bn"] else 0, True),
    doc="depthwise k x k on M (stride) -> sliding-channel conv M -> N (g groups, overlap o)",
    standalone="SCC",
    label="SCC",
))
