"""The head's classifier kinds: ChannelNets' convolutional classification layer (`channelwise`) against independent
truths (a dense weight matrix built here, gradcheck in float64, fvcore's count, the costs written out below), and the
dense default, which every spec and space written before the option existed keeps, JSON and fingerprint included.
"""
import importlib.util
import json
import subprocess
import sys

import optuna
import pytest
import torch
from conftest import STANDALONE

from dsearch import ArchSpec, ConvSpec, StageSpec, StemSpec, build_model, preset, spec_cost
from dsearch.cost import count_cost
from dsearch.export.writer import export_spec, import_model_file, model_source
from dsearch.model.archspec import ArchSpecError, HeadSpec
from dsearch.model.layers import ChannelwiseClassifier
from dsearch.search.budget import Budget, params_counts, repair, single_changes
from dsearch.search.record import arch_key
from dsearch.search.resume import space_digest
from dsearch.search.spaces import SpaceError, extreme_spec, load_space, parse_space, sample, space_size

optuna.logging.set_verbosity(optuna.logging.WARNING)
GEN = torch.Generator().manual_seed(0)


def dense_matrix(weight: torch.Tensor, features: int, classes: int) -> torch.Tensor:
    """The classes x features matrix of the channel-wise classifier: row i holds the filter at columns i .. i+d-1."""
    d = features - classes + 1
    matrix = torch.zeros(classes, features, dtype=weight.dtype)
    for i in range(classes):
        for j in range(d):
            matrix[i, i + j] = weight[j]
    return matrix


@pytest.mark.parametrize("features,classes", [(16, 3), (10, 10), (9, 1), (64, 10), (1280, 1000)])
def test_outputs_equal_the_dense_equivalent_and_gradients_are_exact(features, classes):
    layer = ChannelwiseClassifier(features, classes).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, dtype=torch.float64, generator=GEN))
    assert layer.weight.numel() == features - classes + 1
    x = torch.randn(3, features, dtype=torch.float64, generator=GEN)
    matrix = dense_matrix(layer.weight.detach(), features, classes)
    torch.testing.assert_close(layer(x), x @ matrix.T)
    if features <= 64:  # gradcheck's numerical Jacobian is features x (features - classes + 1) evaluations
        x.requires_grad_()
        assert torch.autograd.gradcheck(lambda inp, w: torch.nn.functional.conv1d(inp.unsqueeze(1), w.view(1, 1, -1))
                                        .flatten(1), (x, layer.weight))
        assert torch.autograd.gradcheck(layer, (x,))
    # the weight's gradient equals the dense matrix's gradient gathered along the band
    y = torch.randn(3, classes, dtype=torch.float64, generator=GEN)
    x = x.detach()
    (layer(x) * y).sum().backward()
    dense_grad = y.T @ x  # d/dM of sum(y * x M^T)
    expected = torch.stack([sum(dense_grad[i, i + j] for i in range(classes))
                            for j in range(features - classes + 1)])
    torch.testing.assert_close(layer.weight.grad, expected)


def test_refuses_more_classes_than_features():
    with pytest.raises(ValueError, match="at least as many features as classes"):
        ChannelwiseClassifier(8, 9)


def head_spec(classifier: str, head_channels: int = 0, classes: int = 10, width: int = 24) -> ArchSpec:
    return ArchSpec(in_channels=3, num_classes=classes, resolution=20, stem=StemSpec(16, 3, 2, "relu"),
                    stages=(StageSpec("inverted_residual", width, 2, 2, 3, 3.0, ConvSpec.of("dsc", with_bn=True)),),
                    head=HeadSpec(head_channels, "relu6", 0.2, classifier))


@pytest.mark.parametrize("head_channels,classes", [(0, 10), (0, 24), (48, 10), (40, 2)])
@pytest.mark.parametrize("resolution", [20, 33])
def test_cost_equals_fvcore_and_the_written_out_formula(head_channels, classes, resolution):
    dense, cw = head_spec("dense", head_channels, classes), head_spec("channelwise", head_channels, classes)
    c = head_channels or 24
    d = c - classes + 1
    for spec in (dense, cw):
        ref = count_cost(build_model(spec), (3, resolution, resolution))
        cost = spec_cost(spec, resolution)
        assert (cost.macs, cost.params) == (ref.macs, ref.params), spec.head
    a, b = spec_cost(dense, resolution), spec_cost(cw, resolution)
    # dense: C n MACs and C n + n params; channel-wise: n d MACs and d params (d = C - n + 1); the rest is shared
    assert a.macs - b.macs == c * classes - classes * d
    assert a.params - b.params == c * classes + classes - d


