"""The CPU trainer's fast kernels compute the same functions.

dsearch's own kernels are checked against float64 PyTorch, the fused optimizer step against its per-tensor loop.
"""
import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from test_fastpath import narrow_mobile_spec
from torch import nn

from dsearch import build_model
from dsearch.data import load_dataset
from dsearch.model.layers import scc_dense_weight, scc_index
from dsearch.model.ops import SlidingChannelConvOp
from dsearch.training import native
from dsearch.training.fastpath import ProxyBatchNorm, ProxyConv2d, ProxySlidingChannelConv, specialise
from dsearch.training.proxy import DeviceData, ProxyConfig, _optimizer, train_proxy

CL = torch.channels_last
needs_kernels = pytest.mark.skipif(native.library() is None, reason="no C compiler: dsearch's kernels are not built")


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


# (batch, channels, size, kernel, stride, padding): the mobile space's depthwise convs at 28x28, cropped ones
# (padding below k // 2), an even kernel and channel counts that are not a multiple of the vector width.
DW_SHAPES = [(4, 16, 14, 3, 1, 1), (3, 24, 7, 5, 2, 2), (3, 40, 4, 5, 1, 2), (2, 8, 2, 7, 1, 3), (2, 8, 1, 3, 1, 1),
             (3, 17, 9, 7, 2, 3), (2, 5, 6, 4, 2, 2), (2, 33, 2, 3, 1, 1), (2, 12, 4, 3, 2, 0), (2, 20, 3, 2, 1, 0)]


@needs_kernels
@pytest.mark.parametrize("n,c,size,k,stride,pad", DW_SHAPES)
def test_depthwise_kernel_matches_conv2d(n, c, size, k, stride, pad):
    torch.manual_seed(0)
    x = torch.randn(n, c, size, size).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(c, 1, k, k, requires_grad=True)
    y = native.DepthwiseConv.apply(x, w, stride, pad)
    g = torch.randn_like(y).contiguous(memory_format=CL)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = F.conv2d(xd, wd, None, stride, pad, 1, c)
    ref_gx, ref_gw = torch.autograd.grad(ref, (xd, wd), g.double())
    assert y.shape == ref.shape and y.is_contiguous(memory_format=CL)
    assert relative_error(y, ref) < 1e-6
    assert relative_error(gx, ref_gx) < 1e-6
    assert relative_error(gw, ref_gw) < 1e-5


# (batch, in, out, size, groups, overlap): the overlaps the spaces offer, windows that wrap around the channels,
# more outputs than inputs and fewer, runs of outputs sharing a start longer and shorter than the kernel's 4,
# pixel counts off the kernel's 16-pixel vectors and 64-pixel tiles (one tile and several), channel counts on and
# off its 16 x 16 transposes, and windows of 3 to 80 taps (off its 16-tap vectors; more than 4 vectors of them).
SCC_SHAPES = [(4, 24, 40, 2, 4, 0.5), (3, 33, 21, 3, 3, 1 / 3), (5, 32, 32, 1, 8, 0.0), (2, 48, 96, 2, 4, 0.25),
              (3, 40, 20, 5, 2, 0.75), (7, 64, 16, 1, 8, 0.5), (2, 12, 30, 4, 4, 0.75), (3, 48, 40, 7, 4, 0.5),
              (2, 64, 64, 9, 2, 0.25), (2, 160, 48, 6, 2, 1 / 3), (1, 96, 144, 8, 8, 0.75)]


@needs_kernels
@pytest.mark.parametrize("n,cin,cout,size,groups,overlap", SCC_SHAPES)
def test_scc_kernel_matches_dense_masked_conv(n, cin, cout, size, groups, overlap):
    torch.manual_seed(0)
    check_scc_kernel(torch.randn(n, cin, size, size), cout, groups, overlap)


@needs_kernels
def test_scc_kernel_matches_dense_masked_conv_on_activation_output():
    # In a model the map reads ReLU6 output: half the inputs are exact zeros and none is negative.
    # The shape is a sampled candidate's (96 -> 32 channels, 8 groups, overlap 0.5, on a 7x7 map).
    torch.manual_seed(0)
    check_scc_kernel(F.relu6(3 * torch.randn(32, 96, 7, 7)), 32, 8, 0.5)


