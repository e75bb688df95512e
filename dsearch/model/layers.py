"""Every nn.Module a dsearch network is made of, in torch-only code.

`dsearch export` copies the definitions a network needs from this file into a standalone
model.py, so this module imports nothing but torch and the standard library, and its
top-level names must not depend on anything else in dsearch. The registries, validation and
cost formulas that sit on top live in dsearch.model.ops and dsearch.model.blocks.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "hardswish": lambda: nn.Hardswish(inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]()


ConvFactory = Callable[[int, int, int, int], nn.Module]  # (in_channels, out_channels, kernel_size, stride)


def conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
           dilation: int = 1) -> nn.Conv2d:
    """A bias-free conv with "same" padding dilation * (k//2)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, dilation * (kernel_size // 2), dilation,
                     groups=groups, bias=False)


def depthwise_pointwise_layers(
    in_channels: int, kernel_size: int, stride: int, pointwise: nn.Module, with_bn: bool, activation: str | None,
    dilation: int = 1,
) -> OrderedDict[str, nn.Module]:
    """Depthwise k x k (carries the stride and the dilation), optional BN/activation, then a pointwise map."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        dw=conv2d(in_channels, in_channels, kernel_size, stride, groups=in_channels, dilation=dilation)
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
                 with_bn: bool = False, activation: str | None = None, dilation: int = 1) -> None:
        super().__init__(depthwise_pointwise_layers(
            in_channels, kernel_size, stride, conv2d(in_channels, out_channels, 1), with_bn, activation, dilation
        ))


class BSConvU(nn.Sequential):
    """Unconstrained blueprint-separable conv: pointwise M -> N, then depthwise k x k on N."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 with_bn: bool = False, dilation: int = 1) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(pw=conv2d(in_channels, out_channels, 1))
        if with_bn:
            layers["bn"] = nn.BatchNorm2d(out_channels)
        layers["dw"] = conv2d(out_channels, out_channels, kernel_size, stride, groups=out_channels, dilation=dilation)
        super().__init__(layers)


def bsconv_s_mid_channels(in_channels: int, p: float, min_mid_channels: int = 4) -> int:
    """M' = min(M, max(min_mid_channels, ceil(p * M)))."""
    # round() first so that e.g. 0.25 * 96 is not ceil'ed up by float noise.
    return min(in_channels, max(min_mid_channels, math.ceil(round(p * in_channels, 9))))