def test_spec_json_keeps_old_fingerprints_and_reads_old_files_as_dense():
    spec = preset("mobilenet_v2", width=0.35, num_classes=10)
    data = spec.to_dict()
    assert "classifier" not in data["head"]  # dense is left out, so every older spec keeps its JSON and arch key
    # The fingerprint of this preset as dsearch computed it before the head had a classifier field.
    assert arch_key(spec) == OLD_MNV2_KEY
    assert ArchSpec.from_dict(data).head.classifier == "dense"
    cw = spec.replace(head=HeadSpec(spec.head.channels, spec.head.activation, spec.head.dropout, "channelwise"))
    assert json.loads(cw.to_json())["head"]["classifier"] == "channelwise"
    assert ArchSpec.from_json(cw.to_json()) == cw and arch_key(cw) != arch_key(spec)
    assert cw.summary().endswith("channelwise classifier") and "classifier" not in spec.summary()


OLD_MNV2_KEY = "f798633c64b502b5"


@pytest.mark.parametrize("change,needle", [
    ({"classifier": "conv"}, "head.classifier: unknown classifier 'conv'; valid: dense, channelwise"),
    ({"classifier": "channelwise", "classes": 30}, "head.classifier: channelwise needs at least as many features "
                                                   "as classes (30), got 24"),
])
def test_bad_classifier_names_the_field_and_the_fix(change, needle):
    with pytest.raises(ArchSpecError) as err:
        head_spec(change["classifier"], classes=change.get("classes", 10))
    assert needle in str(err.value) and "\n" not in str(err.value)
    data = head_spec("dense").to_dict()
    data["head"]["classifier"] = 3
    with pytest.raises(ArchSpecError, match="head.classifier: must be a string"):
        ArchSpec.from_dict(data)


def test_survey_space_searches_the_classifier_and_counts_it():
    space = load_space("survey")
    assert space.head_classifier == ("dense", "channelwise")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=4))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        spec = sample(space, trial, 3, 10)
        assert trial.params["head.classifier"] == spec.head.classifier
        seen.add(spec.head.classifier)
        counts = params_counts(space, trial.params, 3, 10)
        cost = spec_cost(spec)
        assert counts == (cost.macs, cost.params)
        study.tell(trial, 0.0)
    assert seen == {"dense", "channelwise"}
    assert extreme_spec(space, 3, 10).head.classifier == "channelwise"
    assert extreme_spec(space, 3, 10, cheapest=False).head.classifier == "dense"
    # 1000 classes do not fit 640 channels: the cheapest architecture keeps the dense classifier
    assert extreme_spec(space, 3, 1000).head.classifier == "dense"


TINY = {"name": "t", "resolution": 16, "stem": {"width": 8, "stride": 2},
        "stages": [{"width": [16, 24], "stride": 2, "conv": "dsc"}]}


def test_space_head_classifier_key_and_digest():
    plain = parse_space(TINY)
    assert plain.head_classifier == ("dense",)
    assert space_digest(plain) == space_digest(parse_space({**TINY, "head": {"classifier": "dense"}}))
    assert space_digest(plain) == OLD_TINY_DIGEST  # the digest of a space without the key did not change
    both = parse_space({**TINY, "head": {"classifier": ["dense", "channelwise"]}})
    assert space_digest(both) != space_digest(plain)
    assert space_size(both) == 2 * space_size(plain)
    with pytest.raises(SpaceError, match=r"head.classifier: unknown classifier 'fc'; valid: dense, channelwise"):
        parse_space({**TINY, "head": {"classifier": ["dense", "fc"]}})


OLD_TINY_DIGEST = "76c3676ea5c28afe39a5e5a50dc4e31af964670f7a8b4df7cbf575487b5c81fc"


