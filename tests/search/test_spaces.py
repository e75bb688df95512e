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


# --- issue 25: a space some of whose combinations are invalid ---------------------------------------------------------

# groups 5 divides stage 2's input only where stage 1 is 10 wide, never the stem's 8: many combinations are invalid,
# and groups 5 is always the cheapest SCC (each output reads M / 5 channels), so a search for the cheapest
# architecture that ignores validity lands on an invalid one.
SOME_INVALID = """
name: some_invalid
resolution: 16
stem: {width: 8, stride: 1}
stage_defaults: {block: separable, conv: [scc, dsc], kernel: [3, 5]}
stages:
  - {width: [10, 16], stride: 2}
  - {width: [16, 32], depth: [1, 2], stride: 2}
conv_knobs:
  scc: {groups: [2, 5], overlap: [0.0, 0.5]}
"""


def valid_costs(space):
    """(MACs, params) of every valid architecture of the space, by brute force over every combination."""
    from dsearch.model.archspec import ArchSpecError
    from dsearch.search.budget import all_params, build

    costs = []
    for params in all_params(space):
        try:
            spec = build(space, params, 1, 10)[0]
        except ArchSpecError:
            continue
        costs.append((spec_cost(spec).macs, spec_cost(spec).params))
    return costs


def test_a_space_with_some_invalid_combinations_is_accepted_and_its_extremes_are_valid(tmp_path):
    from dsearch.search.budget import all_params

    path = tmp_path / "some_invalid.yaml"
    path.write_text(SOME_INVALID)
    space = load_space(str(path))  # refused as a whole before
    costs = valid_costs(space)
    assert 0 < len(costs) < len(list(all_params(space)))  # some combinations are invalid, some valid
    cheapest, dearest = extreme_spec(space, 1, 10), extreme_spec(space, 1, 10, cheapest=False)  # valid ArchSpecs
    assert spec_cost(cheapest).macs == min(c[0] for c in costs)
    assert spec_cost(dearest).macs == max(c[0] for c in costs)
    assert spec_cost(extreme_spec(space, 1, 10, by_params=True)).params == min(c[1] for c in costs)
    assert cheapest.stages[0].conv.kind == "scc" and cheapest.stages[0].conv.knob_dict["groups"] == 2


# Two stem and head widths, two blocks, expansions and SCC groups that 12 * 1 and 12 * 3 divide differently.
MIXED = """
name: mixed
resolution: 16
stem: {width: [8, 12], stride: 1}
head: {width: [0, 32]}
stage_defaults: {conv: [dsc, scc], kernel: 3, expansion: [1, 3]}
stages:
  - {block: [inverted_residual, basic], width: [12, 16], stride: 2}
  - {width: [16, 24], depth: [1, 2], stride: 2, kernel: [3, 5]}
conv_knobs:
  scc: {groups: [2, 3, 4], overlap: 0.0}
"""


@pytest.mark.parametrize("name", ["tiny", "mixed"])
def test_extremes_are_the_brute_force_extremes(tiny_space, tmp_path, name):
    if name == "mixed":
        (tmp_path / "mixed.yaml").write_text(MIXED)
    space = load_space(str(tiny_space) if name == "tiny" else str(tmp_path / "mixed.yaml"))
    costs = valid_costs(space)
    assert len(costs) <= 10_000
    assert (spec_cost(extreme_spec(space, 1, 10)).macs, spec_cost(extreme_spec(space, 1, 10)).params) == min(costs)
    assert spec_cost(extreme_spec(space, 1, 10, cheapest=False)).macs == max(c[0] for c in costs)


def test_budget_reachability_counts_only_valid_architectures(tmp_path):
    from dsearch.data import EMBEDDED_NAME, load_dataset
    from dsearch.errors import DsearchError
    from dsearch.search.config import SearchConfig, check_budget_reachable

    path = tmp_path / "some_invalid.yaml"
    path.write_text(SOME_INVALID)
    space, data = load_space(str(path)), load_dataset(EMBEDDED_NAME)
    costs = valid_costs(space)
    lowest = min(c[0] for c in costs) / 1e6
    assert check_budget_reachable(space, data, SearchConfig(space=str(path), budget_mflops=lowest)).mflops == lowest
    with pytest.raises(DsearchError, match=f"the cheapest costs {lowest:.2f} MFLOPs"):
        check_budget_reachable(space, data, SearchConfig(space=str(path), budget_mflops=lowest * 0.999))
    smallest = min(c[1] for c in costs) / 1e6
    check_budget_reachable(space, data, SearchConfig(space=str(path), budget_mparams=smallest))
    with pytest.raises(DsearchError, match=f"the smallest has {smallest:.3f} M params"):
        check_budget_reachable(space, data, SearchConfig(space=str(path), budget_mparams=smallest * 0.999))


@pytest.mark.slow  # trains one architecture
def test_an_invalid_combination_is_an_invalid_trial_and_the_search_goes_on(tmp_path):
    from dsearch.search.config import SearchConfig
    from dsearch.search.driver import run_search
    from dsearch.training.proxy import ProxyConfig

    path = tmp_path / "some_invalid.yaml"
    path.write_text(SOME_INVALID)
    invalid = {"stage1.conv": "scc", "stage1.width": 10, "stage1.kernel": 3, "stage1.scc_groups": 5,
               "stage1.scc_overlap": 0.0, "stage2.conv": "dsc", "stage2.width": 16, "stage2.depth": 1,
               "stage2.kernel": 3}
    cfg = SearchConfig(space=str(path), budget_mflops=1.0, sampler="random",
                       proxy=ProxyConfig(epochs=1, batch_size=64, train_subset=128, augment=False))
    summary = run_search(cfg, "inv", f"sqlite:///{tmp_path}/s.db", n_trials=1, log=lambda _msg: None,
                         on_study=lambda study, _first: study.enqueue_trial(invalid))
    first = summary.study.trials[0]
    assert first.user_attrs["status"] == "invalid"
    assert "groups=5 must divide in_channels=8" in first.user_attrs["reason"]
    assert summary.trained == 1


def test_a_space_with_no_valid_architecture_names_file_and_key(tmp_path, capfd):
    from dsearch import cli

    path = tmp_path / "none_valid.yaml"
    path.write_text(SOME_INVALID.replace("groups: [2, 5]", "groups: [5]").replace("conv: [scc, dsc]", "conv: scc"))
    with pytest.raises(SpaceError) as err:
        load_space(str(path))
    assert str(err.value).startswith(f"{path}: stages[0] with conv_knobs.scc: no architecture of the space can be "
                                     "built")
    assert "groups=5 must divide in_channels=8" in str(err.value)
    assert cli.main(["spaces", str(path)]) == 2
    err_text = capfd.readouterr().err
    assert len(err_text.strip().splitlines()) == 1 and "Traceback" not in err_text and "conv_knobs.scc" in err_text