class BSConvS(nn.Sequential):
    """Subspace blueprint-separable conv: pointwise M -> M', pointwise M' -> N, depthwise k x k on N.

    Training adds an orthonormality penalty on `pw1` (BSConv paper); inference needs nothing extra.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 p: float = 0.25, min_mid_channels: int = 4, with_bn: bool = False, dilation: int = 1) -> None:
        mid = bsconv_s_mid_channels(in_channels, p, min_mid_channels)
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            pw1=conv2d(in_channels, mid, 1), pw2=conv2d(mid, out_channels, 1)
        )
        if with_bn:
            layers["bn"] = nn.BatchNorm2d(out_channels)
        layers["dw"] = conv2d(out_channels, out_channels, kernel_size, stride, groups=out_channels, dilation=dilation)
        super().__init__(layers)


SCC_FLOAT_SLACK = 1e-9  # keeps floor(c (1 - o) K) exact when c (1 - o) K is an integer up to float rounding


def scc_window_starts(in_channels: int, out_channels: int, groups: int, overlap: float) -> list[int]:
    """s_c = floor(c (1 - o) K) mod M for every output channel c (K = M / g)."""
    step = (1.0 - overlap) * (in_channels // groups)
    return [math.floor(c * step + SCC_FLOAT_SLACK) % in_channels for c in range(out_channels)]


def scc_index(in_channels: int, out_channels: int, groups: int, overlap: float) -> Tensor:
    """N x K long tensor: input channel read by output channel c through its j-th weight."""
    k = in_channels // groups
    starts = torch.tensor(scc_window_starts(in_channels, out_channels, groups, overlap), dtype=torch.long)
    return (starts[:, None] + torch.arange(k)[None, :]) % in_channels


def scc_dense_weight(weight: Tensor, index: Tensor, in_channels: int) -> Tensor:
    """The N x M matrix holding the N x K real weights at their window columns, zero elsewhere."""
    return weight.new_zeros(weight.shape[0], in_channels).scatter(1, index, weight)


class SlidingChannelConv(nn.Module):
    """Sliding-channel pointwise map M -> N: output c reads the K = M / g channels (s_c + j) mod M.

    Only the N x K real weights are parameters; the index is rebuilt from (M, N, g, o).
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int, overlap: float) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.groups, self.overlap = groups, overlap
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups))
        # Same init as a g-group 1x1 nn.Conv2d (fan_in = K).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.register_buffer("index", scc_index(in_channels, out_channels, groups, overlap), persistent=False)
        # Eval mode keeps the dense weight, so that inference does no scatter per call (see `refresh_dense`).
        self.register_buffer("dense_cache", None, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_tracing():
            # Cost counters such as fvcore trace the model: show them the N x K multiply-accumulates SCC really
            # does, as a gather of every output channel's window and one K -> 1 map per output (a grouped conv).
            windows = x.index_select(1, self.index.flatten())
            return F.conv2d(windows, self.weight[:, :, None, None], groups=self.out_channels)
        cache = self.dense_cache
        if cache is not None and not self.training and not (torch.is_grad_enabled() and self.weight.requires_grad):
            return F.conv2d(x, cache)
        # Otherwise the same map as one dense 1x1 conv with zeros outside the windows: on CPU the fastest exact
        # form measured (the gather above copies every input channel ~N/g times).
        return F.conv2d(x, self.dense_weight())

    def train(self, mode: bool = True) -> SlidingChannelConv:
        super().train(mode)
        self.refresh_dense()
        return self

    def refresh_dense(self) -> None:
        """Make (eval) or drop (train) the dense weight cache; call it after changing the weight in place in eval."""
        self.dense_cache = None if self.training else self.dense_weight().detach()

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.refresh_dense()

    def dense_weight(self) -> Tensor:
        """The equivalent N x M x 1 x 1 conv weight, zero outside each output channel's window."""
        return scc_dense_weight(self.weight, self.index, self.in_channels)[:, :, None, None]

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, groups={self.groups}, overlap={self.overlap:g}"


class SCC(nn.Sequential):
    """Sliding-channel conv (DSXplore): depthwise k x k on M (carries the stride) -> sliding-channel M -> N."""

    pointwise_type: type[nn.Module] = SlidingChannelConv

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 2, overlap: float = 0.5, with_bn: bool = False, activation: str | None = None,
                 dilation: int = 1) -> None:
        pointwise = self.pointwise_type(in_channels, out_channels, groups, overlap)
        super().__init__(depthwise_pointwise_layers(in_channels, kernel_size, stride, pointwise, with_bn, activation,
                                                    dilation))


def channelwise_window(channel_stride: int, cw_kernel: int) -> int:
    """d_c = s_c + cw_kernel - 1: the channels one output of a channel-wise conv reads (its s_c own + cw_kernel - 1)."""
    return channel_stride + cw_kernel - 1


def channelwise_dense_index(in_channels: int, filters: int, channel_stride: int, window: int) -> Tensor:
    """N x M long tensor: entry [n, m] indexes the weight (filters x d_c, flattened) that output n reads input m
    through, or filters * d_c (a zero appended to the weights) where output n does not read input m."""
    positions, pad = in_channels // channel_stride, (window - 1) // 2
    index = torch.full((filters * positions, in_channels), filters * window, dtype=torch.long)
    for f in range(filters):
        for pos in range(positions):
            for j in range(window):
                c = pos * channel_stride - pad + j
                if 0 <= c < in_channels:
                    index[f * positions + pos, c] = f * window + j
    return index


