"""Space files: loading, validation messages, sampling, size and cost range."""
import itertools

import optuna
import pytest

from dsearch import spec_cost
from dsearch.search.spaces import SpaceError, available_spaces, extreme_spec, load_space, sample, space_size

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sample_specs(space, seed, n):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    specs, params = [], []
    for _ in range(n):
        trial = study.ask()
        specs.append(sample(space, trial, 1, 10))
        params.append(trial.params)
        study.tell(trial, 0.0)
    return specs, params


def test_builtin_spaces_load():
    assert {"mobile", "residual"} <= set(available_spaces())
    assert load_space("mobile").resolution == 224
    assert load_space("residual").resolution == 32


def test_sampling_is_deterministic_per_seed_and_valid(tiny_space):
    space = load_space(str(tiny_space))
    a, _ = sample_specs(space, 7, 12)
    b, _ = sample_specs(space, 7, 12)
    c, _ = sample_specs(space, 8, 12)
    assert a == b
    assert a != c
    for spec in a:
        assert spec.resolution == 32 and spec.in_channels == 1 and spec.num_classes == 10
        assert spec.stages[0].out_channels in (8, 16) and spec.stages[1].repeats in (1, 2)


def test_parameter_names_are_readable_and_conditional(tiny_space):
    space = load_space(str(tiny_space))
    _, params = sample_specs(space, 0, 30)
    for p in params:
        for stage in ("stage1", "stage2"):
            uses_scc = p[f"{stage}.conv"] == "scc"
            assert (f"{stage}.scc_groups" in p) == uses_scc
            assert (f"{stage}.scc_overlap" in p) == uses_scc
        assert "stem.width" not in p  # fixed values are not parameters
        assert set(p) <= {"stage1.conv", "stage1.width", "stage1.kernel", "stage1.scc_groups", "stage1.scc_overlap",
                          "stage2.conv", "stage2.width", "stage2.depth", "stage2.kernel", "stage2.scc_groups",
                          "stage2.scc_overlap"}


def test_space_size_counts_distinct_architectures(tiny_space):
    space = load_space(str(tiny_space))
    # per stage: width x depth x kernel x (regular + dsc + bsconv_u + scc with 2 x 2 knob values)
    per_kind = 1 + 1 + 1 + 2 * 2
    assert space_size(space) == (2 * 1 * 2 * per_kind) * (2 * 2 * 2 * per_kind)
    # brute force: every combination of parameter values, built into specs, gives that many distinct ones
    kinds = [("regular", {}), ("dsc", {}), ("bsconv_u", {})] + [
        ("scc", {"scc_groups": g, "scc_overlap": o}) for g in (2, 4) for o in (0.0, 0.5)]
    specs = set()
    for (k1, kn1), w1, kk1, (k2, kn2), w2, d2, kk2 in itertools.product(
            kinds, (8, 16), (3, 5), kinds, (16, 32), (1, 2), (3, 5)):
        params = {"stage1.conv": k1, "stage1.width": w1, "stage1.kernel": kk1, "stage2.conv": k2,
                  "stage2.width": w2, "stage2.depth": d2, "stage2.kernel": kk2}
        params.update({f"stage1.{k}": v for k, v in kn1.items()})
        params.update({f"stage2.{k}": v for k, v in kn2.items()})
        specs.add(sample(space, Answers(params), 1, 10))
    assert len(specs) == space_size(space)


class Answers:
    """Answers suggest_categorical from a dict, checking that the asked choices contain the answer."""

    def __init__(self, params):
        self.params = params

    def suggest_categorical(self, name, choices):
        assert self.params[name] in choices
        return self.params[name]


def test_extremes_bound_every_sample():
    space = load_space("mobile")
    lo = spec_cost(extreme_spec(space, 1, 10)).macs
    hi = spec_cost(extreme_spec(space, 1, 10, cheapest=False)).macs
    specs, _ = sample_specs(space, 1, 8)
    for spec in specs:
        assert lo <= spec_cost(spec).macs <= hi


def test_mobile_space_straddles_the_default_budget():
    space = load_space("mobile")
    lo = spec_cost(extreme_spec(space, 1, 10)).mflops
    hi = spec_cost(extreme_spec(space, 1, 10, cheapest=False)).mflops
    assert lo < 100 and hi > 1000


@pytest.mark.parametrize("text,needle", [
    ("name: x\nresolution: 32\nstem: {width: 8}\nstages: [{width: 8, stride: 1, conv: fancy}]",
     "stages[0].conv: unknown conv type 'fancy'"),
    ("name: x\nresolution: 32\nstem: {width: 8}\nstages: [{width: 8, stride: 1, colour: red}]",
     "stages[0]: unknown key(s) colour"),
    ("name: x\nresolution: 32\nstem: {width: 8}\nstages: []", "stages: must be a non-empty list"),
    ("name: x\nresolution: 32\nstem: {width: 8}\nstages: [{width: 8, stride: 3}]", "stages[0].stride: must be 1 or 2"),
    ("name: x\nresolution: 32\nstem: {width: 8}\nstages: [{width: [], stride: 1}]", "stages[0].width: an empty list"),
    ("name: x\nresolution: 32\nstem: {width: 8}\nstages: [{width: 8, stride: 1}]\nconv_knobs: {scc: {groups: 0}}",
     "conv_knobs.scc: scc.groups=0: must be a positive integer"),
    ("name: x\nstem: {width: 8}\nstages: [{width: 8, stride: 1}]", "missing required key(s) resolution"),
    ("name: x\nresolution: 32\nstem: {width: 8\nstages: [", "invalid YAML"),
])
def test_invalid_space_files_name_file_key_and_rule(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError) as err:
        load_space(str(path))
    assert str(path) in str(err.value)
    assert needle in str(err.value)


def test_missing_space_lists_builtins():
    with pytest.raises(SpaceError, match="one of: mobile, residual"):
        load_space("nosuch")
