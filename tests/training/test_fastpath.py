"""The proxy's fast path computes the plain model's function: same outputs, same gradients, same weights."""
import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dsearch import ArchSpec, ConvSpec, HeadSpec, StageSpec, StemSpec, build_model, count_cost, preset
from dsearch.data import load_dataset
from dsearch.model.layers import conv2d
from dsearch.model.ops import SlidingChannelConvOp
from dsearch.training import native
from dsearch.training.fastpath import ProxyConv2d, ProxyDropout, ProxySlidingChannelConv, live_taps, specialise
from dsearch.training.proxy import DeviceData, ProxyConfig, train_proxy

CL = torch.channels_last


@pytest.fixture(autouse=True)
def pytorch_kernels_only(monkeypatch):
    """This file checks the forms built from PyTorch's own ops; test_native.py checks dsearch's kernels."""
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    native.library.cache_clear()
    yield
    native.library.cache_clear()


def brute_force_live_taps(size: int, kernel: int, stride: int) -> tuple[list[int], int]:
    """Taps that multiply a real pixel for at least one output, and the output size, by enumeration."""
    pad = kernel // 2
    outputs = [i for i in range(size + 2 * pad) if i * stride + kernel <= size + 2 * pad]
    live = sorted({t for i in outputs for t in range(kernel) if 0 <= i * stride - pad + t < size})
    return live, len(outputs)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [1, 3, 5, 7])
def test_live_taps_match_enumeration(kernel, stride):
    for size in range(1, 17):
        live, out = brute_force_live_taps(size, kernel, stride)
        w = live_taps(size, kernel, stride)
        assert w.out_size == out
        assert list(range(w.first, w.first + w.count)) == live, (size, kernel, stride)
        if w.cropped:
            assert (size + 2 * w.crop_padding - w.count) // stride + 1 == out


def plain_and_proxy(conv: nn.Conv2d, size: int) -> tuple[nn.Conv2d, ProxyConv2d]:
    proxy = ProxyConv2d(copy.deepcopy(conv), live_taps(size, conv.kernel_size[0], conv.stride[0]), "cpu", size)
    return conv, proxy


