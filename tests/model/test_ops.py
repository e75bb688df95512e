"""Each conv type against an independent truth (docs/concepts.md's definitions)."""
import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dsearch.model.layers import SlidingChannelConv
from dsearch.model.ops import (
    BSConvS,
    ConvConfigError,
    SlidingChannelConvOp,
    bsconv_reg_loss,
    bsconv_s_mid_channels,
    make_conv,
    scc_pointwise,
)

torch.manual_seed(0)


def reference_conv(x, weight, stride):
    k = weight.shape[-1]
    return F.conv2d(x, weight, stride=stride, padding=k // 2)


def rand64(*shape):
    return torch.randn(*shape, dtype=torch.float64)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [3, 5])
def test_dsc_is_regular_conv_with_separable_kernel(stride, kernel):
    m, n = 6, 10
    conv = make_conv("dsc", m, n, kernel, stride).double()
    x = rand64(2, m, 11, 11)
    depthwise = conv.dw.weight[:, 0]  # M x k x k
    pointwise = conv.pw.weight[:, :, 0, 0]  # N x M
    effective = pointwise[:, :, None, None] * depthwise[None]
    torch.testing.assert_close(conv(x), reference_conv(x, effective, stride))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [3, 5])
def test_bsconv_u_is_regular_conv_with_rank_one_filters(stride, kernel):
    m, n = 6, 10
    conv = make_conv("bsconv_u", m, n, kernel, stride).double()
    x = rand64(2, m, 11, 11)
    blueprint = conv.dw.weight[:, 0]  # N x k x k
    pointwise = conv.pw.weight[:, :, 0, 0]  # N x M
    effective = pointwise[:, :, None, None] * blueprint[:, None]  # W[n, m] = P[n, m] B[n]
    torch.testing.assert_close(conv(x), reference_conv(x, effective, stride))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("p", [0.25, 0.5, 1.0])
def test_bsconv_s_is_regular_conv_with_low_rank_pointwise(stride, p):
    m, n, kernel = 16, 12, 3
    conv = make_conv("bsconv_s", m, n, kernel, stride, p=p).double()
    assert conv.pw1.weight.shape[0] == min(m, max(4, math.ceil(p * m)))
    x = rand64(2, m, 9, 9)
    pointwise = conv.pw2.weight[:, :, 0, 0] @ conv.pw1.weight[:, :, 0, 0]  # N x M, rank M'
    blueprint = conv.dw.weight[:, 0]
    effective = pointwise[:, :, None, None] * blueprint[:, None]
    torch.testing.assert_close(conv(x), reference_conv(x, effective, stride))


def test_bsconv_s_mid_channels_formula():
    assert bsconv_s_mid_channels(96, 0.25) == 24
    assert bsconv_s_mid_channels(100, 0.25) == 25
    assert bsconv_s_mid_channels(101, 0.25) == 26  # ceil(25.25)
    assert bsconv_s_mid_channels(8, 0.25) == 4  # floor of 4 channels
    assert bsconv_s_mid_channels(3, 0.25) == 3  # never more than M


def test_regular_conv_is_plain_conv():
    conv = make_conv("regular", 4, 6, 3, 2).double()
    x = rand64(1, 4, 8, 8)
    torch.testing.assert_close(conv(x), reference_conv(x, conv.weight, 2))
    assert conv.bias is None


def band_mask(m, n, groups, overlap):
    """Cyclic band mask from the definition, in exact rational arithmetic."""
    k = m // groups
    step = (1 - Fraction(overlap).limit_denominator(1000)) * k
    mask = torch.zeros(n, m, dtype=torch.float64)
    for c in range(n):
        start = math.floor(c * step) % m
        for j in range(k):
            mask[c, (start + j) % m] = 1
    return mask


SCC_CASES = [(12, 8, 3, 0.25), (12, 12, 2, 1 / 3), (16, 20, 4, 0.5), (16, 10, 2, 0.75), (9, 7, 1, 0.5),
             (24, 24, 4, 0.0), (18, 30, 3, 2 / 3)]


