"""Budgets over a space: fast costing by parameters, repair into the budget, enumeration, sampled shares."""
from __future__ import annotations

import math
import random

import pytest

from dsearch.cost import spec_cost
from dsearch.model.archspec import ArchSpecError
from dsearch.search.budget import (
    Budget,
    Recorder,
    all_params,
    budget_share,
    build,
    feasible_count,
    params_counts,
    random_recorder,
    repair,
    single_changes,
)
from dsearch.search.spaces import extreme_spec, load_space, sample, space_size


def random_params(space, rng):
    """Active parameters of a valid uniformly sampled architecture."""
    while True:
        recorder = random_recorder(rng)
        try:
            sample(space, recorder, 1, 10)
        except ArchSpecError:
            continue
        return recorder.used


def assert_on_choices(space, params):
    """Every parameter the architecture asks for is given, and is one of that parameter's choices."""
    def answer(name, choices):
        assert params[name] in choices, name
        return params[name]

    recorder = Recorder(answer)
    sample(space, recorder, 1, 10)
    assert set(recorder.used) == set(params)


@pytest.mark.parametrize("name", ["mobile", "residual"])
def test_params_counts_equal_spec_cost(name):
    space, rng = load_space(name), random.Random(3)
    for i in range(40):
        params = random_params(space, rng)
        res = (None, 28, 41)[i % 3]
        cost = spec_cost(build(space, params, 1, 10, res)[0])
        assert params_counts(space, params, 1, 10, res) == (cost.macs, cost.params)


@pytest.mark.parametrize("name,mflops,mparams", [
    ("mobile", 60, None), ("mobile", 80, None), ("mobile", 150, None), ("mobile", 150, 0.5),
    ("residual", 5, None), ("residual", 40, 0.2), ("survey", 100, 1.0),
])
def test_repair_lands_within_budget_on_choices_of_the_space(name, mflops, mparams):
    space, rng = load_space(name), random.Random(mflops)
    budget = Budget(mflops, mparams)
    for _ in range(4):
        params = random_params(space, rng)
        spec, fixed, _ = repair(space, params, budget, 1, 10)
        cost = spec_cost(spec)
        assert cost.mflops <= mflops and (mparams is None or cost.mparams <= mparams)
        # the repaired parameters rebuild the same architecture, so an enqueued trial trains exactly it
        assert build(space, fixed, 1, 10)[0] == spec
        assert_on_choices(space, fixed)


def test_repair_takes_the_fitting_single_change_that_keeps_the_most():
    """Brute force over single changes, costed by building every ArchSpec (not by the cached path)."""
    space, rng = load_space("mobile"), random.Random(0)
    checked = 0
    while checked < 3:
        params = random_params(space, rng)
        mflops = spec_cost(build(space, params, 1, 10)[0]).mflops
        budget = Budget(mflops * 0.97)
        fitting = []
        for candidate in single_changes(space, params):
            try:
                cost = spec_cost(build(space, candidate, 1, 10)[0]).mflops
            except ArchSpecError:
                continue
            if cost <= budget.mflops:
                fitting.append(cost)
        if not fitting:
            continue
        spec, _, steps = repair(space, params, budget, 1, 10)
        assert steps == 1
        assert spec_cost(spec).mflops == max(fitting)
        checked += 1


def test_repair_leaves_a_fitting_architecture_alone():
    space = load_space("residual")
    params = random_params(space, random.Random(5))
    spec, fixed, steps = repair(space, params, Budget(1e6), 1, 10)
    assert steps == 0 and fixed == params


def test_enumeration_is_the_whole_space_once(tiny_space):
    space = load_space(str(tiny_space))
    specs = [build(space, p, 1, 10)[0] for p in all_params(space)]
    assert len(specs) == len(set(specs)) == space_size(space)


def test_feasible_count_equals_brute_force(tiny_space):
    space = load_space(str(tiny_space))
    budget = Budget(0.22)
    brute = sum(spec_cost(build(space, p, 1, 10)[0]).mflops <= 0.22 for p in all_params(space))
    assert feasible_count(space, budget, 1, 10) == brute
    assert 0 < brute < space_size(space)
    assert feasible_count(load_space("mobile"), budget, 1, 10) is None  # too large to count


def test_budget_share_interval_holds_the_exact_share(tiny_space):
    """Exact share under uniform choices: each architecture weighs 1 / product of its parameters' choice counts."""
    space = load_space(str(tiny_space))
    choices = {}
    for i, st in enumerate(space.stages, start=1):
        for key in ("width", "depth", "kernel", "conv", "block", "expansion"):
            choices[f"stage{i}.{key}"] = len(getattr(st, key))
        for kind in st.conv:
            for knob, c in space.knob_choices(kind).items():
                choices[f"stage{i}.{kind}_{knob}"] = len(c)
    exact = 0.0
    for params in all_params(space):
        weight = 1 / math.prod(choices[name] for name in params)
        exact += weight * (spec_cost(build(space, params, 1, 10)[0]).mflops <= 0.22)
    share = budget_share(space, Budget(0.22), 1, 10, samples=3000, seed=1)
    lo, hi = share.interval()
    assert lo <= exact <= hi
    assert share.largest_within is not None and spec_cost(share.largest_within).mflops <= 0.22


