"""The proxy's fast path: a built model specialised for training at one input size, computing the same function.

At the proxy's training size (28x28 for the embedded data) a 224x224 design runs its last stages
on 2x2 and 1x1 maps, where most kernel taps only ever multiply zero padding, and where PyTorch's
CPU convolutions are at their slowest (a 7x7 depthwise conv on a 1x1 map with 960 channels: ~300 ms
forward + backward at batch 128, against ~1 ms for the one live tap). `specialise` replaces each
conv of a built model, in place, by a module that computes exactly the same outputs and the same
gradients for the same parameters, in a cheaper form chosen from the layer's geometry:

- crop: only the kernel taps that can touch the input run (a smaller kernel and padding); the
  dead taps get a zero gradient, as they do in the plain conv, where they multiply zeros;
- linear: a 1x1 map (after cropping) on a channels_last CPU tensor runs as one matrix product
  over the channel dimension (PyTorch's 1x1 conv on small maps is 2-30x slower);
- scale: a depthwise conv with one live tap is a per-channel multiply;
- dwgrad: a depthwise conv over 3x3 on a small map computes its weight gradient as one grouped conv;
- SCC's sliding-channel map runs as dsearch's kernel doing only its N x K MACs when dsearch's kernels
  are built, else as one matrix product with its masked dense weight;
- dilated (CPU): a dilated depthwise conv runs as the undilated one of its zero-inserted kernel, (k - 1) d + 1
  taps wide, in the forms above (cropped, native): PyTorch's dilated depthwise conv on CPU is 1.5-8x slower
  forward + backward at batch 128 (docs/design.md, the proxy's fast path);
- native: with dsearch's own CPU kernels built (dsearch.training.native), a depthwise conv whose stride,
  kernel or map size makes oneDNN slow runs as a direct channels_last kernel, and every training
  batch norm runs fused with the ReLU6 that follows it (one module; the ReLU6 becomes Identity).
- dropout (CPU): the mask comes from a uniform draw instead of PyTorch's slow CPU Bernoulli
  sampler: the same distribution, a different random stream (the one form that is not
  bit-for-bit the plain layer's function under a given seed).

Every replacement holds the original Parameter objects, so the optimizer, the state_dict (full
kernels, the same keys) and the exported weights are the model's own; nothing here changes an
architecture or its cost. When traced (fvcore's cost counting), a replaced module runs its plain
form, so a counter sees exactly the MACs of the architecture, never the proxy's shortcut.
The rules that choose a form are fixed (deterministic, so a seeded trial trains the same way
every time) and come from per-shape timings of forward + backward at batch 128 (PyTorch 2.14,
oneDNN, 2-core AVX-512 Xeon); README's Benchmarks section has the figures.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.layers import SlidingChannelConv, scc_dense_weight
from ..model.ops.scc import scc_pointwise
from . import native

LINEAR_MAX_PIXELS = 64  # 1x1 convs on maps up to 8x8 run as a matrix product (measured faster on CPU up to 7x7)


@dataclass(frozen=True)
class TapWindow:
    """The kernel taps of a square "same"-padded conv that can touch a size x size input (both dims alike)."""

    kernel: int
    stride: int
    padding: int  # of the plain conv
    first: int  # first live tap
    count: int  # live taps per dimension
    crop_padding: int  # padding of the cropped conv
    out_size: int

    @property
    def cropped(self) -> bool:
        return self.count < self.kernel

    @property
    def taps(self) -> slice:
        return slice(self.first, self.first + self.count)


def conv_out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def live_taps(size: int, kernel: int, stride: int, padding: int | None = None) -> TapWindow:
    """Which taps of a k x k conv (stride s, padding p, default k // 2) ever multiply a real input pixel.

    Output i reads input i*s - p + t through tap t; taps below `first` only reach the left padding
    for every output, taps above `last` only the right padding. The cropped conv keeps the
    outputs' positions with padding p - first.
    """
    padding = kernel // 2 if padding is None else padding
    out = conv_out_size(size, kernel, stride, padding)
    if out < 1:
        raise ValueError(f"a {kernel}x{kernel} conv with padding {padding} has no output on a {size}x{size} input")
    first = max(0, padding - (out - 1) * stride)
    last = min(kernel - 1, size + padding - 1)
    count, crop_padding = last - first + 1, padding - first
    if conv_out_size(size, count, stride, crop_padding) != out:  # symmetric padding cannot express it: keep all
        first, count, crop_padding = 0, kernel, padding
    return TapWindow(kernel, stride, padding, first, count, crop_padding, out)


def is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1


def _is_channels_last(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last)


def pointwise_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A 1x1 conv (N x M x 1 x 1 weight) as one matrix product over the channels of an NHWC view."""
    y = F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias)
    return y.permute(0, 3, 1, 2)