def check_scc_kernel(x: torch.Tensor, cout: int, groups: int, overlap: float) -> None:
    """The native map's output and gradients against a float64 dense masked 1x1 conv."""
    cin = x.shape[1]
    scc = SlidingChannelConvOp(cin, cout, groups, overlap)
    proxy = ProxySlidingChannelConv(copy.deepcopy(scc), "cpu")
    assert proxy.form == "native_scc"
    x = x.contiguous(memory_format=CL).requires_grad_()
    y = proxy(x)
    g = torch.randn_like(y).contiguous(memory_format=CL)
    gx, gw = torch.autograd.grad(y, (x, proxy.weight), g)
    xd, wd = x.detach().double().requires_grad_(), proxy.weight.detach().double().requires_grad_()
    ref = F.conv2d(xd, scc_dense_weight(wd, scc_index(cin, cout, groups, overlap), cin)[:, :, None, None])
    ref_gx, ref_gw = torch.autograd.grad(ref, (xd, wd), g.double())
    assert y.is_contiguous(memory_format=CL) and y.shape == ref.shape
    assert relative_error(y, ref) < 1e-6
    assert relative_error(gx, ref_gx) < 1e-6
    assert relative_error(gw, ref_gw) < 1e-5


@needs_kernels
def test_scc_kernel_is_chosen_on_cpu_only():
    scc = SlidingChannelConvOp(32, 32, 2, 0.5)
    assert ProxySlidingChannelConv(scc, "cpu").form == "native_scc"
    assert ProxySlidingChannelConv(scc, "cuda").form == "scc"


@needs_kernels
@pytest.mark.parametrize("act", [True, False], ids=["relu6", "plain"])
# Channel counts on and off 16 (the kernel runs rows of 1, 2 or 4 pixels), pixel counts that leave a part row.
@pytest.mark.parametrize("n,c,size", [(8, 16, 14), (5, 33, 3), (64, 40, 1), (3, 7, 5), (5, 24, 3), (3, 12, 3)])
def test_batch_norm_kernel_matches_batch_norm(n, c, size, act):
    torch.manual_seed(0)
    # An offset mean, to catch cancellation in the variance; scale and shift put part of the output past 0 and 6.
    x = (torch.randn(n, c, size, size) * 3 + 20).contiguous(memory_format=CL).requires_grad_()
    w, b = (torch.randn(c) * 2).requires_grad_(), (torch.randn(c) + 2).requires_grad_()
    bn = nn.BatchNorm2d(c, momentum=None)  # running statistics after one batch: the batch's own
    y = native.BatchNormAct.apply(x, w, b, bn, act)
    mean, var = bn.running_mean, bn.running_var
    g = torch.randn_like(y).contiguous(memory_format=CL)
    grads = torch.autograd.grad(y, (x, w, b), g)
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = F.batch_norm(xd, None, None, wd, bd, True, 0.1, 1e-5)
    if act:
        ref = F.relu6(ref)
        assert 0 < (ref == 0).double().mean() < 0.9 and (ref == 6).any()  # the clamp's both sides are exercised
    ref_grads = torch.autograd.grad(ref, (xd, wd, bd), g.double())
    assert relative_error(y, ref) < 1e-5
    assert relative_error(mean, xd.mean((0, 2, 3))) < 1e-6
    assert relative_error(var, xd.var((0, 2, 3), unbiased=True)) < 1e-4
    assert int(bn.num_batches_tracked) == 1
    for got, want in zip(grads, ref_grads, strict=True):
        assert relative_error(got, want) < 1e-4


@needs_kernels
@pytest.mark.parametrize("momentum", [0.1, None])
def test_proxy_batch_norm_keeps_batch_norm_state(momentum):
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(12, momentum=momentum)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 2)
        plain.bias.uniform_(-1, 1)
    fused = ProxyBatchNorm(copy.deepcopy(plain), act=False)
    for _ in range(3):
        x = (torch.randn(6, 12, 5, 5) * 2 + 1).contiguous(memory_format=CL)
        torch.testing.assert_close(fused(x), plain(x), rtol=1e-5, atol=1e-5)
    assert int(fused.num_batches_tracked) == int(plain.num_batches_tracked) == 3
    torch.testing.assert_close(fused.running_mean, plain.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.running_var, plain.running_var, rtol=1e-5, atol=1e-6)
    fused.eval()
    plain.eval()
    x = torch.randn(2, 12, 3, 3).contiguous(memory_format=CL)
    torch.testing.assert_close(fused(x), plain(x))


@needs_kernels
def test_proxy_batch_norm_rejects_a_wrong_channel_count_like_batch_norm():
    fused = ProxyBatchNorm(nn.BatchNorm2d(12), act=True)
    x = torch.randn(4, 20, 3, 3).contiguous(memory_format=CL)
    with pytest.raises(RuntimeError):  # the kernel would read and write past the 12 channels' parameters
        nn.BatchNorm2d(12)(x)
    with pytest.raises(RuntimeError):
        fused(x)


def float64_loss_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layout: torch.memory_format
                           ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    loss = F.cross_entropy(model(x.to(next(model.parameters()).dtype).contiguous(memory_format=layout)), y)
    return loss.double(), [g.double() for g in torch.autograd.grad(loss, list(model.parameters()))]


