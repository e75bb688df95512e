"""create_model and load_trial: the one-call factories, and a clear error for every wrong argument."""
import pytest
import torch

from dsearch import build_model, create_model, load_trial, preset
from dsearch.analysis.pareto import best_within_budget, study_budget, trials_frame
from dsearch.errors import DsearchError
from dsearch.search.weights import trial_weights


def test_create_model_from_preset_json_and_spec_agree(tmp_path):
    spec = preset("mobilenet_v2", width=0.5, num_classes=10, in_channels=1)
    (tmp_path / "a.json").write_text(spec.to_json())
    from_name = create_model("mobilenet_v2", num_classes=10, in_channels=1, width=0.5)
    from_file = create_model(tmp_path / "a.json")
    from_spec = create_model(spec)
    shapes = {k: tuple(v.shape) for k, v in build_model(spec).state_dict().items()}
    for model in (from_name, from_file, from_spec):
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
        assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    five = create_model(str(tmp_path / "a.json"), num_classes=5, in_channels=3)
    assert five.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 5)
    assert isinstance(create_model("resnet20", conv="scc"), torch.nn.Module)


@pytest.mark.parametrize("call, needle", [
    (lambda: create_model("nosuchnet"), "neither a preset"),
    (lambda: create_model(3), "expected a preset name"),
    (lambda: create_model("resnet20", num_classes=0), "num_classes must be a positive integer"),
    (lambda: create_model("resnet20", num_classes=2.0), "num_classes must be a positive integer"),
    (lambda: create_model("resnet20", in_channels=True), "in_channels must be a positive integer"),
    (lambda: create_model("resnet20", width=-1), "width must be a positive number"),
    (lambda: create_model(preset("resnet20"), width=0.5), "width applies to presets only"),
    (lambda: create_model("resnet20", conv="nope"), "nope"),
    (lambda: build_model("mobilenet_v2"), "use dsearch.create_model('mobilenet_v2')"),
])
def test_wrong_arguments_say_what_to_do(call, needle):
    with pytest.raises(DsearchError, match=None) as err:
        call()
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_load_trial_gives_the_trained_module(searched_study):
    s = searched_study
    study = s["study"]
    best = int(best_within_budget(trials_frame(study), study_budget(study))["trial"])
    model = load_trial(s["name"], storage=s["storage"])
    state, _ = trial_weights(study, best, s["storage"])
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    by_number = load_trial(study, trial=best)  # an optuna.Study finds its recorded artifact folder
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(by_number(x), model(x))


def test_load_trial_wrong_arguments(searched_study):
    s = searched_study
    study = s["study"]
    rejected = next(t.number for t in study.trials if t.user_attrs.get("status") == "rejected")
    cases = [
        (dict(study=s["name"], trial="first", storage=s["storage"]), "trial must be 'best' or a trial number"),
        (dict(study=s["name"], trial=10_000, storage=s["storage"]), "has no trial 10000"),
        (dict(study=s["name"], trial=rejected, storage=s["storage"]), "has no kept weights"),
        (dict(study=42), "study must be a study name or an optuna.Study"),
        (dict(study="nosuchstudy", storage=s["storage"]), "no study 'nosuchstudy'"),
        (dict(study=s["name"], storage=3), "storage must be"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(DsearchError) as err:
            load_trial(**kwargs)
        assert needle in str(err.value), (kwargs, str(err.value))