class ChannelwiseConv(nn.Module):
    """ChannelNets' channel-wise conv: `filters` 1-D convs sliding along the channel axis, sharing weights over pixels.

    Kernel d_c = s_c + cw_kernel - 1 along the channels, channel stride s_c (dividing M), padding (d_c - 1) // 2:
    each filter gives M / s_c channels, so M -> filters * M / s_c. Output channel f * (M / s_c) + l is filter f at
    position l, reading input channels l s_c - (d_c - 1) // 2 + j, j < d_c (zeros outside 0 .. M - 1).
    Traced (cost counters such as fvcore) it runs as one Conv3d with a single input channel over (channels, H, W),
    N d_c MACs per pixel; otherwise as the same map's 1x1 conv with its banded N x M weight gathered from the
    filters x d_c real weights (Conv3d over one channel is 5-20x slower on CPU; gathering exports without scatter).
    """

    def __init__(self, in_channels: int, filters: int, channel_stride: int, cw_kernel: int) -> None:
        super().__init__()
        window = channelwise_window(channel_stride, cw_kernel)
        self.in_channels, self.filters, self.channel_stride = in_channels, filters, channel_stride
        self.out_channels = filters * (in_channels // channel_stride)
        self.padding = (window - 1) // 2
        # filters x d_c (2-D, so that .to(memory_format=channels_last) passes it by); fan_in d_c as a Conv3d's init
        self.weight = nn.Parameter(torch.empty(filters, window))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        index = channelwise_dense_index(in_channels, filters, channel_stride, window)
        self.register_buffer("dense_index", index.flatten(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_tracing():
            weight = self.weight[:, None, :, None, None]
            y = F.conv3d(x.unsqueeze(1), weight, None, [self.channel_stride, 1, 1], [self.padding, 0, 0])
            return y.flatten(1, 2)
        return F.conv2d(x, self.dense_weight())

    def dense_weight(self) -> Tensor:
        """The N x M x 1 x 1 weight of the same map (zeros where an output does not read an input)."""
        padded = torch.cat([self.weight.flatten(), self.weight.new_zeros(1)])
        return padded.index_select(0, self.dense_index).view(self.out_channels, self.in_channels, 1, 1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, filters={self.filters}, "
                f"channel_stride={self.channel_stride}, window={self.weight.shape[1]}")


def dscw_geometry(in_channels: int, out_channels: int) -> tuple[int, int]:
    """(filters, channel stride) of dscw's channel-wise map M -> N: N / gcd(M, N) filters of stride M / gcd(M, N)."""
    common = math.gcd(in_channels, out_channels)
    return out_channels // common, in_channels // common


class DepthwiseSeparableChannelwiseConv(nn.Sequential):
    """ChannelNets' DWSCW: depthwise k x k on M (carries the stride) -> channel-wise conv M -> N (dscw_geometry)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, cw_kernel: int = 7,
                 with_bn: bool = False, activation: str | None = None) -> None:
        filters, channel_stride = dscw_geometry(in_channels, out_channels)
        pointwise = ChannelwiseConv(in_channels, filters, channel_stride, cw_kernel)
        super().__init__(depthwise_pointwise_layers(in_channels, kernel_size, stride, pointwise, with_bn, activation))


class GroupChannelwiseConv(nn.Sequential):
    """ChannelNets' group conv + group channel-wise fusion: depthwise k x k on M (stride) -> g-group 1x1 M -> N ->
    channel-wise fusion N -> N (g filters of channel stride g: each output group reads every input group)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 2,
                 cw_kernel: int = 3, with_bn: bool = False, activation: str | None = None) -> None:
        layers = depthwise_pointwise_layers(in_channels, kernel_size, stride,
                                            conv2d(in_channels, out_channels, 1, groups=groups), with_bn, activation)
        layers["cw"] = ChannelwiseConv(out_channels, groups, groups, cw_kernel)
        super().__init__(layers)


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: (g, C / g) channels -> (C / g, g), so each group of the next conv sees all."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def shuffle_mid_channels(in_channels: int, mid: float, groups: int) -> int:
    """M' = g * max(1, ceil(mid * M / g)): the width inside a shuffle unit, a multiple of g."""
    return groups * max(1, math.ceil(round(mid * in_channels / groups, 9)))


class ShuffleConv(nn.Sequential):
    """ShuffleNet unit: g-group 1x1 M -> M' [BN, act] -> channel shuffle -> depthwise k x k on M' (carries the
    stride) -> g-group 1x1 M' -> N."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 4,
                 mid: float = 1.0, with_bn: bool = False, activation: str | None = None) -> None:
        mid_channels = shuffle_mid_channels(in_channels, mid, groups)
        layers: OrderedDict[str, nn.Module] = OrderedDict(pw1=conv2d(in_channels, mid_channels, 1, groups=groups))
        if with_bn:
            layers["bn"] = nn.BatchNorm2d(mid_channels)
        if activation is not None:
            layers["act"] = make_activation(activation)
        layers["shuffle"] = ChannelShuffle(groups)
        layers["dw"] = conv2d(mid_channels, mid_channels, kernel_size, stride, groups=mid_channels)
        layers["pw2"] = conv2d(mid_channels, out_channels, 1, groups=groups)
        super().__init__(layers)


def cp_rank(out_channels: int, rank: float) -> int:
    """R = max(1, floor(rank * N + 1/2)) (round half up)."""
    return max(1, math.floor(round(rank * out_channels, 9) + 0.5))


class CPConv(nn.Sequential):
    """CP-factorised k x k conv: 1x1 M -> R -> depthwise k x 1 (stride (s, 1)) -> depthwise 1 x k (stride (1, s))
    -> 1x1 R -> N; the k x k kernel W[n, m] = sum_r D[n, r] V[r] H[r]^T U[r, m] (rank R)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 rank: float = 0.5) -> None:
        r, pad = cp_rank(out_channels, rank), kernel_size // 2
        super().__init__(OrderedDict(
            pw1=conv2d(in_channels, r, 1),
            dwh=nn.Conv2d(r, r, (kernel_size, 1), (stride, 1), (pad, 0), groups=r, bias=False),
            dww=nn.Conv2d(r, r, (1, kernel_size), (1, stride), (0, pad), groups=r, bias=False),
            pw2=conv2d(r, out_channels, 1),
        ))


def tucker_ranks(in_channels: int, out_channels: int, rank: float) -> tuple[int, int]:
    """(R1, R2) = (max(1, ceil(rank * M)), max(1, ceil(rank * N)))."""
    return (max(1, math.ceil(round(rank * in_channels, 9))), max(1, math.ceil(round(rank * out_channels, 9))))


class TuckerConv(nn.Sequential):
    """Tucker-2-factorised k x k conv: 1x1 M -> R1 -> k x k R1 -> R2 (carries the stride) -> 1x1 R2 -> N."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 rank: float = 0.25) -> None:
        r1, r2 = tucker_ranks(in_channels, out_channels, rank)
        super().__init__(OrderedDict(
            pw1=conv2d(in_channels, r1, 1), core=conv2d(r1, r2, kernel_size, stride), pw2=conv2d(r2, out_channels, 1),
        ))


def conv_bn_act(in_channels: int, out_channels: int, kernel: int, stride: int, activation: str | None) -> nn.Sequential:
    """A regular conv + batch-norm (+ activation), for stems, heads, expansions and shortcuts."""
    layers: list[nn.Module] = [conv2d(in_channels, out_channels, kernel, stride), nn.BatchNorm2d(out_channels)]
    if activation is not None:
        layers.append(make_activation(activation))
    return nn.Sequential(*layers)


def hidden_channels(in_channels: int, expansion: float) -> int:
    """Width inside an inverted-residual block (torchvision's rounding)."""
    return int(round(in_channels * expansion))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand M -> hidden, BN, act] -> conv unit hidden -> N (stride) -> BN [+ x]."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, kernel: int, conv: ConvFactory,
                 expansion: float, activation: str, residual: bool) -> None:
        super().__init__()
        hidden = hidden_channels(in_channels, expansion)
        layers: list[nn.Module] = []
        if hidden != in_channels:
            layers.append(conv_bn_act(in_channels, hidden, 1, 1, activation))
        layers += [conv(hidden, out_channels, kernel, stride), nn.BatchNorm2d(out_channels)]
        self.body = nn.Sequential(*layers)
        self.use_residual = residual and stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return x + y if self.use_residual else y