@needs_kernels
def test_specialised_float_model_with_kernels_is_as_exact_as_pytorch():
    """Against the float64 model, the kernels' float32 loss and gradients err no more than PyTorch's float32 model."""
    torch.manual_seed(0)
    spec = narrow_mobile_spec(dropout=0.0)  # the CPU proxy's dropout masks come from another random stream
    plain = build_model(spec)
    truth = copy.deepcopy(plain).double()
    fast = copy.deepcopy(plain).to(memory_format=CL)
    forms = specialise(fast, spec.in_channels, 28)
    assert forms.get("native", 0) + forms.get("native+crop", 0) > 0 and forms.get("native_scc", 0) > 0, forms
    fused = [m for m in fast.modules() if isinstance(m, ProxyBatchNorm)]
    assert forms["native_bn"] == len(fused) == sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    relus = sum(isinstance(m, nn.ReLU6) for m in plain.modules())
    assert sum(m.act for m in fused) + sum(isinstance(m, nn.ReLU6) for m in fast.modules()) == relus
    x, y = torch.randn(16, 1, 28, 28), torch.arange(16) % 10
    true_loss, true_grads = float64_loss_gradients(truth, x, y, torch.contiguous_format)
    plain_loss, plain_grads = float64_loss_gradients(plain, x, y, torch.contiguous_format)
    fast_loss, fast_grads = float64_loss_gradients(fast, x, y, CL)
    assert abs(fast_loss - true_loss) <= 10 * abs(plain_loss - true_loss) + 1e-6
    scale = max(g.abs().max().item() for g in true_grads)  # gradients that are zero up to rounding: relative to this
    for (name, _), want, ours, torchs in zip(plain.named_parameters(), true_grads, fast_grads, plain_grads,
                                             strict=True):
        assert (ours - want).abs().max() <= 10 * (torchs - want).abs().max() + 1e-6 * scale, name
    for name, buffer in plain.named_buffers():  # one training step's running statistics
        torch.testing.assert_close(fast.get_buffer(name), buffer, rtol=1e-4, atol=1e-5, msg=name)
    assert fast.state_dict().keys() == plain.state_dict().keys()


@needs_kernels
def test_train_proxy_with_kernels_learns():
    data = load_dataset()
    small = dataclasses.replace(data, val_x=data.val_x[:256], val_y=data.val_y[:256], test_x=data.test_x[:64],
                                test_y=data.test_y[:64])
    result = train_proxy(narrow_mobile_spec(), DeviceData(small, torch.device("cpu"), train_subset=1024),
                         ProxyConfig(epochs=3, batch_size=64))
    assert result.history[-1] > 0.25  # 10 classes: chance is 0.1
    build_model(narrow_mobile_spec()).load_state_dict(result.state)  # full kernels, the architecture's keys


def test_without_kernels_the_fast_path_keeps_pytorch_forms(monkeypatch):
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    native.library.cache_clear()
    try:
        assert native.library() is None and native.status() == "torch"
        model = build_model(narrow_mobile_spec())
        forms = specialise(model, 1, 28)
        assert not any(form.startswith("native") for form in forms), forms
        assert not any(isinstance(m, ProxyBatchNorm) for m in model.modules())
        assert all(m.form != "native" for m in model.modules() if isinstance(m, ProxyConv2d))
    finally:
        native.library.cache_clear()


def test_a_failed_build_warns_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv(native.ENV_CACHE, str(tmp_path))
    monkeypatch.setattr(native, "_compiler", lambda: "/bin/false")  # a "compiler" that always fails
    native.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not be built"):
            assert native.library() is None
        assert list(tmp_path.rglob("*.so")) == []  # nothing half-written
    finally:
        native.library.cache_clear()


@needs_kernels
def test_kernels_build_into_the_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(native.ENV_CACHE, str(tmp_path))
    native.library.cache_clear()
    try:
        assert native.library() is not None
        assert [p.suffix for p in tmp_path.iterdir()] == [".so"]
    finally:
        native.library.cache_clear()


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_cpu_optimizer_is_fused_and_updates_like_the_loop(optimizer):
    torch.manual_seed(0)
    # No bias before the batch norm, as in dsearch's nets: such a bias has a true gradient of zero, and AdamW's
    # normalised step would turn the float noise left in it (1e-8, summation-order dependent) into lr-sized steps.
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Flatten(), nn.LazyLinear(4))
    model(torch.randn(2, 3, 6, 6))
    twin = copy.deepcopy(model)
    cfg = ProxyConfig(optimizer=optimizer)
    fast = _optimizer(model, cfg)
    assert all(group["fused"] for group in fast.param_groups)
    loop = _optimizer(twin, cfg)
    for group in loop.param_groups:  # PyTorch's per-tensor loop: the reference update
        group["fused"], group["foreach"] = None, False
    for step in range(3):
        for m, opt in ((model, fast), (twin, loop)):
            torch.manual_seed(step)
            opt.zero_grad()
            m(torch.randn(4, 3, 6, 6)).square().mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