DWGRAD_MAX_INPUT = 7  # depthwise convs on maps up to 7x7 with kernels over 3x3 compute their weight gradient as below


class DepthwiseConv(torch.autograd.Function):
    """A depthwise conv whose weight gradient runs as one grouped conv over all (image, channel) pairs.

    oneDNN's depthwise weight gradient on CPU is 3-6x slower than its forward for kernels above
    3x3 on small maps. The same sums, gw[c, t] = sum over n, i, j of g[n, c, i, j] x[n, c, i s + t],
    are a depthwise conv of each image-channel plane x[n, c] with g[n, c] as its kernel (dilation
    s), summed over n; forward and input gradient stay PyTorch's.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        s, p, c, k = ctx.stride, ctx.padding, weight.shape[0], weight.shape[-1]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [s, s], [p, p], [1, 1], False, [0, 0], c, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            n, _, h, w = x.shape
            planes = x.contiguous().view(1, n * c, h, w)
            kernels = grad.contiguous().view(n * c, 1, grad.shape[2], grad.shape[3])
            per_image = F.conv2d(planes, kernels, None, 1, p, s, n * c)[:, :, :k, :k]
            grad_w = per_image.reshape(n, c, k, k).sum(0).unsqueeze(1)
        return grad_x, grad_w, None, None


def native_depthwise_wins(w: TapWindow, size: int) -> bool:
    """Whether dsearch's depthwise kernel beats oneDNN's (forward + backward, batch 128) for this geometry.

    Measured (README, Benchmarks): it wins on strided convs, kernels over 3x3 and maps up to 2x2;
    oneDNN keeps stride-1 3x3 convs on larger maps.
    """
    return native.library() is not None and (w.stride > 1 or w.count > 3 or size <= 2)


class ProxyConv2d(nn.Module):
    """A plain square conv's function in its cheapest exact form for one input size; holds the conv's Parameters."""

    weight: Tensor
    bias: Tensor | None

    def __init__(self, conv: nn.Conv2d, window: TapWindow, device_type: str, size: int) -> None:
        super().__init__()
        self.input_size = size
        self.weight = conv.weight
        self.register_parameter("bias", conv.bias if isinstance(conv.bias, nn.Parameter) else None)
        self.groups, self.window = conv.groups, window
        self.depthwise = is_depthwise(conv)
        self.form = self._form(window, device_type)

    def _form(self, w: TapWindow, device_type: str) -> str:
        one_tap = w.count == 1 and w.crop_padding == 0
        if self.depthwise and one_tap:
            return "scale"
        if self.depthwise and device_type == "cpu" and native_depthwise_wins(w, self.input_size):
            return "native"
        if self.depthwise and w.count > 3 and device_type == "cpu" and self.input_size <= DWGRAD_MAX_INPUT:
            return "dwgrad"
        if one_tap and self.groups == 1 and w.stride == 1 and w.out_size ** 2 <= LINEAR_MAX_PIXELS \
                and device_type == "cpu":
            return "linear"
        return "conv"

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_tracing():  # cost counters see the architecture's own conv
            w = self.window
            return F.conv2d(x, self.weight, self.bias, w.stride, w.padding, 1, self.groups)
        return self._run(x, self.weight)

    def _run(self, x: Tensor, weight: Tensor) -> Tensor:
        """The conv of `weight` (full kernel) on `x` in this layer's form."""
        w = self.window
        if w.cropped:
            weight = weight[:, :, w.taps, w.taps]
        if self.form == "scale":
            y = x[:, :, ::w.stride, ::w.stride] * weight.reshape(1, -1, 1, 1)
        elif self.form == "linear" and _is_channels_last(x):
            return pointwise_linear(x, weight, self.bias)
        elif self.form == "native" and native.nhwc_ok(x):
            y = native.DepthwiseConv.apply(x, weight, w.stride, w.crop_padding)
        elif self.form == "dwgrad":
            y = DepthwiseConv.apply(x, weight, w.stride, w.crop_padding)
        else:
            return F.conv2d(x, weight, self.bias, w.stride, w.crop_padding, 1, self.groups)
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        w = self.window
        taps = f"taps {w.first}..{w.first + w.count - 1} of {w.kernel}" if w.cropped else f"{w.kernel}x{w.kernel}"
        return f"{self.form}, {taps}, stride={w.stride}, groups={self.groups}, out {w.out_size}x{w.out_size}"