def unit_bn_act(conv: ConvFactory, in_channels: int, out_channels: int, kernel: int, stride: int,
                activation: str) -> list[nn.Module]:
    """A block's conv unit followed by batch-norm and activation."""
    return [conv(in_channels, out_channels, kernel, stride), nn.BatchNorm2d(out_channels), make_activation(activation)]


class BasicBlock(nn.Module):
    """ResNet basic block: conv unit M -> N (stride), BN, act, conv unit N -> N, BN, + shortcut, act."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, kernel: int, conv: ConvFactory,
                 activation: str, residual: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *unit_bn_act(conv, in_channels, out_channels, kernel, stride, activation),
            conv(out_channels, out_channels, kernel, 1), nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module | None = None
        if residual:
            same = stride == 1 and in_channels == out_channels
            self.shortcut = nn.Identity() if same else conv_bn_act(in_channels, out_channels, 1, stride, None)
        self.act = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        return self.act(y)


class SeparableBlock(nn.Module):
    """MobileNetV1-style block: conv unit M -> N (stride), BN, act [+ x when shapes match]."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, kernel: int, conv: ConvFactory,
                 activation: str, residual: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(*unit_bn_act(conv, in_channels, out_channels, kernel, stride, activation))
        self.use_residual = residual and stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return x + y if self.use_residual else y