def test_repair_may_switch_to_the_channelwise_classifier():
    space = parse_space({**TINY, "head": {"classifier": ["dense", "channelwise"]}})
    params = {"stage1.width": 24, "head.classifier": "dense"}
    changes = list(single_changes(space, params))
    assert {"stage1.width": 24, "head.classifier": "channelwise"} in changes
    # a params budget only the channel-wise classifier meets at width 24: dense 24*10+10 = 250, channel-wise 15
    dense_cost = spec_cost(sample(space, _fixed(params), 1, 10))
    cw_cost = spec_cost(sample(space, _fixed({**params, "head.classifier": "channelwise"}), 1, 10))
    assert dense_cost.params - cw_cost.params == 250 - 15
    budget = Budget(mparams=(cw_cost.params + 1) / 1e6)
    fixed, fixed_params, _ = repair(space, params, budget, 1, 10)
    assert fixed.head.classifier == "channelwise" and fixed_params["stage1.width"] == 24


class _fixed:
    def __init__(self, params):
        self.params = params

    def suggest_categorical(self, name, choices):
        return self.params[name]


def channelwise_spec() -> ArchSpec:
    return ArchSpec(in_channels=3, num_classes=7, resolution=32, name="cw-head", stem=StemSpec(16, 3, 2, "relu6"),
                    stages=(StageSpec("inverted_residual", 24, 2, 2, 3, 3.0, ConvSpec.of("dsc", with_bn=True),
                                      "relu6"),
                            StageSpec("inverted_residual", 24, 1, 1, 3, 3.0, ConvSpec.of("scc", groups=4), "relu6")),
                    head=HeadSpec(40, "relu6", 0.2, "channelwise"))


def randomized_state(model):
    g = torch.Generator().manual_seed(1)
    return {k: (torch.rand(v.shape, generator=g) + 0.5 if k.endswith("running_var") else
                torch.randn(v.shape, generator=g) * 0.3 + (1.0 if k.endswith("bn.weight") else 0.0))
            if v.is_floating_point() else v for k, v in model.state_dict().items()}


def test_model_py_stays_torch_only_and_matches(tmp_path):
    spec = channelwise_spec()
    model = build_model(spec).eval()
    state = randomized_state(model)
    model.load_state_dict(state)
    result = export_spec(spec, tmp_path, state)
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-5
    assert "class ChannelwiseClassifier" in (tmp_path / "model.py").read_text()
    assert "class ChannelwiseClassifier" not in model_source(preset("resnet20"))  # only where it is used
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.save(x, tmp_path / "x.pt")
    proc = subprocess.run([sys.executable, "-c", STANDALONE], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["dsearch_loaded"] is False
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "y.pt", weights_only=True), model(x), rtol=1e-4, atol=1e-4)
    cost = spec_cost(spec)
    assert (facts["macs"], facts["params"]) == (cost.macs, cost.params)
    module = import_model_file(tmp_path / "model.py")
    five = module.build_model(num_classes=5, weights=str(tmp_path / "weights.pt")).eval()
    assert type(five.head[-1]).__name__ == "ChannelwiseClassifier" and five.head[-1].weight.numel() == 40 - 5 + 1
    assert five(x).shape == (3, 5)
    with pytest.raises(ValueError, match="at least as many features as classes"):
        module.build_model(num_classes=41)


@pytest.mark.slow
def test_onnx_and_pt2_round_trip(tmp_path):
    spec = channelwise_spec()
    model = build_model(spec).eval()
    state = randomized_state(model)
    model.load_state_dict(state)
    onnx = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
    result = export_spec(spec, tmp_path, state, onnx=onnx, torch_export=True, torchscript=True)
    assert {"model.pt2", "model.ts"} <= set(result.files)
    y = torch.randn(2, 3, 24, 40, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(y)
        torch.testing.assert_close(torch.export.load(str(tmp_path / "model.pt2")).module()(y), expected,
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "model.ts"))(y), expected, rtol=1e-4, atol=1e-4)
    if onnx:
        import onnxruntime

        (logits,) = onnxruntime.InferenceSession(str(tmp_path / "model.onnx")).run(None, {"input": y.numpy()})
        torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=1e-4, atol=1e-4)


def test_gradients_reach_the_whole_network_through_the_channelwise_head():
    model = build_model(channelwise_spec()).train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    torch.nn.functional.cross_entropy(model(x), torch.arange(4) % 7).backward()
    assert float(model.head[-1].weight.grad.abs().sum()) > 0
    assert float(model.stem[0].weight.grad.abs().sum()) > 0
