"""The trial record as Optuna and optuna-dashboard read it: metric names, constraints, the arch attr, artifacts."""
import json

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState, create_trial

from dsearch import ArchSpec, spec_cost
from dsearch.analysis.pareto import arch_of, trials_frame
from dsearch.errors import DsearchError
from dsearch.model.presets import preset
from dsearch.search.record import CONSTRAINT_KEYS, arch_from_attr, metric_names, named_constraints


def test_metric_names_label_the_objectives(searched_study):
    study = optuna.load_study(study_name=searched_study["name"], storage=searched_study["storage"])
    assert study.metric_names == ["val_acc", "mflops@32x32"]
    frame = study.trials_dataframe(multi_index=True)
    assert list(frame["values"].columns) == ["val_acc", "mflops@32x32"]
    assert metric_names("accuracy", 224) == ["val_acc"]


def test_constraints_in_both_forms_agree_with_the_budget(searched_study):
    study = optuna.load_study(study_name=searched_study["name"], storage=searched_study["storage"])
    budget = searched_study["budget"]
    trials = [t for t in study.get_trials() if t.state != TrialState.FAIL]
    assert {t.user_attrs["status"] for t in trials} >= {"complete", "rejected"}
    for t in trials:
        named = named_constraints(t)
        assert list(named) == list(CONSTRAINT_KEYS)
        # optuna-dashboard shows the list under the system attr "constraints"; Optuna 5 the named keys.
        assert t.system_attrs["constraints"] == [named[k] for k in CONSTRAINT_KEYS]
        recount = spec_cost(ArchSpec.from_dict(t.user_attrs["arch"])).mflops  # independent of the stored cost
        assert named["mflops_over_budget"] == pytest.approx(recount - budget)
        feasible = recount <= budget
        assert all(v <= 0 for v in t.constraints.values()) == feasible
        assert (t.user_attrs["status"] == "rejected") == (not feasible)


def test_arch_attr_is_structured_and_old_string_form_still_reads(searched_study):
    study = searched_study["study"]
    for t in study.get_trials():
        if "arch" in t.user_attrs:
            assert isinstance(t.user_attrs["arch"], dict)
            assert isinstance(t.user_attrs["arch_summary"], str) and "\n" not in t.user_attrs["arch_summary"]
    spec = preset("resnet20", num_classes=10, in_channels=1)
    assert arch_from_attr(spec.to_json()) == arch_from_attr(json.loads(spec.to_json())) == spec
    with pytest.raises(DsearchError, match="unknown form"):
        arch_from_attr(3)
    # A study written before the structured form: every reader still rebuilds the architecture.
    old = optuna.create_study(directions=["maximize", "minimize"])
    old.add_trial(create_trial(state=TrialState.COMPLETE, values=[0.8, 40.0], user_attrs={
        "arch": spec.to_json(), "arch_summary": spec.summary(), "status": "complete", "val_acc": 0.8,
        "mflops": 40.0}))
    assert arch_of(old, 0) == spec
    assert trials_frame(old)["stage1.width"].iloc[0] == spec.stages[0].out_channels


def test_weights_artifacts_are_named_after_their_trial(searched_study):
    study = searched_study["study"]
    kept = [t for t in study.get_trials() if "weights_artifact" in t.user_attrs]
    assert kept
    for t in kept:
        meta = get_all_artifact_meta(t, storage=study._storage)
        assert [m.filename for m in meta] == [f"trial-{t.number}-proxy.pt"]


def test_optuna_dashboard_reads_names_and_constraints(searched_study):
    serializer = pytest.importorskip("optuna_dashboard._serializer")
    from optuna_dashboard._named_objectives import get_objective_names

    study = optuna.load_study(study_name=searched_study["name"], storage=searched_study["storage"])
    assert get_objective_names(study._storage.get_study_system_attrs(study._study_id)) == ["val_acc", "mflops@32x32"]
    for t in study.get_trials():
        shown = serializer.serialize_frozen_trial(study._study_id, t, {})
        if t.state != TrialState.FAIL:
            assert shown["constraints"] == [named_constraints(t)[k] for k in CONSTRAINT_KEYS]