def make_stage(block: Callable[..., nn.Module], in_channels: int, out_channels: int, repeats: int, stride: int,
               **block_args) -> nn.Sequential:
    """`repeats` blocks; the first changes the width and carries the stride."""
    return nn.Sequential(*(
        block(in_channels if r == 0 else out_channels, out_channels, stride if r == 0 else 1, **block_args)
        for r in range(repeats)
    ))


class ChannelwiseClassifier(nn.Module):
    """ChannelNets' convolutional classification layer on the pooled features: one 1-D filter of d = C - n + 1
    weights slides along the C channels without padding and gives the n = num_classes logits,
    logit[i] = sum_j weight[j] * x[i + j] (j < d): d weights and n d multiply-accumulates instead of a linear
    layer's C n + n weights and C n MACs. No bias, as in the authors' code (a bias shared by every class would not
    change the softmax). Takes (in_features, out_features) and keeps them as nn.Linear does.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        if not 1 <= out_features <= in_features:
            raise ValueError(f"a channel-wise classifier needs at least as many features as classes, got "
                             f"{in_features} features for {out_features} classes")
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(in_features - out_features + 1))
        nn.init.normal_(self.weight, 0, 0.01)  # the scheme init_weights gives a linear classifier

    def forward(self, x: Tensor) -> Tensor:
        # One input channel and one filter: a Conv1d over the channel axis, which fvcore counts as n d MACs.
        return F.conv1d(x.unsqueeze(1), self.weight.view(1, 1, -1)).flatten(1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, window={self.weight.shape[0]}"


def classifier_head(in_channels: int, channels: int, activation: str, dropout: float, num_classes: int,
                    classifier: Callable[[int, int], nn.Module] = nn.Linear) -> nn.Sequential:
    """[1x1 conv + BN + act to `channels` (0: none)] -> global average pool -> [dropout] -> classifier.

    `classifier(features, num_classes)`: nn.Linear (dense), or ChannelwiseClassifier (ChannelNets).
    """
    layers: list[nn.Module] = []
    if channels:
        layers.append(conv_bn_act(in_channels, channels, 1, 1, activation))
        in_channels = channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(classifier(in_channels, num_classes))
    return nn.Sequential(*layers)


def init_weights(model: nn.Module) -> None:
    """He init for convs (fan-out), unit BN, small linear weights (torchvision's MobileNetV2 scheme)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class Net(nn.Module):
    """stem -> stages -> head, freshly initialised."""

    def __init__(self, stem: nn.Module, stages: nn.Sequential, head: nn.Sequential) -> None:
        super().__init__()
        self.stem, self.stages, self.head = stem, stages, head
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))