@pytest.mark.parametrize("m,n,groups,overlap", SCC_CASES)
def test_scc_equals_masked_dense_pointwise(m, n, groups, overlap):
    conv = make_conv("scc", m, n, 3, 1, groups=groups, overlap=overlap).double()
    x = rand64(2, m, 6, 6)
    after_dw = F.conv2d(x, conv.dw.weight, padding=1, groups=m)
    mask = band_mask(m, n, groups, overlap)
    # Real weights, in window order, scattered into the band from the definition.
    dense = torch.zeros(n, m, dtype=torch.float64)
    k = m // groups
    for c in range(n):
        cols = mask[c].nonzero().flatten().tolist()
        start = math.floor(c * (1 - Fraction(overlap).limit_denominator(1000)) * k) % m
        for j in range(k):
            dense[c, (start + j) % m] = conv.pw.weight[c, j]
        assert sorted(cols) == sorted((start + j) % m for j in range(k))
    torch.testing.assert_close(conv(x), F.conv2d(after_dw, dense[:, :, None, None]))
    torch.testing.assert_close(conv.pw.dense_weight()[:, :, 0, 0] != 0, mask != 0)


def test_scc_index_rule_by_hand():
    # M=12, g=2 -> K=6, o=1/3 -> windows slide by 4 and wrap: starts 0, 4, 8, 0, ...
    conv = SlidingChannelConv(12, 4, groups=2, overlap=1 / 3)
    assert conv.index[:, 0].tolist() == [0, 4, 8, 0]
    assert conv.index[2].tolist() == [8, 9, 10, 11, 0, 1]


def test_scc_with_stride_two():
    conv = make_conv("scc", 8, 8, 3, 2, groups=2, overlap=0.5).double()
    x = rand64(1, 8, 9, 9)
    after_dw = F.conv2d(x, conv.dw.weight, stride=2, padding=1, groups=8)
    torch.testing.assert_close(conv(x), F.conv2d(after_dw, conv.pw.dense_weight()))
    assert conv(x).shape == (1, 8, 5, 5)


@pytest.mark.parametrize("overlap", [0.25, 1 / 3, 0.5, 0.75, 0.0])
def test_scc_gradcheck(overlap):
    m, n, groups = 12, 9, 3 if overlap != 0.75 else 2
    conv = SlidingChannelConvOp(m, n, groups, overlap).double()
    x = rand64(2, m, 3, 3).requires_grad_()
    weight = conv.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, w: scc_pointwise(a, w, conv.index, m), (x, weight))


@pytest.mark.parametrize("form", [SlidingChannelConvOp, SlidingChannelConv], ids=["custom-op", "portable"])
@pytest.mark.parametrize("overlap", [0.25, 1 / 3, 0.5, 0.75])
def test_scc_gradients_match_masked_dense_autograd(overlap, form):
    m, n, groups = 16, 12, 4
    conv = form(m, n, groups, overlap).double()
    x = rand64(2, m, 5, 5).to(memory_format=torch.channels_last).requires_grad_()
    grad_out = rand64(2, n, 5, 5)
    conv(x).backward(grad_out)
    mask = band_mask(m, n, groups, overlap)
    x_ref = x.detach().clone().requires_grad_()
    dense = conv.dense_weight().detach()[:, :, 0, 0].clone().requires_grad_()
    F.conv2d(x_ref, dense[:, :, None, None]).backward(grad_out)
    torch.testing.assert_close(x.grad, x_ref.grad)
    # weight j of output c sits at column index[c, j] of the dense matrix
    torch.testing.assert_close(conv.weight.grad, dense.grad.gather(1, conv.index))
    assert int((mask != 0).sum()) == conv.weight.numel()


def test_scc_registers_only_real_weights():
    conv = make_conv("scc", 16, 24, 3, groups=4, overlap=0.5)
    params = dict(conv.named_parameters())
    assert params["pw.weight"].shape == (24, 4)
    assert sum(p.numel() for p in params.values()) == 16 * 9 + 24 * 4
    assert set(conv.state_dict()) == set(params)