class ProxyDilatedDepthwise(ProxyConv2d):
    """A dilated depthwise conv as the undilated conv of its zero-inserted kernel, in ProxyConv2d's forms; holds the
    conv's own k x k Parameter (whose gradient is the big kernel's, gathered at the dilated taps)."""

    def __init__(self, conv: nn.Conv2d, device_type: str, size: int) -> None:
        assert isinstance(conv.padding, tuple)  # _dilated_square_depthwise checked it
        self.dilation, kernel = conv.dilation[0], conv.kernel_size[0]
        self.spread = (kernel - 1) * self.dilation + 1  # "same" padding d (k // 2) = spread // 2
        window = live_taps(size, self.spread, conv.stride[0], conv.padding[0])
        super().__init__(conv, window, device_type, size)

    def spread_weight(self) -> Tensor:
        """The spread x spread kernel holding the k x k taps `dilation` apart, zeros between."""
        d = self.dilation
        weight = self.weight.new_zeros(self.weight.shape[0], 1, self.spread, self.spread)
        weight[:, :, ::d, ::d] = self.weight
        return weight

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_tracing():  # cost counters see the architecture's own dilated conv
            w = self.window
            return F.conv2d(x, self.weight, self.bias, w.stride, w.padding, self.dilation, self.groups)
        return self._run(x, self.spread_weight())

    def extra_repr(self) -> str:
        return f"dilation={self.dilation} as {self.spread}x{self.spread}, " + super().extra_repr()


class ProxySlidingChannelConv(nn.Module):
    """SCC's sliding-channel map in its fastest exact form; holds the layer's Parameter.

    On CPU: dsearch's kernel (only the N x K real MACs) when built, else one matrix product with the
    masked dense weight. The kernel measured 1.0-4.3x the dense product (forward + backward, batch 128,
    maps 1x1 to 14x14, 2 to 8 groups; README, Benchmarks), so it is not chosen per shape.
    """

    index: Tensor
    starts: Tensor
    order: Tensor

    def __init__(self, scc: SlidingChannelConv, device_type: str) -> None:
        super().__init__()
        self.weight = scc.weight
        index = scc.index
        assert isinstance(index, Tensor)  # a buffer of SlidingChannelConv
        self.register_buffer("index", index, persistent=False)
        self.in_channels, self.out_channels = scc.in_channels, scc.out_channels
        self.groups, self.overlap = scc.groups, scc.overlap
        self.linear = device_type == "cpu"
        self.native = device_type == "cpu" and native.library() is not None
        starts = index[:, 0].contiguous()  # each output's window start
        self.register_buffer("starts", starts, persistent=False)
        self.register_buffer("order", torch.sort(starts, stable=True).indices, persistent=False)

    @property
    def form(self) -> str:
        return "native_scc" if self.native else "scc"

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_tracing():  # the custom op carries SCC's N x K MACs for cost counters
            return scc_pointwise(x, self.weight, self.index, self.in_channels)
        if self.native and native.nhwc_ok(x) and self.weight.dtype == torch.float32:
            return native.SlidingChannelMap.apply(x, self.weight, self.starts, self.order)
        dense = scc_dense_weight(self.weight, self.index, self.in_channels)[:, :, None, None]
        if self.linear and _is_channels_last(x):
            return pointwise_linear(x, dense, None)
        return F.conv2d(x, dense.to(x.dtype) if x.dtype != dense.dtype else dense)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, groups={self.groups}, overlap={self.overlap:g}, {self.form}"


