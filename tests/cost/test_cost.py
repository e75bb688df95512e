"""fvcore counts against docs/concepts.md's formulas and torchvision's MobileNetV2; the analytic model vs fvcore."""
import math

import pytest
import torch
import torchvision
from torch import nn

from dsearch import build_model, count_cost, preset, spec_cost, with_conv
from dsearch.cost import UncountedOpError
from dsearch.model.ops import CONV_TYPES, make_conv


def out(size, k, s):
    return (size + 2 * (k // 2) - k) // s + 1


def formula(kind, m, n, k, s, h, w, **kn):
    """docs/concepts.md's MAC and parameter formulas, written out independently of dsearch.model.ops."""
    hw, hw_out = h * w, out(h, k, s) * out(w, k, s)
    if kind == "regular":
        return hw_out * n * m * k * k, n * m * k * k
    if kind == "dsc":
        return hw_out * (m * k * k + m * n), m * k * k + m * n
    if kind == "bsconv_u":
        return hw * m * n + hw_out * n * k * k, m * n + n * k * k
    if kind == "bsconv_s":
        mid = min(m, max(4, math.ceil(kn.get("p", 0.25) * m)))
        return hw * (m * mid + mid * n) + hw_out * n * k * k, m * mid + mid * n + n * k * k
    if kind == "scc":
        g = kn.get("groups", 2)
        return hw_out * (m * k * k + n * m // g), m * k * k + n * m // g
    raise AssertionError(kind)


CASES = [
    ("regular", {}), ("dsc", {}), ("bsconv_u", {}), ("bsconv_s", {}), ("bsconv_s", {"p": 0.5}),
    ("scc", {"groups": 4, "overlap": 0.5}), ("scc", {"groups": 2, "overlap": 1 / 3}), ("scc", {"groups": 1}),
]


@pytest.mark.parametrize("kind,knobs", CASES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel,size", [(3, 14), (5, 15), (7, 9)])
def test_fvcore_count_equals_formula(kind, knobs, stride, kernel, size):
    m, n = 24, 40
    conv = make_conv(kind, m, n, kernel, stride, **knobs)
    macs, params = formula(kind, m, n, kernel, stride, size, size + 2, **knobs)
    cost = count_cost(conv, (m, size, size + 2))
    assert cost.macs == macs
    assert cost.params == params
    assert CONV_TYPES[kind].macs(m, n, kernel, stride, (size, size + 2), {**_defaults(kind), **knobs}) == macs


def _defaults(kind):
    return {k.name: k.default for k in CONV_TYPES[kind].knobs}


SURVEY_KINDS = {"dscw", "gcwconv", "shuffle", "cp", "tucker"}  # checked the same way in tests/test_convs_survey.py


def test_all_kinds_are_covered():
    assert {kind for kind, _ in CASES} | SURVEY_KINDS == set(CONV_TYPES)


def test_inner_batch_norm_is_counted_by_fvcore_rule():
    m, n, size = 16, 32, 10
    conv = make_conv("bsconv_u", m, n, 3, 1, with_bn=True)
    macs, params = formula("bsconv_u", m, n, 3, 1, size, size)
    # fvcore counts eval-mode batch-norm with affine as 2 per element; its params are 2 per channel
    assert count_cost(conv, (m, size, size)).macs == macs + 2 * n * size * size
    assert count_cost(conv, (m, size, size)).params == params + 2 * n


@pytest.mark.parametrize("width", [0.35, 0.5, 0.75, 1.0, 1.4])
def test_mobilenet_v2_matches_torchvision(width):
    ours = spec_cost(preset("mobilenet_v2", width=width))
    ref = count_cost(torchvision.models.mobilenet_v2(width_mult=width), (3, 224, 224))
    ref_params = sum(p.numel() for p in torchvision.models.mobilenet_v2(width_mult=width).parameters())
    assert abs(ours.macs / ref.macs - 1) < 0.02
    assert abs(ours.params / ref_params - 1) < 0.01


def test_mobilenet_v2_headline_figure():
    cost = spec_cost(preset("mobilenet_v2"))
    # ~300 M multiply-accumulates in the convs and linear layer, plus fvcore's batch-norm count
    assert 300 < cost.mflops < 320
    assert cost.resolution == (224, 224)


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet20"])
@pytest.mark.parametrize("kind", sorted(CONV_TYPES))
def test_every_preset_and_kind_is_fully_counted(name, kind):
    spec = with_conv(preset(name, num_classes=10), kind)
    model = build_model(spec)
    cost = count_cost(model, (3, 32, 32))  # raises UncountedOpError if fvcore skipped an op
    assert cost.params == sum(p.numel() for p in model.parameters())
    assert cost.macs > 0


def test_resnet20_parameter_count():
    # 3x3 convs (stem + 18 in the blocks), 1x1 projection shortcuts with BN, BN everywhere, a 64 -> 10 linear
    convs = 3 * 16 * 9 + 16 * 16 * 9 * 6 + (16 * 32 * 9 + 32 * 32 * 9 * 5) + (32 * 64 * 9 + 64 * 64 * 9 * 5)
    shortcuts = 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64
    bns = 2 * 16 + 2 * (16 * 6 + 32 * 6 + 64 * 6)
    linear = 64 * 10 + 10
    assert spec_cost(preset("resnet20")).params == convs + shortcuts + bns + linear


def test_unknown_costly_op_fails_loudly():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return torch.cumsum(y, dim=1)

    with pytest.raises(UncountedOpError, match="aten::cumsum"):
        count_cost(Gated(), (3, 8, 8))


def test_spec_cost_is_cached_and_resolution_aware():
    spec = preset("mobilenet_v2", width=0.5, num_classes=10, in_channels=1)
    spec_cost.cache_clear()
    at_224 = spec_cost(spec)
    assert spec_cost(spec) is at_224
    assert spec_cost.cache_info().hits == 1
    at_28 = spec_cost(spec, 28)
    assert at_28.resolution == (28, 28)
    assert at_28.macs < at_224.macs / 40


def test_count_cost_restores_training_mode():
    model = build_model(preset("resnet20"))
    model.train()
    count_cost(model, (3, 32, 32))
    assert model.training


def _fvcore(spec, resolution):
    return count_cost(build_model(spec), (spec.in_channels, resolution, resolution))


@pytest.mark.parametrize("space_name,resolutions", [("mobile", (224, 28, 37, 64)), ("residual", (32, 28, 17)),
                                                    ("tiny", (32, 19)), ("survey", (32, 45))])
def test_analytic_cost_equals_fvcore_on_space_samples(space_name, resolutions, tiny_space):
    import optuna

    from dsearch.search.spaces import load_space, sample

    space = load_space(str(tiny_space) if space_name == "tiny" else space_name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=11))
    for i in range(6):
        spec = sample(space, study.ask(), in_channels=1 + 2 * (i % 2), num_classes=10 + i)
        res = resolutions[i % len(resolutions)]
        cost, ref = spec_cost(spec, res), _fvcore(spec, res)
        assert (cost.macs, cost.params) == (ref.macs, ref.params), spec.summary()


KNOB_CASES = CASES + [(kind, {"with_bn": True}) for kind in ("dsc", "bsconv_u", "bsconv_s", "scc")] + [
    ("dsc", {"with_bn": True, "activation": "relu6"}), ("bsconv_s", {"p": 0.125, "min_mid_channels": 8})]


@pytest.mark.parametrize("kind,knobs", KNOB_CASES)
def test_analytic_cost_equals_fvcore_for_every_kind_and_knob(kind, knobs):
    # resnet20: basic blocks with projection shortcuts; the space samples cover inverted-residual blocks
    spec = with_conv(preset("resnet20", num_classes=7, in_channels=2), kind, **knobs)
    cost, ref = spec_cost(spec, 20), _fvcore(spec, 20)
    assert (cost.macs, cost.params) == (ref.macs, ref.params)