def test_cheapest_architecture_fits_whenever_any_does():
    space = load_space("mobile")
    cheapest = spec_cost(extreme_spec(space, 1, 10)).mflops
    spec, _, _ = repair(space, random_params(space, random.Random(9)), Budget(cheapest), 1, 10)
    assert spec_cost(spec).mflops <= cheapest


# --- the Budget type: every limit, checked on a spec, on counts and on a record; described and stored once -------

def test_budget_checks_counts_records_and_latency_by_the_max_ratio_rule():
    from dsearch.errors import DsearchError
    from dsearch.search.budget import Budget

    both = Budget(300, 2)
    assert both.counts_ratio(150_000_000, 3_000_000) == pytest.approx(1.5)  # params dominate: 3 / 2
    assert both.fits_record({"mflops": 300.0, "mparams": 2.0})
    assert not both.fits_record({"mflops": 300.1, "mparams": 1.0})
    assert not both.fits_record({"mflops": 100.0})  # a cost the record lacks does not fit
    assert not both.fits_record({"mflops": "100", "mparams": 1.0})  # nor one that is no number (a damaged record)
    assert Budget().counts_ratio(10**12, 10**12) == 0.0 and Budget().fits_record({})
    fast = Budget(300, ms=5.0, latency_target="ort-cpu")
    assert fast.counts_ratio(150_000_000, 0, ms=10.0) == pytest.approx(2.0)  # latency dominates: 10 / 5
    assert fast.fits_record({"mflops": 299.0, "mparams": 9.0, "latency_ms": 4.9})
    assert not fast.fits_record({"mflops": 299.0, "latency_ms": 5.1})
    for check in (lambda: fast.counts_ratio(1, 1), lambda: fast.fits_record({"mflops": 1.0}),
                  lambda: fast.fits_record({"mflops": 1.0, "latency_ms": float("nan")})):
        with pytest.raises(DsearchError, match="no latency was given"):
            check()


def test_budget_describes_itself_and_names_what_a_cost_exceeds():
    from dsearch.search.budget import Budget

    assert Budget(300, 2).describe() == "300 MFLOPs and 2 M params"
    assert Budget(None, 0.5).describe() == "0.5 M params" and Budget().describe() == "no budget"
    assert Budget(300, ms=5, latency_target="ort-cpu").describe() == "300 MFLOPs and 5 ms on ort-cpu"
    budget = Budget(300, 2)
    excess = budget.excess({"mflops": 310.0, "mparams": 1.5})
    assert excess == {"mflops": 10.0, "mparams": -0.5}
    assert budget.exceeded(excess) == ["> 300 MFLOPs"]


def test_budget_is_stored_with_the_identity_keys_of_existing_studies():
    from dsearch.errors import DsearchError
    from dsearch.search.budget import Budget

    assert Budget(300, None, 224).stored() == {"budget_mflops": 300, "budget_mparams": None}  # as studies hold it
    old = {"budget_mflops": 300, "budget_mparams": None, "resolution": 224}  # a study made before latency budgets
    assert Budget.from_stored(old) == Budget(300.0, None, 224) and Budget.from_stored(old).ms is None
    fast = Budget(300, None, 224, ms=5.0, latency_target="ort-cpu")
    assert Budget.from_stored({**fast.stored(), "resolution": 224}) == fast
    for bad in ({"budget_mflops": "300"}, {"budget_mparams": -1}, {"budget_ms": float("inf")}, {"resolution": 2.5}):
        with pytest.raises(DsearchError, match="stored"):
            Budget.from_stored(bad)


def test_a_rejected_trial_keeps_its_reason_text_and_constraint_values(searched_study):
    """The objective's rejection, as it was written before the Budget type: the same text, the same numbers."""
    from dsearch.search.record import named_constraints

    rejected = [t for t in searched_study["study"].get_trials() if t.user_attrs.get("status") == "rejected"]
    assert rejected
    for t in rejected:
        mflops, mparams, res = t.user_attrs["mflops"], t.user_attrs["mparams"], t.user_attrs["resolution"]
        assert t.user_attrs["reason"] == (f"over budget: {mflops:.1f} MFLOPs at {res}x{res}, {mparams:.2f} M params "
                                          f"(> {searched_study['budget']:g} MFLOPs)")
        assert named_constraints(t) == {"mflops_over_budget": mflops - searched_study["budget"],
                                        "mparams_over_budget": -1.0, "invalid": 0.0}
