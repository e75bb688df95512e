"""Issue 26's conv kinds (dscw, gcwconv, shuffle, cp, tucker) and the depthwise dilation, against independent truths.

Each kind's MACs and params are written out here from docs/concepts.md's table (not taken from dsearch.model.ops), its
outputs are checked against one dense k x k conv built from its weights in float64, its gradients with gradcheck,
and its export with model.py (without dsearch), ONNX and torch.export.
"""
import json
import math
import subprocess
import sys

import optuna
import pytest
import torch
import torch.nn.functional as F
from conftest import STANDALONE

from dsearch import ArchSpec, ConvSpec, StageSpec, StemSpec, build_model, preset, spec_cost, with_conv
from dsearch.cost import count_cost, flop_analysis
from dsearch.export.writer import export_spec, import_model_file
from dsearch.model.archspec import ArchSpecError, HeadSpec
from dsearch.model.ops import CONV_TYPES, ConvConfigError, make_conv
from dsearch.search.spaces import available_spaces, load_space, sample

optuna.logging.set_verbosity(optuna.logging.WARNING)



def randomized_state(model: torch.nn.Module) -> dict:
    """Random weights and batch-norm statistics, so that every parameter and buffer shows in the output."""
    g = torch.Generator().manual_seed(1)
    state = {}
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            state[key] = value
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(value.shape, generator=g) * 0.3 + (1.0 if key.endswith("bn.weight") else 0.0)
    return state

NEW_KINDS = ("dscw", "gcwconv", "shuffle", "cp", "tucker")
DILATED_KINDS = ("dsc", "scc", "bsconv_u", "bsconv_s")

CASES = [
    ("dscw", {}), ("dscw", {"cw_kernel": 3}), ("dscw", {"cw_kernel": 1}),
    ("gcwconv", {}), ("gcwconv", {"groups": 4, "cw_kernel": 3}), ("gcwconv", {"groups": 1, "cw_kernel": 5}),
    ("shuffle", {}), ("shuffle", {"groups": 2, "mid": 0.25}), ("shuffle", {"groups": 8, "mid": 0.5}),
    ("cp", {}), ("cp", {"rank": 0.25}), ("cp", {"rank": 1.0}), ("cp", {"rank": 0.01}),
    ("tucker", {}), ("tucker", {"rank": 0.5}), ("tucker", {"rank": 1.0}), ("tucker", {"rank": 0.01}),
]
DILATION_CASES = [(kind, {"dilation": d}) for kind in DILATED_KINDS for d in (2, 3)]


