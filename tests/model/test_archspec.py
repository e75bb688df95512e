"""ArchSpec JSON round trips, validation messages, and the builder."""
import json

import pytest
import torch

from dsearch import ArchSpec, ArchSpecError, ConvSpec, StageSpec, StemSpec, build_model, preset, with_conv
from dsearch.model.ops import CONV_TYPES


def all_specs():
    for name in ("mobilenet_v2", "resnet20"):
        base = preset(name, num_classes=10)
        yield base
        for kind in CONV_TYPES:
            yield with_conv(base, kind)
    yield with_conv(preset("mobilenet_v2", width=0.5), "scc", groups=4, overlap=1 / 3)


@pytest.mark.parametrize("spec", list(all_specs()), ids=lambda s: s.name)
def test_json_round_trip_is_exact(spec):
    text = spec.to_json()
    again = ArchSpec.from_json(text)
    assert again == spec
    assert hash(again) == hash(spec)
    assert again.to_json() == text
    assert json.loads(text)["schema"] == "dsearch.archspec/1"


def test_round_trip_keeps_float_knobs_bit_exact():
    spec = with_conv(preset("resnet20"), "scc", groups=2, overlap=1 / 3)
    again = ArchSpec.from_json(spec.to_json())
    assert again.stages[0].conv.knob_dict["overlap"] == 1 / 3


def test_conv_defaults_are_filled_in():
    conv = ConvSpec.of("scc")
    assert conv.knob_dict == {"activation": None, "groups": 2, "overlap": 0.5, "with_bn": False}
    assert ConvSpec.of("scc", overlap=0.5, groups=2) == conv


def _spec_dict(**stage_changes):
    data = preset("resnet20").to_dict()
    data["stages"][1].update(stage_changes)
    return data


@pytest.mark.parametrize("change,needle", [
    ({"block": "dense"}, "stages[1].block: unknown block 'dense'; valid: basic, inverted_residual, separable"),
    ({"stride": 3}, "stages[1].stride: must be 1 or 2"),
    ({"out_channels": "wide"}, "stages[1].out_channels: must be an integer, got 'wide'"),
    ({"conv": {"kind": "fancy"}}, "stages[1].conv: unknown conv kind 'fancy'"),
    ({"conv": {"kind": "scc", "groups": 3}}, "stages[1].blocks[0].conv1: scc: groups=3 must divide in_channels=16"),
    ({"kernel": 4}, "stages[1].kernel: must be 1, 3, 5 or 7"),
    ({"colour": "red"}, "stages[1]: unknown field(s) colour"),
    ({"activation": "gelu"}, "stages[1].activation: unknown activation"),
])
def test_invalid_specs_name_field_and_rule(change, needle):
    with pytest.raises(ArchSpecError) as err:
        ArchSpec.from_dict(_spec_dict(**change))
    assert needle in str(err.value)


def test_missing_and_bad_top_level_fields():
    data = preset("resnet20").to_dict()
    del data["stem"]
    with pytest.raises(ArchSpecError, match="stem: required field is missing"):
        ArchSpec.from_dict(data)
    with pytest.raises(ArchSpecError, match="schema"):
        ArchSpec.from_dict({**preset("resnet20").to_dict(), "schema": "other/9"})
    with pytest.raises(ArchSpecError, match="not valid JSON"):
        ArchSpec.from_json("{")
    with pytest.raises(ArchSpecError, match="num_classes: must be an integer >= 2"):
        preset("resnet20", num_classes=1)


def test_specs_are_frozen():
    spec = preset("resnet20")
    with pytest.raises(AttributeError):
        spec.num_classes = 3  # type: ignore[misc]


@pytest.mark.parametrize("spec", list(all_specs()), ids=lambda s: s.name)
def test_built_model_runs_forward_and_backward(spec):
    model = build_model(spec).to(memory_format=torch.channels_last)
    x = torch.randn(2, spec.in_channels, 32, 32).to(memory_format=torch.channels_last)
    y = model(x)
    assert y.shape == (2, spec.num_classes)
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_blocks_follow_the_spec():
    spec = ArchSpec(
        in_channels=1, num_classes=5, resolution=28, stem=StemSpec(8, 3, 1, "relu"),
        stages=(StageSpec("separable", 16, 2, 2, 5, 1.0, ConvSpec.of("bsconv_u"), "relu", True),),
    )
    model = build_model(spec)
    first, second = model.stages[0]
    assert not first.use_residual and second.use_residual  # stride 2 / width change vs same shape
    assert first.body[0].dw.stride == (2, 2) and first.body[0].dw.kernel_size == (5, 5)
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 5)


def test_mobilenet_v2_structure_matches_torchvision():
    import torchvision

    ours = build_model(preset("mobilenet_v2"))
    ref = torchvision.models.mobilenet_v2()
    shapes = sorted(tuple(p.shape) for p in ours.parameters())
    assert shapes == sorted(tuple(p.shape) for p in ref.parameters())