class ProxyDropout(nn.Dropout):
    """Dropout whose training mask comes from uniform draws (keep where u >= p), not Bernoulli sampling.

    The same distribution (each unit kept with probability 1 - p, scaled by 1 / (1 - p)) from a
    different random stream: PyTorch's CPU bernoulli_ takes ~2 ms for a 128 x 1280 batch, a uniform
    draw and a compare ~0.7 ms. Seeded runs stay reproducible; masks differ from nn.Dropout's.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not 0 < self.p < 1 or torch.jit.is_tracing():
            return super().forward(x)
        keep = torch.rand_like(x) >= self.p
        return x * keep * (1.0 / (1.0 - self.p))


class ProxyBatchNorm(nn.BatchNorm2d):
    """A BatchNorm2d (its own Parameters and buffers), fused with the ReLU6 after it when `act`.

    Training batches in channels_last fp32 on the CPU run dsearch's fused kernel (batch statistics,
    normalisation and clamp in two passes over memory, running statistics updated as BatchNorm2d
    does); anything else (evaluation, tracing, other layouts) runs BatchNorm2d's forward, then the clamp.
    """

    def __init__(self, bn: nn.BatchNorm2d, act: bool) -> None:
        nn.Module.__init__(self)
        self.num_features, self.eps, self.momentum = bn.num_features, bn.eps, bn.momentum
        self.affine, self.track_running_stats = bn.affine, bn.track_running_stats
        self.weight, self.bias = bn.weight, bn.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, getattr(bn, name))
        self.act = act

    def _native(self, x: Tensor) -> bool:
        return (self.training and self.affine and self.track_running_stats and not torch.jit.is_tracing()
                and native.nhwc_ok(x) and self.weight.dtype == torch.float32 and x.numel() > x.shape[1]
                and x.shape[1] == self.num_features  # else BatchNorm2d raises its own error
                and native.library() is not None)

    def forward(self, x: Tensor) -> Tensor:
        if not self._native(x):
            y = super().forward(x)
            return F.hardtanh(y, 0.0, 6.0, inplace=True) if self.act else y
        return native.BatchNormAct.apply(x, self.weight, self.bias, self, self.act)  # updates running stats

    def extra_repr(self) -> str:
        return super().extra_repr() + (", fused ReLU6" if self.act else "")


def _fuse_batch_norms(model: nn.Module) -> int:
    """Swap every plain BatchNorm2d for a ProxyBatchNorm, fusing a ReLU6 that directly follows it in a Sequential."""
    fused = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        sequential = isinstance(parent, nn.Sequential) and type(parent).forward is nn.Sequential.forward
        for i, (name, child) in enumerate(children):
            if type(child) is not nn.BatchNorm2d:
                continue
            after = children[i + 1] if sequential and i + 1 < len(children) else None
            act = after is not None and type(after[1]) is nn.ReLU6
            setattr(parent, name, ProxyBatchNorm(child, act))
            if after is not None and act:
                setattr(parent, after[0], nn.Identity())
            fused += 1
    return fused


def conv_input_sizes(model: nn.Module, in_channels: int, size: int) -> dict[nn.Module, int]:
    """Spatial input size of every conv and SCC map on a square input when `model` runs on size x size images."""
    sizes: dict[nn.Module, int] = {}

    def record(module: nn.Module, args: tuple) -> None:
        h, w = args[0].shape[-2:]
        if h == w:  # a non-square map keeps its plain layer
            sizes[module] = int(h)

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()
             if isinstance(m, (nn.Conv2d, SlidingChannelConv))]
    param = next(model.parameters(), None)
    was_training = model.training
    try:
        model.eval()  # batch-norm statistics untouched
        with torch.no_grad():
            model(torch.zeros(1, in_channels, size, size, device=param.device if param is not None else None,
                              dtype=param.dtype if param is not None else None))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return sizes


def _plain_square_conv(conv: nn.Conv2d) -> bool:
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    return (type(conv) is nn.Conv2d and k[0] == k[1] and s[0] == s[1] and isinstance(p, tuple) and p[0] == p[1]
            and conv.dilation == (1, 1) and conv.padding_mode == "zeros")


def _dilated_square_depthwise(conv: nn.Conv2d) -> bool:
    k, s, p, d = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    return (type(conv) is nn.Conv2d and is_depthwise(conv) and k[0] == k[1] and s[0] == s[1] and d[0] == d[1] > 1
            and isinstance(p, tuple) and p[0] == p[1] == d[0] * (k[0] // 2) and conv.padding_mode == "zeros")


def specialise(model: nn.Module, in_channels: int, size: int) -> dict[str, int]:
    """Swap, in place, every plain conv and SCC map of `model` for its fast exact form at size x size inputs
    (and, on CPU, every dropout for ProxyDropout and every batch norm for ProxyBatchNorm).

    Returns how many layers took each form. The model's parameters, state_dict keys and shapes
    are unchanged; call it again only on a freshly built model (the forms fit one input size).
    """
    param = next(model.parameters(), None)
    device_type = param.device.type if param is not None else "cpu"
    sizes = conv_input_sizes(model, in_channels, size)
    forms: dict[str, int] = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            replacement: nn.Module | None = None
            if type(child) is nn.Dropout and device_type == "cpu":  # CUDA's bernoulli is fast; the CPU's is not
                replacement, form = ProxyDropout(child.p, child.inplace), "dropout"
            elif child not in sizes:
                continue
            elif isinstance(child, nn.Conv2d) and _plain_square_conv(child):
                assert isinstance(child.padding, tuple)  # _plain_square_conv checked it
                window = live_taps(sizes[child], child.kernel_size[0], child.stride[0], child.padding[0])
                replacement = ProxyConv2d(child, window, device_type, sizes[child])
                form = replacement.form + ("+crop" if window.cropped else "")
            elif isinstance(child, nn.Conv2d) and _dilated_square_depthwise(child) and device_type == "cpu":
                replacement = ProxyDilatedDepthwise(child, device_type, sizes[child])
                form = "dilated+" + replacement.form + ("+crop" if replacement.window.cropped else "")
            elif isinstance(child, SlidingChannelConv):
                replacement = ProxySlidingChannelConv(child, device_type)
                form = replacement.form
            if replacement is not None:
                setattr(parent, name, replacement)
                forms[form] = forms.get(form, 0) + 1
    if device_type == "cpu" and native.library() is not None:
        forms["native_bn"] = _fuse_batch_norms(model)
    return forms