# (channels in, channels out, groups, kernel, stride, input size): shapes the mobile space makes at 28x28
# (depthwise on 1x1, 2x2 and 4x4 maps, stride 2 onto 1x1, pointwise on small maps) and uncropped ones.
SHAPES = [
    (12, 12, 12, 7, 1, 1), (12, 12, 12, 3, 2, 1), (12, 12, 12, 7, 2, 2), (12, 12, 12, 5, 2, 2),
    (12, 12, 12, 3, 2, 2), (12, 12, 12, 7, 1, 2), (12, 12, 12, 5, 1, 2), (12, 12, 12, 7, 2, 4),
    (12, 12, 12, 5, 2, 3), (12, 12, 12, 3, 1, 7), (12, 12, 12, 7, 1, 7), (12, 12, 12, 5, 2, 7),
    (12, 12, 12, 7, 2, 5), (6, 10, 1, 1, 1, 1), (6, 10, 1, 1, 1, 2), (6, 10, 1, 1, 1, 7),
    (6, 10, 1, 5, 1, 1), (6, 10, 1, 7, 1, 2), (6, 10, 1, 3, 2, 7), (6, 10, 1, 1, 2, 4),
]


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("cin,cout,groups,kernel,stride,size", SHAPES)
def test_proxy_conv_equals_plain_conv(cin, cout, groups, kernel, stride, size, layout):
    torch.manual_seed(0)
    plain, proxy = plain_and_proxy(conv2d(cin, cout, kernel, stride, groups).double(), size)
    x = torch.randn(3, cin, size, size, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    ref = F.conv2d(x, plain.weight, None, stride, kernel // 2, 1, groups)  # independent of the module code
    y = proxy(x)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    gx_ref, gw_ref = torch.autograd.grad(ref, (x, plain.weight), g)
    gx, gw = torch.autograd.grad(y, (x, proxy.weight), g)
    assert gw.shape == plain.weight.shape  # the full kernel, dead taps included
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(gw, gw_ref, rtol=0, atol=1e-12)
    window = proxy.window
    dead = torch.ones(kernel, kernel, dtype=torch.bool)
    dead[window.taps, window.taps] = False
    assert (gw_ref[:, :, dead] == 0).all()  # what the plain conv gives the dead taps, too


@pytest.mark.parametrize("cin,cout,groups,kernel,stride,size",
                         [(4, 4, 4, 7, 1, 1), (4, 4, 4, 5, 2, 2), (4, 4, 4, 7, 1, 2), (3, 5, 1, 1, 1, 2),
                          (4, 4, 4, 5, 2, 5)])
def test_proxy_conv_gradcheck(cin, cout, groups, kernel, stride, size):
    torch.manual_seed(0)
    _, proxy = plain_and_proxy(conv2d(cin, cout, kernel, stride, groups).double(), size)
    x = torch.randn(2, cin, size, size, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: proxy._run(x, w), (x, proxy.weight), fast_mode=True)


@pytest.mark.parametrize("groups,overlap", [(2, 0.5), (4, 0.75), (8, 0.0)])
def test_proxy_scc_equals_custom_op(groups, overlap):
    torch.manual_seed(0)
    scc = SlidingChannelConvOp(16, 12, groups, overlap).double()
    proxy = ProxySlidingChannelConv(copy.deepcopy(scc), "cpu")
    x = torch.randn(3, 16, 2, 2, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    ref, y = scc(x), proxy(x)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    expected, got = torch.autograd.grad(ref, (x, scc.weight), g), torch.autograd.grad(y, (x, proxy.weight), g)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)


def narrow_mobile_spec(dropout: float = 0.2) -> ArchSpec:
    """The mobile space's macro structure (224 design, five stride-2 steps) at small widths: at 28x28 its last
    stages run on 2x2 and 1x1 maps with 7x7 and 5x5 kernels; every conv kind appears."""
    def stage(width, repeats, stride, kernel, conv):
        return StageSpec("inverted_residual", width, repeats, stride, kernel, 3.0, conv, "relu6", True)
    sep = {"with_bn": True, "activation": "relu6"}
    stages = (stage(8, 1, 1, 3, ConvSpec.of("dsc", **sep)), stage(8, 1, 2, 5, ConvSpec("regular")),
              stage(8, 1, 2, 7, ConvSpec.of("bsconv_s", p=0.5)), stage(12, 2, 2, 7, ConvSpec.of("dsc", **sep)),
              stage(12, 1, 1, 5, ConvSpec.of("bsconv_u")),
              stage(16, 2, 2, 7, ConvSpec.of("scc", groups=4, overlap=0.5, **sep)))
    return ArchSpec(in_channels=1, num_classes=10, resolution=224, stem=StemSpec(8, 3, 2, "relu6"), stages=stages,
                    head=HeadSpec(32, "relu6", dropout))


def test_specialised_model_has_same_loss_gradients_state_and_cost():
    torch.manual_seed(0)
    spec = narrow_mobile_spec(dropout=0.0)  # the CPU proxy draws dropout masks from another stream (tested below)
    plain = build_model(spec).double()
    fast = copy.deepcopy(plain)
    forms = specialise(fast, spec.in_channels, 28)
    for form in ("scale+crop", "dwgrad", "dwgrad+crop", "conv+crop", "linear", "scc"):
        assert forms.get(form, 0), (form, forms)
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    y = torch.arange(4) % 10
    losses, grads = [], []
    for model, layout in ((plain, torch.contiguous_format), (fast, CL)):
        loss = F.cross_entropy(model(x.contiguous(memory_format=layout)), y)
        losses.append(loss)
        grads.append(dict(zip([n for n, _ in model.named_parameters()],
                              torch.autograd.grad(loss, list(model.parameters())), strict=True)))
    torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=1e-12)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=1e-10, msg=name)
    reference = build_model(spec).state_dict()
    state = fast.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in reference.items()}
    assert build_model(spec).load_state_dict(state) is not None
    # Cost counting traces the plain forms: the specialised model counts exactly like the architecture.
    assert count_cost(fast.float(), (1, 28, 28)).macs == count_cost(build_model(spec), (1, 28, 28)).macs


def test_train_proxy_returns_full_kernels_that_load_into_build_model():
    spec = narrow_mobile_spec()
    data = load_dataset()
    small = dataclasses.replace(data, val_x=data.val_x[:64], val_y=data.val_y[:64], test_x=data.test_x[:64],
                                test_y=data.test_y[:64])
    result = train_proxy(spec, DeviceData(small, torch.device("cpu"), train_subset=128),
                         ProxyConfig(epochs=1, batch_size=64))
    fresh = build_model(spec)
    fresh.load_state_dict(result.state)
    last = fresh.stages[-1][-1].body[-2][0]  # the last stage's depthwise conv: 7x7, trained on a 1x1 map
    assert tuple(last.weight.shape[-2:]) == (7, 7)


def test_presets_specialise_without_changing_the_state_dict():
    spec = preset("mobilenet_v2", width=0.35, num_classes=10, in_channels=1)
    model = build_model(spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    specialise(model, 1, 28)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_proxy_dropout_keeps_dropouts_distribution_scale_and_gradient():
    p = 0.25
    model = nn.Sequential(nn.Flatten(1), nn.Dropout(p))
    assert specialise(model, 1, 4)["dropout"] == 1 and isinstance(model[1], ProxyDropout)
    x = torch.rand(200, 500) + 0.5  # no zeros: a zero output is a dropped unit
    x.requires_grad_()
    torch.manual_seed(3)
    y = model(x)
    kept = y != 0
    # Each unit kept with probability 1 - p: within 5 standard deviations over 100,000 units.
    assert abs(kept.double().mean().item() - (1 - p)) < 5 * (p * (1 - p) / kept.numel()) ** 0.5
    torch.testing.assert_close(y[kept], x.detach()[kept] / (1 - p), rtol=1e-6, atol=0)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, g * kept / (1 - p), rtol=1e-6, atol=0)
    torch.manual_seed(3)
    assert torch.equal(model(x), y)  # seeded: the same mask
    model.eval()
    assert torch.equal(model(x), x)