def test_scc_channels_last_and_float32():
    conv = make_conv("scc", 16, 16, 3, groups=2, overlap=0.5)
    x = torch.randn(2, 16, 8, 8)
    y = conv(x)
    y_cl = conv(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(y, y_cl)


@pytest.mark.parametrize("kind,args,knobs,needle", [
    ("sep", (4, 4, 3), {}, "valid kinds: bsconv_s, bsconv_u, cp, dsc, dscw, gcwconv, regular, scc, shuffle, tucker"),
    ("scc", (6, 4, 3), {"groups": 4}, "groups=4 must divide in_channels=6"),
    ("scc", (8, 4, 3), {"overlap": 1.0}, "must be a number in [0, 1)"),
    ("scc", (8, 4, 3), {"groups": 4, "overlap": 0.75}, "slides by"),
    ("dsc", (8, 4, 3), {"groups": 2}, "unknown knob(s) groups; valid knobs: activation, dilation, with_bn"),
    ("bsconv_s", (8, 4, 3), {"p": 0}, "must be a number in (0, 1]"),
    ("regular", (8, 4, 4), {}, "kernel_size must be an odd"),
    ("dsc", (8, 4, 3), {"activation": "gelu"}, "valid: hardswish, relu, relu6, silu, null"),
])
def test_invalid_configurations_name_the_rule(kind, args, knobs, needle):
    with pytest.raises(ConvConfigError) as err:
        make_conv(kind, *args, **knobs)
    assert needle in str(err.value)


def test_bsconv_reg_loss_is_frobenius_norm_sum():
    model = nn.Sequential(make_conv("bsconv_s", 16, 8, 3, p=0.5), make_conv("bsconv_s", 8, 8, 3, p=0.5),
                          make_conv("dsc", 8, 8, 3))
    expected = 0.0
    for layer in (model[0], model[1]):
        w1 = layer.pw1.weight.detach().flatten(1).double()
        expected += torch.sqrt(((w1 @ w1.T - torch.eye(w1.shape[0], dtype=torch.float64)) ** 2).sum()).item()
    assert bsconv_reg_loss(model, alpha=0.3).item() == pytest.approx(0.3 * expected, rel=1e-5)
    assert bsconv_reg_loss([model[0], model[1]], alpha=0.3).item() == pytest.approx(0.3 * expected, rel=1e-5)
    assert bsconv_reg_loss([]).item() == 0
    assert bsconv_reg_loss(nn.Sequential(make_conv("dsc", 4, 4, 3))).item() == 0


def test_bsconv_reg_loss_vanishes_for_orthonormal_rows_and_has_gradient():
    layer = BSConvS(16, 8, 3, p=0.25)
    nn.init.orthogonal_(layer.pw1.weight)  # 4 x 16: orthonormal rows
    assert bsconv_reg_loss(layer).item() == pytest.approx(0, abs=1e-5)
    with torch.no_grad():
        layer.pw1.weight.mul_(2)
    loss = bsconv_reg_loss(layer, alpha=1.0)
    # W1 W1^T = 4 I -> ||3 I||_F = 3 sqrt(4) = 6
    assert loss.item() == pytest.approx(6.0, rel=1e-5)
    loss.backward()
    assert layer.pw1.weight.grad.abs().sum() > 0


def test_scc_backward_under_bf16_autocast():
    conv = SlidingChannelConvOp(16, 8, groups=2, overlap=0.5)
    x = torch.randn(2, 16, 4, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and conv.weight.grad.dtype == torch.float32
    reference = F.conv2d(x.detach(), conv.dense_weight().detach())
    torch.testing.assert_close(y.float(), reference, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("overlap", [0.0, 1 / 3, 0.5, 0.75])
def test_portable_scc_traced_form_equals_eager_and_counts_n_times_k(overlap):
    from fvcore.nn import FlopCountAnalysis

    m, n, groups = 12, 10, 2 if overlap != 1 / 3 else 3
    conv = SlidingChannelConv(m, n, groups, overlap).double()
    x = rand64(2, m, 5, 5)
    traced = torch.jit.trace(conv, (x,))  # the gather + grouped-conv form, which counters see
    assert "index_select" in str(traced.graph)
    torch.testing.assert_close(traced(x), conv(x))
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.dense_weight()))
    flops = FlopCountAnalysis(conv, (x[:1],)).unsupported_ops_warnings(False).total()
    assert flops == 5 * 5 * n * (m // groups)
