"""Latency in the search: the repair under a latency budget and the tables built over a space."""
from __future__ import annotations

import itertools
import random

import pytest

from dsearch.cost import spec_cost
from dsearch.latency import LatencyModel, Protocol, parse_target
from dsearch.search.budget import Budget, random_recorder
from dsearch.search.latency import latency_repair, sample_within, table_from_space
from dsearch.search.spaces import load_space, sample

FAST = Protocol(warmup_runs=1, warmup_s=0.0, min_repeats=5, max_repeats=20, timed_s=0.02, attempts=2)


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.setenv("DSEARCH_LOCK_DIR", str(tmp_path))
    return LatencyModel.for_target(parse_target("torch-cpu"), tmp_path / "tables", protocol=FAST)


def test_latency_repair_fits_every_budget(tiny_space, model):
    space = load_space(str(tiny_space))
    rng = random.Random(0)
    specs = [(r, sample(space, r, 1, 10)) for r in (random_recorder(rng) for _ in range(40))]
    dearest = max(specs, key=lambda rs: spec_cost(rs[1]).macs)
    ms_budget = 0.8 * model.predict_ms(dearest[1])  # the dearest sample is over it
    budget = Budget(resolution=32)
    fixed, params, steps = latency_repair(space, dearest[0].used, budget, ms_budget, model, 1, 10)
    assert model.predict_ms(fixed) <= ms_budget and steps >= 1
    assert spec_cost(fixed).macs < spec_cost(dearest[1]).macs
    cheap = min(specs, key=lambda rs: spec_cost(rs[1]).macs)
    same, _, none = latency_repair(space, cheap[0].used, budget, 1e9, model, 1, 10)
    assert same == cheap[1] and none == 0  # within the budget: left as it is


def test_sample_within_draws_distinct_architectures_within_the_budget():
    specs = sample_within("mobile", 12, Budget(150), 1, 10, seed=3)
    assert len(specs) == 12 and len({s.to_json() for s in specs}) == 12
    assert all(spec_cost(s).mflops <= 150 for s in specs)
    assert all(a != b for a, b in itertools.combinations(specs, 2))


def test_table_from_space_holds_every_part_of_its_samples(tiny_space, model):
    report = table_from_space(model, str(tiny_space), 6, None, 1, 10, seed=0)
    assert report["architectures"] == 6 and report["networks"] == 3  # the calibration networks
    for spec in sample_within(str(tiny_space), 6, Budget(), 1, 10, seed=0):
        assert model.missing(spec) == []
    again = table_from_space(model, str(tiny_space), 6, None, 1, 10, seed=0)
    assert again["measured_now"] == 0 and again["parts"] == report["parts"]


def test_a_search_under_a_latency_budget_rejects_before_training(tiny_space, tmp_path):
    from optuna.trial import TrialState

    from dsearch import ArchSpec
    from dsearch.errors import DsearchError
    from dsearch.search.config import SearchConfig
    from dsearch.search.driver import run_search
    from dsearch.search.spaces import extreme_spec
    from dsearch.training.proxy import ProxyConfig

    space = load_space(str(tiny_space))
    model = LatencyModel.for_target(parse_target("torch-cpu"), protocol=FAST)  # the tests' DSEARCH_LATENCY_DIR
    cheapest = model.predict_ms(extreme_spec(space, 1, 10))
    dearest = model.predict_ms(extreme_spec(space, 1, 10, cheapest=False))
    ms = cheapest + 0.3 * (dearest - cheapest)
    cfg = SearchConfig(space=str(tiny_space), budget_ms=ms, latency_target="torch-cpu", sampler="random",
                       proxy=ProxyConfig(epochs=1, batch_size=64, train_subset=256, augment=False))
    summary = run_search(cfg, "lat", f"sqlite:///{tmp_path}/lat.db", n_trials=3, log=lambda _m: None)
    study = summary.study
    assert study.metric_names == ["val_acc", "latency_ms@torch-cpu"]
    trials = study.get_trials()
    trained = [t for t in trials if t.user_attrs.get("status") == "complete"]
    rejected = [t for t in trials if t.user_attrs.get("status") == "rejected"]
    assert len(trained) == 3 and rejected, "a budget at 30% of the predicted range must reject some samples"
    fresh = LatencyModel.for_target(parse_target("torch-cpu"), protocol=FAST)  # the table on disk, read anew
    for t in trained:
        predicted = fresh.predict_ms(ArchSpec.from_dict(t.user_attrs["arch"]))
        assert t.user_attrs["latency_ms"] == pytest.approx(predicted, rel=0.02) and predicted <= ms * 1.02
        assert t.values == [t.user_attrs["val_acc"], t.user_attrs["latency_ms"]]
        assert t.constraints["ms_over_budget"] <= 0 and t.user_attrs["latency_target"] == "torch-cpu"
    for t in rejected:
        assert t.state == TrialState.PRUNED and "val_acc" not in t.user_attrs
        assert "ms on torch-cpu" in t.user_attrs["reason"]
        assert t.constraints["ms_over_budget"] == pytest.approx(t.user_attrs["latency_ms"] - ms)
    assert study.user_attrs["dsearch_identity"]["budget_ms"] == ms
    with pytest.raises(DsearchError, match="latency|budget"):  # resumed with another target: refused
        run_search(SearchConfig(**{**cfg.__dict__, "latency_target": "torch-cpu:threads=2", "budget_ms": 100 * ms}),
                   "lat",
                   f"sqlite:///{tmp_path}/lat.db", n_trials=1, log=lambda _m: None)
    with pytest.raises(DsearchError, match="fits --budget-ms"):
        run_search(SearchConfig(**{**cfg.__dict__, "budget_ms": cheapest / 3}), "none",
                   f"sqlite:///{tmp_path}/none.db", n_trials=1, log=lambda _m: None)