def out(size, k, s):
    return (size + 2 * (k // 2) - k) // s + 1


def formula(kind, m, n, k, s, h, w, **kn):
    """(MACs, params) from docs/concepts.md's table, written out independently of dsearch.model.ops."""
    hw, ho, wo = h * w, out(h, k, s), out(w, k, s)
    hwo = ho * wo
    if kind == "dscw":
        c = kn.get("cw_kernel", 7)
        filters, cstride = n // math.gcd(m, n), m // math.gcd(m, n)
        window = cstride + c - 1
        return hwo * (m * k * k + n * window), m * k * k + filters * window
    if kind == "gcwconv":
        g, c = kn.get("groups", 2), kn.get("cw_kernel", 7)
        window = g + c - 1
        return hwo * (m * k * k + m * n // g + n * window), m * k * k + m * n // g + g * window
    if kind == "shuffle":
        g, mid = kn.get("groups", 4), kn.get("mid", 1.0)
        mm = g * max(1, math.ceil(mid * m / g - 1e-9))
        return hw * m * mm // g + hwo * (mm * k * k + mm * n // g), m * mm // g + mm * k * k + mm * n // g
    if kind == "cp":
        r = max(1, math.floor(kn.get("rank", 0.5) * n + 0.5 + 1e-9))
        return hw * m * r + ho * w * r * k + hwo * (r * k + r * n), r * (m + 2 * k + n)
    if kind == "tucker":
        rank = kn.get("rank", 0.25)
        r1, r2 = max(1, math.ceil(rank * m - 1e-9)), max(1, math.ceil(rank * n - 1e-9))
        return hw * m * r1 + hwo * (r1 * r2 * k * k + r2 * n), m * r1 + r1 * r2 * k * k + r2 * n
    # the dilated kinds: dilation changes neither the taps (k^2) nor the output size
    if kind == "dsc":
        return hwo * (m * k * k + m * n), m * k * k + m * n
    if kind == "scc":
        g = kn.get("groups", 2)
        return hwo * (m * k * k + n * m // g), m * k * k + n * m // g
    if kind == "bsconv_u":
        return hw * m * n + hwo * n * k * k, m * n + n * k * k
    if kind == "bsconv_s":
        mid = min(m, max(4, math.ceil(kn.get("p", 0.25) * m)))
        return hw * (m * mid + mid * n) + hwo * n * k * k, m * mid + mid * n + n * k * k
    raise AssertionError(kind)


SHAPES = [(24, 40, 14, 16), (48, 16, 9, 9), (16, 48, 8, 11)]  # (M, N, H, W): shrinking, widening, odd sizes


@pytest.mark.parametrize("kind,knobs", CASES + DILATION_CASES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("shape", SHAPES)
def test_fvcore_count_of_the_bare_conv_equals_formula(kind, knobs, stride, kernel, shape):
    m, n, h, w = shape
    conv = make_conv(kind, m, n, kernel, stride, **knobs)
    macs, params = formula(kind, m, n, kernel, stride, h, w, **knobs)
    cost = count_cost(conv, (m, h, w))
    assert (cost.macs, cost.params) == (macs, params)
    defaults = {k.name: k.default for k in CONV_TYPES[kind].knobs}
    assert CONV_TYPES[kind].macs(m, n, kernel, stride, (h, w), {**defaults, **knobs}) == macs
    assert CONV_TYPES[kind].params(m, n, kernel, {**defaults, **knobs}) == params
    with torch.no_grad():
        assert conv(torch.zeros(1, m, h, w)).shape == (1, n, out(h, kernel, stride), out(w, kernel, stride))


def unit_spec(kind, knobs, kernel, stride, size=20):
    """A net whose one separable block holds the conv unit 24 -> 40 (stem 24 channels, stride 1)."""
    return ArchSpec(in_channels=3, num_classes=5, resolution=size, stem=StemSpec(24, 3, 1, "relu"),
                    stages=(StageSpec("separable", 40, 1, stride, kernel, conv=ConvSpec.of(kind, **knobs)),),
                    head=HeadSpec(0, "relu", 0.0))


BN_CASES = [("dscw", {"with_bn": True, "activation": "relu6"}), ("gcwconv", {"groups": 4, "with_bn": True}),
            ("shuffle", {"mid": 0.5, "with_bn": True, "activation": "relu"})]


def inner_bn_macs(kind, knobs, m, kernel, stride, size):
    """fvcore's eval-mode batch-norm (2 per element) between the parts: after the depthwise conv (dscw, gcwconv)
    or after the first grouped pointwise conv, at the input size (shuffle)."""
    if not knobs.get("with_bn"):
        return 0
    if kind == "shuffle":
        g = knobs.get("groups", 4)
        return 2 * g * max(1, math.ceil(knobs.get("mid", 1.0) * m / g - 1e-9)) * size * size
    return 2 * m * out(size, kernel, stride) ** 2


@pytest.mark.parametrize("kind,knobs", CASES[::2] + DILATION_CASES[::2] + BN_CASES)
@pytest.mark.parametrize("kernel,stride", [(1, 2), (3, 1), (5, 2)])
def test_fvcore_count_inside_a_built_network_equals_formula(kind, knobs, kernel, stride):
    spec = unit_spec(kind, knobs, kernel, stride)
    model = build_model(spec).eval()
    with torch.no_grad():
        analysis = flop_analysis(model, (3, 20, 20))
        unit = model.stages[0][0].body[0]
        name = next(n for n, mod in model.named_modules() if mod is unit)
        macs = analysis.by_module()[name]
    expected, params = formula(kind, 24, 40, kernel, stride, 20, 20, **knobs)
    bn = inner_bn_macs(kind, knobs, 24, kernel, stride, 20)
    assert macs == expected + bn
    bn_area = 20 * 20 if kind == "shuffle" else out(20, kernel, stride) ** 2
    assert sum(p.numel() for p in unit.parameters()) == params + bn // bn_area  # 2 affine params per BN channel
    cost = spec_cost(spec)
    assert (cost.macs, cost.params) == (count_cost(model, (3, 20, 20)).macs, count_cost(model, (3, 20, 20)).params)


# ---- outputs against one dense k x k conv (float64) --------------------------------------------------------------

def rand64(*shape):
    return torch.randn(*shape, dtype=torch.float64, generator=GEN)


GEN = torch.Generator().manual_seed(0)


def randomise(conv):
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, dtype=p.dtype, generator=GEN))
    return conv


def channelwise_matrix(weight, in_channels, stride):
    """N x M matrix of a channel-wise conv: filter f at position l reads channels l s - p + j (p = (d - 1) // 2)."""
    filters, window = weight.shape
    positions = in_channels // stride
    pad = (window - 1) // 2
    a = torch.zeros(filters * positions, in_channels, dtype=weight.dtype)
    for f in range(filters):
        for pos in range(positions):
            for j in range(window):
                c = pos * stride - pad + j
                if 0 <= c < in_channels:
                    a[f * positions + pos, c] += weight[f, j]
    return a


def block_diagonal(weight, groups):
    """The dense N x M matrix of a g-group 1x1 conv weight (N x M/g x 1 x 1)."""
    n, per = weight.shape[0], weight.shape[1]
    dense = torch.zeros(n, per * groups, dtype=weight.dtype)
    out_per = n // groups
    for g in range(groups):
        dense[g * out_per:(g + 1) * out_per, g * per:(g + 1) * per] = weight[g * out_per:(g + 1) * out_per, :, 0, 0]
    return dense


def shuffle_matrix(channels, groups):
    """Channel shuffle as a permutation matrix: output a * g + b is input b * (C / g) + a."""
    s = torch.zeros(channels, channels, dtype=torch.float64)
    per = channels // groups
    for a in range(per):
        for b in range(groups):
            s[a * groups + b, b * per + a] = 1.0
    return s


def dense_equivalent(kind, conv, m, knobs):
    """The N x M x k x k weight of the single conv that `conv` (no BN, no activation) computes."""
    if kind == "dscw":
        dw = conv.dw.weight[:, 0]
        n = conv.pw.filters * (m // conv.pw.channel_stride)
        a = channelwise_matrix(conv.pw.weight, m, conv.pw.channel_stride)
        assert a.shape[0] == n
        return a[:, :, None, None] * dw[None]
    if kind == "gcwconv":
        g = knobs.get("groups", 2)
        p = block_diagonal(conv.pw.weight, g)
        a = channelwise_matrix(conv.cw.weight, p.shape[0], g)
        return (a @ p)[:, :, None, None] * conv.dw.weight[:, 0][None]
    if kind == "shuffle":
        g = knobs.get("groups", 4)
        q1 = block_diagonal(conv.pw1.weight, g)
        q2 = block_diagonal(conv.pw2.weight, g)
        s = shuffle_matrix(q1.shape[0], g)
        return torch.einsum("nc,cij,cm->nmij", q2, conv.dw.weight[:, 0], s @ q1)
    if kind == "cp":
        u, d = conv.pw1.weight[:, :, 0, 0], conv.pw2.weight[:, :, 0, 0]  # R x M, N x R
        v, h = conv.dwh.weight[:, 0, :, 0], conv.dww.weight[:, 0, 0, :]  # R x k, R x k
        return torch.einsum("nr,ri,rj,rm->nmij", d, v, h, u)
    if kind == "tucker":
        c1, c2 = conv.pw1.weight[:, :, 0, 0], conv.pw2.weight[:, :, 0, 0]
        return torch.einsum("na,abij,bm->nmij", c2, conv.core.weight, c1)
    raise AssertionError(kind)


REFERENCE_CASES = [c for c in CASES if c[0] != "dscw"] + [
    ("dscw", {"cw_kernel": 3}), ("dscw", {"cw_kernel": 7})]


@pytest.mark.parametrize("kind,knobs", REFERENCE_CASES)
@pytest.mark.parametrize("m,n", [(16, 24), (24, 16), (16, 16)])
@pytest.mark.parametrize("kernel,stride", [(1, 1), (3, 2), (5, 1)])
def test_output_equals_one_dense_conv(kind, knobs, m, n, kernel, stride):
    conv = randomise(make_conv(kind, m, n, kernel, stride, **knobs).double())
    x = rand64(2, m, 9, 10)
    weight = dense_equivalent(kind, conv, m, knobs)
    assert weight.shape == (n, m, kernel, kernel)
    expected = F.conv2d(x, weight, stride=stride, padding=kernel // 2)
    torch.testing.assert_close(conv(x), expected)


@pytest.mark.parametrize("kind", DILATED_KINDS)
@pytest.mark.parametrize("dilation", [2, 3])
@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (5, 2)])
def test_dilated_depthwise_part_equals_a_dilated_dense_conv(kind, dilation, kernel, stride):
    m, n = 8, 12
    conv = randomise(make_conv(kind, m, n, kernel, stride, dilation=dilation).double())
    x = rand64(2, m, 11, 12)
    pad = dilation * (kernel // 2)
    if kind in ("dsc", "scc"):  # depthwise first: W[n, m] = P[n, m] D[m]
        pw = conv.pw.weight[:, :, 0, 0] if kind == "dsc" else conv.pw.dense_weight()[:, :, 0, 0]
        weight = pw[:, :, None, None] * conv.dw.weight[:, 0][None]
    else:  # pointwise first: W[n, m] = P[n, m] B[n]
        pw = conv.pw.weight[:, :, 0, 0] if kind == "bsconv_u" else (
            conv.pw2.weight[:, :, 0, 0] @ conv.pw1.weight[:, :, 0, 0])
        weight = pw[:, :, None, None] * conv.dw.weight[:, 0][:, None]
    expected = F.conv2d(x, weight, stride=stride, padding=pad, dilation=dilation)
    y = conv(x)
    assert y.shape[-2:] == (out(11, kernel, stride), out(12, kernel, stride))  # "same": the undilated size
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("kind,knobs", [
    ("dscw", {"cw_kernel": 3}), ("gcwconv", {"groups": 2, "cw_kernel": 3, "with_bn": True, "activation": "silu"}),
    ("shuffle", {"groups": 2, "mid": 0.5, "with_bn": True, "activation": "silu"}), ("cp", {"rank": 0.5}),
    ("tucker", {"rank": 0.5}), ("dsc", {"dilation": 2}), ("scc", {"dilation": 3, "groups": 2}),
    ("bsconv_u", {"dilation": 2}), ("bsconv_s", {"dilation": 2, "p": 0.5}),
])
@pytest.mark.parametrize("stride", [1, 2])
def test_gradients_are_exact(kind, knobs, stride):
    conv = randomise(make_conv(kind, 4, 6, 3, stride, **knobs).double()).eval()
    x = rand64(1, 4, 5, 6).requires_grad_()
    names = [name for name, _ in conv.named_parameters()]

    def run(inp, *weights):
        return torch.func.functional_call(conv, dict(zip(names, weights, strict=True)), (inp,))

    weights = tuple(p.detach().clone().requires_grad_() for p in conv.parameters())
    assert torch.autograd.gradcheck(run, (x, *weights))


# ---- rules ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,args,knobs,needle", [
    ("gcwconv", (16, 24, 3), {"groups": 3}, "gcwconv: groups=3 must divide in_channels=16 and out_channels=24; "
                                            "valid groups: 1, 2, 4, 8"),
    ("shuffle", (12, 20, 3), {"groups": 8}, "shuffle: groups=8 must divide in_channels=12 and out_channels=20; "
                                            "valid groups: 1, 2, 4"),
    ("dscw", (8, 8, 3), {"cw_kernel": 4}, "dscw.cw_kernel=4: must be an odd positive integer"),
    ("gcwconv", (8, 8, 3), {"cw_kernel": 0}, "gcwconv.cw_kernel=0: must be an odd positive integer"),
    ("cp", (8, 8, 3), {"rank": 0}, "cp.rank=0: must be a number in (0, 1]"),
    ("tucker", (8, 8, 3), {"rank": 1.5}, "tucker.rank=1.5: must be a number in (0, 1]"),
    ("shuffle", (8, 8, 3), {"mid": 0.0}, "shuffle.mid=0.0: must be a number in (0, 1]"),
    ("dsc", (8, 8, 3), {"dilation": 4}, "dsc.dilation=4: must be 1, 2 or 3"),
    ("scc", (8, 8, 3), {"dilation": True}, "scc.dilation=True: must be 1, 2 or 3"),
    ("cp", (8, 8, 3), {"dilation": 2}, "cp: unknown knob(s) dilation; valid knobs: rank"),
])
def test_configurations_that_do_not_fit_name_the_rule_in_one_line(kind, args, knobs, needle):
    with pytest.raises(ConvConfigError) as err:
        make_conv(kind, *args, **knobs)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_rank_and_width_rounding_rules():
    from dsearch.model.layers import cp_rank, dscw_geometry, shuffle_mid_channels, tucker_ranks

    assert cp_rank(10, 0.25) == 3  # 2.5 rounds half up
    assert cp_rank(10, 0.24) == 2 and cp_rank(7, 0.01) == 1
    assert cp_rank(15, 0.1) == 2  # 1.5000000000000002 in floats, 1.5 by the rule: up
    assert tucker_ranks(96, 24, 0.25) == (24, 6)
    assert tucker_ranks(10, 3, 0.25) == (3, 1)  # ceil(2.5), ceil(0.75)
    assert tucker_ranks(30, 30, 0.1) == (3, 3)  # 3.0000000000000004 in floats: not ceil'ed up to 4
    assert shuffle_mid_channels(96, 0.25, 4) == 24 and shuffle_mid_channels(20, 0.25, 4) == 8
    assert dscw_geometry(144, 32) == (2, 9) and dscw_geometry(576, 160) == (5, 18) and dscw_geometry(16, 16) == (1, 1)


def test_dilation_one_is_left_out_of_specs_so_old_fingerprints_hold():
    plain = ConvSpec.of("dsc", with_bn=True, activation="relu6")
    assert ConvSpec.of("dsc", with_bn=True, activation="relu6", dilation=1) == plain
    assert "dilation" not in plain.to_dict()
    dilated = ConvSpec.of("scc", dilation=2)
    assert dilated.to_dict()["dilation"] == 2
    spec = with_conv(preset("mobilenet_v2", width=0.35), "scc", dilation=3)
    again = ArchSpec.from_json(spec.to_json())
    assert again == spec and again.stages[2].conv.knob_dict["dilation"] == 3
    assert "scc(g2,o0.5,d3)" in spec.summary()
    assert "dsc k3" in preset("mobilenet_v2").summary()  # the published net's summary is unchanged


def test_summary_shows_each_kinds_abbreviated_knobs():
    spec = with_conv(preset("resnet20"), "gcwconv", groups=4, cw_kernel=3)
    assert "gcwconv(g4,c3) k3" in spec.summary()
    assert "tucker(r0.5)" in with_conv(preset("resnet20"), "tucker", rank=0.5).summary()
    assert "shuffle(g4,m1)" in with_conv(preset("resnet20"), "shuffle").summary()


# ---- whole networks, registry-driven lists and the CLI -----------------------------------------------------------

@pytest.mark.parametrize("kind", NEW_KINDS)
def test_mobilenet_v2_with_each_new_kind_is_valid_and_counted(kind):
    spec = with_conv(preset("mobilenet_v2", width=0.5, num_classes=10), kind)
    cost = spec_cost(spec, 32)
    ref = count_cost(build_model(spec), (3, 32, 32))
    assert (cost.macs, cost.params) == (ref.macs, ref.params)
    assert spec_cost(spec).mflops > 0


def test_registry_drives_baselines_labels_and_colours():
    from dsearch.analysis import baselines, dashboard

    assert set(baselines.KINDS) == set(CONV_TYPES) - {"regular"}
    assert baselines.KINDS[:4] == ("dsc", "bsconv_u", "bsconv_s", "scc")  # the original four keep their order
    labels = {kind: dashboard.kind_label(kind) for kind in CONV_TYPES}
    assert labels["dsc"] == "DSC" and labels["dscw"] == "DWSCW" and labels["tucker"] == "Tucker"
    colours = [dashboard.kind_colour(kind) for kind in CONV_TYPES]
    assert len(set(colours)) == len(colours)  # every registered kind has its own colour


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_cli_cost_prints_per_layer_costs_for_each_new_kind(kind, capsys):
    from dsearch.cli import main

    assert main(["cost", "mobilenet_v2", "--conv", kind, "--resolution", "32", "--width", "0.35"]) == 0
    text = capsys.readouterr().out
    spec = with_conv(preset("mobilenet_v2", width=0.35), kind)
    assert f"{spec_cost(spec, 32).mflops:.2f} MFLOPs at 32x32" in text
    assert "#flops" in text


# ---- the survey space ------------------------------------------------------------------------------------------

def test_survey_space_offers_every_kind_and_samples_each_new_one():
    assert "survey" in available_spaces()
    space = load_space("survey")
    offered = {kind for st in space.stages for kind in st.conv}
    assert offered == set(CONV_TYPES)
    for kind in DILATED_KINDS:
        assert {1, 2, 3} <= set(space.knob_choices(kind).get("dilation", ())), kind
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen, dilations, specs = set(), set(), []
    for _ in range(30):
        trial = study.ask()
        try:
            spec = sample(space, trial, 3, 10)
        except ArchSpecError as err:
            raise AssertionError(f"the survey space sampled an invalid architecture: {err}") from None
        study.tell(trial, 0.0)
        specs.append(spec)
        for st in spec.stages:
            seen.add(st.conv.kind)
            dilations.add(st.conv.knob_dict.get("dilation", 1))
    assert set(NEW_KINDS) <= seen
    assert dilations == {1, 2, 3}
    # every new kind builds and is counted exactly (at a small size to keep it quick)
    for kind in NEW_KINDS:
        spec = next(s for s in specs if any(st.conv.kind == kind for st in s.stages))
        cost, ref = spec_cost(spec, 32), count_cost(build_model(spec), (3, 32, 32))
        assert (cost.macs, cost.params) == (ref.macs, ref.params), spec.summary()


def test_mobile_space_is_unchanged():
    space = load_space("mobile")
    offered = {kind for st in space.stages for kind in st.conv}
    assert offered == {"regular", "dsc", "bsconv_u", "bsconv_s", "scc"}
    assert all("dilation" not in space.knob_choices(kind) for kind in offered)


# ---- export ----------------------------------------------------------------------------------------------------

def survey_spec() -> ArchSpec:
    """Every new kind and the dilated kinds, with knobs away from their defaults."""
    return ArchSpec(
        in_channels=3, num_classes=7, resolution=32, name="survey-mixed",
        # total stride 8, residual additions on the last maps: the .pt2 and ONNX programs take 9 pixels and more
        stem=StemSpec(16, 3, 2, "relu6"),
        stages=(
            StageSpec("separable", 24, 1, 1, 3, conv=ConvSpec.of("dscw", cw_kernel=3, with_bn=True,
                                                                 activation="relu6")),
            StageSpec("inverted_residual", 24, 2, 2, 5, expansion=3.0,
                      conv=ConvSpec.of("gcwconv", groups=4, cw_kernel=5, with_bn=True, activation="relu6")),
            StageSpec("inverted_residual", 32, 1, 1, 3, expansion=2.0,
                      conv=ConvSpec.of("shuffle", groups=4, mid=0.5, with_bn=True, activation="relu6")),
            StageSpec("separable", 40, 1, 2, 5, conv=ConvSpec.of("cp", rank=0.25)),
            StageSpec("separable", 40, 1, 1, 3, conv=ConvSpec.of("tucker", rank=0.5)),
            StageSpec("separable", 48, 1, 1, 3, conv=ConvSpec.of("dsc", dilation=2, with_bn=True)),
            StageSpec("separable", 48, 1, 1, 5, conv=ConvSpec.of("scc", dilation=3, groups=4)),
            StageSpec("separable", 48, 1, 1, 3, conv=ConvSpec.of("bsconv_u", dilation=2)),
            StageSpec("separable", 56, 1, 1, 3, conv=ConvSpec.of("bsconv_s", dilation=3, p=0.5)),
        ),
        head=HeadSpec(64, "relu6", 0.2),
    )


@pytest.mark.slow
def test_export_round_trip_of_every_new_kind_without_dsearch(tmp_path):
    spec = survey_spec()
    model = build_model(spec).eval()
    state = randomized_state(model)
    model.load_state_dict(state)
    out_dir = tmp_path / "out"
    onnx = all(__import__("importlib").util.find_spec(m) for m in ("onnx", "onnxscript"))
    result = export_spec(spec, out_dir, state, onnx=onnx, torch_export=True, torchscript=True)
    assert {"model.py", "weights.pt", "model.pt2", "model.ts"} <= set(result.files)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.save(x, out_dir / "x.pt")
    proc = subprocess.run([sys.executable, "-c", STANDALONE], cwd=out_dir, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["dsearch_loaded"] is False
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(torch.load(out_dir / "y.pt", weights_only=True), expected, rtol=1e-4, atol=1e-4)
    cost = spec_cost(spec)
    assert (facts["macs"], facts["params"]) == (cost.macs, cost.params)
    y = torch.randn(2, 3, 24, 40)  # another batch and image size than the export's
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(str(out_dir / "model.pt2")).module()(y), model(y),
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(torch.jit.load(str(out_dir / "model.ts"))(y), model(y), rtol=1e-4, atol=1e-4)
    if onnx and __import__("importlib").util.find_spec("onnxruntime"):
        import onnxruntime

        (logits,) = onnxruntime.InferenceSession(str(out_dir / "model.onnx")).run(None, {"input": y.numpy()})
        torch.testing.assert_close(torch.from_numpy(logits), model(y).detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_model_py_of_mobilenet_v2_with_each_new_kind_matches(kind, tmp_path):
    spec = with_conv(preset("mobilenet_v2", width=0.35, num_classes=10), kind).replace(resolution=32)
    model = build_model(spec).eval()
    state = randomized_state(model)
    model.load_state_dict(state)
    result = export_spec(spec, tmp_path, state)
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    standalone = import_model_file(tmp_path / "model.py").build_model(weights=str(tmp_path / "weights.pt")).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(standalone(x), model(x), rtol=1e-5, atol=1e-5)


# ---- the proxy's fast path -------------------------------------------------------------------------------------

FAST_CASES = [("dscw", {"cw_kernel": 3, "with_bn": True, "activation": "relu6"}), ("dscw", {}),
              ("gcwconv", {"groups": 4}), ("dsc", {"dilation": 2}), ("dsc", {"dilation": 3, "with_bn": True}),
              ("scc", {"dilation": 2}), ("bsconv_u", {"dilation": 3}), ("bsconv_s", {"dilation": 2})]


@pytest.mark.parametrize("kind,knobs", FAST_CASES)
@pytest.mark.parametrize("m,n,kernel,stride,size", [(24, 16, 3, 2, 14), (48, 16, 5, 1, 7), (32, 32, 3, 1, 2),
                                                    (16, 48, 7, 2, 4)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_proxy_fast_path_is_exact(kind, knobs, m, n, kernel, stride, size, dtype):
    from copy import deepcopy

    from torch import nn

    from dsearch.training.fastpath import specialise

    plain = randomise(make_conv(kind, m, n, kernel, stride, **knobs).to(dtype))
    net = nn.Sequential(deepcopy(plain))
    forms = specialise(net, m, size)
    if "dilation" in knobs:
        assert any(f.startswith("dilated") for f in forms), forms
    layout = torch.channels_last if dtype == torch.float32 else torch.contiguous_format  # float32: native kernels
    net, plain = net.to(memory_format=layout), plain.to(memory_format=layout)
    x = torch.randn(3, m, size, size, dtype=dtype, generator=GEN).to(memory_format=layout)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = net(xa), plain(xb)
    tol = {} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(ya, yb, **tol)
    grad = torch.randn(ya.shape, dtype=dtype, generator=GEN)
    ya.backward(grad)
    yb.backward(grad)
    torch.testing.assert_close(xa.grad, xb.grad, **tol)
    grads = {name.removeprefix("0."): p.grad for name, p in net.named_parameters()}
    for name, p in plain.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, **tol)
    if dtype == torch.float32:  # counters see the architecture (count_cost feeds a float32 input)
        assert count_cost(net, (m, size, size)) == count_cost(plain, (m, size, size))


@pytest.mark.parametrize("kind,knobs", [("dscw", {}), ("dscw", {"cw_kernel": 1}), ("gcwconv", {"groups": 4})])
def test_channelwise_conv_runs_the_map_it_is_counted_as(kind, knobs):
    conv = randomise(make_conv(kind, 24, 40, 3, 1, **knobs).double())
    x = rand64(2, 24, 6, 7)
    with torch.no_grad():
        traced = torch.jit.trace(conv, x, check_trace=False)  # the Conv3d form, as fvcore sees it
        assert any(n.kind() == "aten::_convolution" and len(list(n.inputs())[1].type().sizes() or []) == 5
                   for n in traced.inlined_graph.nodes())
        torch.testing.assert_close(traced(x), conv(x))
