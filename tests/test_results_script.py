"""scripts/make_results.py: width matching, the statistics and the verdict, partial rendering, resuming."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_results.py"


@pytest.fixture(scope="module")
def mr():
    spec = importlib.util.spec_from_file_location("make_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_results"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def record(mr, config, seed: int, test: float, val: float | None = None, epochs: int = 20) -> tuple[str, dict]:
    schedule = {"epochs": epochs, "train_subset": None}
    key = mr.stored_key(mr.Run(config, seed).key, schedule)
    return key, {"label": config.label, "seed": seed, "test_acc": test, "val_acc": test if val is None else val,
                 "schedule": schedule, "date": f"2026-01-0{seed + 1} 10:00", "dsearch": "0.1.0", "torch": "2.x",
                 "python": "3.11", "device_name": "CPU test", "threads": 1}


def meta(seeds: int = 3) -> dict:
    return {"command": "python scripts/make_results.py", "json": "docs/results.json", "seeds": seeds,
            "schedule_text": "20 epochs", "now": "2026-01-01 00:00 UTC", "data_text": "test data"}


def claim_sentence(markdown: str) -> str:
    return next(line for line in markdown.splitlines() if "direction of that claim" in line)


def rendered(mr, configs, tests: dict[str, list[float]], seeds: int = 3) -> str:
    """Markdown for `configs` with the given test accuracies per conv kind (one per seed, missing ones left out)."""
    runs = mr.plan_runs(configs, seeds)
    results = {"runs": dict(record(mr, c, s, acc) for c in configs for s, acc in enumerate(tests.get(c.conv, [])))}
    return mr.render(configs, runs, mr.done_runs(results, runs, {"epochs": 20, "train_subset": None}), meta(seeds))


@pytest.mark.parametrize("kind", ["bsconv_u", "bsconv_s"])
@pytest.mark.parametrize("point", [0.55, 0.75, 1.0])
def test_matched_width_costs_at_most_the_dsc_net_and_the_next_step_more(mr, kind, point):
    target = mr.spec_cost(mr.mobilenet_v2(point, num_classes=10, in_channels=1)).macs
    width = mr.match_width(kind, target)
    below = mr.spec_cost(mr.with_conv(mr.mobilenet_v2(width, num_classes=10, in_channels=1), kind)).macs
    above = mr.spec_cost(mr.with_conv(mr.mobilenet_v2(round(width + mr.WIDTH_STEP, 2), num_classes=10,
                                                      in_channels=1), kind)).macs
    assert below <= target < above
    assert below >= 0.95 * target  # the cost points were chosen so that the match is close


@pytest.mark.parametrize("kind", ["bsconv_u", "bsconv_s"])
def test_no_larger_width_fits(mr, kind):
    """The scan stops at the first width over the target; no width further up the grid comes back under it."""
    target = mr.cost_of("dsc", 0.55)
    width = mr.match_width(kind, target)
    assert [w for w in mr.WIDTH_GRID if w > width and mr.cost_of(kind, w) <= target] == []


def test_matched_width_holds_under_fvcores_count(mr):
    from dsearch.cost import fvcore_spec_cost
    configs = mr.plan_configs([0.75], None)
    dsc, bsconv_u = configs[0], configs[1]
    assert bsconv_u.conv == "bsconv_u"
    assert fvcore_spec_cost(bsconv_u.spec()).macs <= fvcore_spec_cost(dsc.spec()).macs


def test_no_width_fits_a_tiny_target(mr):
    with pytest.raises(mr.DsearchError, match="choose a larger DSC width"):
        mr.match_width("bsconv_s", 1000)


def test_welch_comparison_by_hand(mr):
    a, b = [0.90, 0.91, 0.92], [0.80, 0.81, 0.82]
    c = mr.compare(a, b)
    se = math.sqrt(2 * (0.01 ** 2) / 3)  # each sample's std is 0.01; equal variances give df = 4
    assert c.diff == pytest.approx(0.1)
    assert c.se == pytest.approx(se)
    assert c.margin == pytest.approx(2.776 * se)
    assert c.verdict == mr.HOLDS
    assert mr.compare(b, a).verdict == mr.FAILS
    assert mr.compare([0.80, 0.85, 0.90], [0.82, 0.84, 0.86]).verdict == mr.UNSEPARATED
    assert mr.compare([0.9], [0.8]).verdict == mr.UNSEPARATED  # one seed: no interval
    assert mr.compare([], [0.8]) is None


def test_t_table_matches_the_t_distribution(mr):
    """Each tabulated value leaves 2.5% in the upper tail of Student's t (numerical integration of its density)."""
    for df, t in mr.T975.items():
        x = np.linspace(0.0, t, 200_001)
        log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
        density = np.exp(log_norm - (df + 1) / 2 * np.log1p(x ** 2 / df))
        cdf = 0.5 + float(np.sum((density[1:] + density[:-1]) / 2 * np.diff(x)))
        assert cdf == pytest.approx(0.975, abs=2e-4), df
    assert mr.t_quantile(4.7) == mr.T975[4]  # conservative: the lower df's larger quantile
    assert mr.t_quantile(1000) == mr.T975[120]


def test_verdict_follows_the_numbers(mr):
    configs = mr.plan_configs([0.75], None)
    better = {"dsc": [0.80, 0.81, 0.80], "bsconv_u": [0.86, 0.87, 0.86], "bsconv_s": [0.85, 0.86, 0.85]}
    worse = {"dsc": better["bsconv_u"], "bsconv_u": better["dsc"], "bsconv_s": [0.79, 0.80, 0.79]}
    noisy = {"dsc": [0.80, 0.86, 0.83], "bsconv_u": [0.82, 0.85, 0.81], "bsconv_s": [0.84, 0.80, 0.83]}
    mixed = {"dsc": [0.80, 0.81, 0.80], "bsconv_u": [0.86, 0.87, 0.86], "bsconv_s": [0.75, 0.76, 0.75]}
    assert "**holds** here" in claim_sentence(rendered(mr, configs, better))
    assert "**does not hold** here" in claim_sentence(rendered(mr, configs, worse))
    assert "**not separable at this number of seeds**" in claim_sentence(rendered(mr, configs, noisy))
    assert "**mixed**" in claim_sentence(rendered(mr, configs, mixed))
    one_seed = {k: v[:1] for k, v in better.items()}
    assert "**not separable at this number of seeds**" in claim_sentence(rendered(mr, configs, one_seed))
    assert "cannot be judged yet" in claim_sentence(rendered(mr, configs, {"dsc": better["dsc"]}))


def test_scc_rows_compare_with_dsc_at_the_same_width(mr):
    configs = mr.plan_configs([0.75], 0.75)
    md = rendered(mr, configs, {"dsc": [0.80, 0.81, 0.80], "scc": [0.86, 0.87, 0.86]})
    assert "Of the 4 SCC configurations at this width: 4 more accurate than DSC." in md
    md = rendered(mr, configs, {"dsc": [0.86, 0.87, 0.86], "scc": [0.80, 0.81, 0.80]})
    assert "Of the 4 SCC configurations at this width: 4 less accurate than DSC." in md
    md = rendered(mr, configs, {"dsc": [0.86, 0.87, 0.86]})
    assert "Of the 4 SCC configurations at this width: 4 without finished runs on both sides." in md


def test_table_shows_mean_spread_and_seed_count(mr):
    configs = mr.plan_configs([0.75], None)
    md = rendered(mr, configs, {"dsc": [0.80, 0.82, 0.84], "bsconv_u": [0.9, 0.9], "bsconv_s": []})
    rows = {line.split(" | ")[0]: line for line in md.splitlines() if line.startswith("| ")}
    assert "| 3/3 | 82.00 ± 2.00 | 80.00–84.00 |" in rows["| DSC"]
    assert "| 2/3 | 90.00 ± 0.00 | 90.00–90.00 |" in rows["| BSConv-U"]
    assert "| 0/3 | – |" in rows["| BSConv-S"]
    dsc_cost = mr.spec_cost(configs[0].spec())
    assert f"| 0.75 | {dsc_cost.mflops:.2f} | {dsc_cost.mparams:.3f} | 1.000 |" in rows["| DSC"]


def test_partial_results_list_the_missing_runs(mr):
    configs = mr.plan_configs([0.75], 0.75)
    md = rendered(mr, configs, {"dsc": [0.8, 0.8, 0.8], "bsconv_u": [0.8]})
    planned = len(configs) * 3
    assert f"Runs finished: **4 of {planned} planned** (partial results" in md
    missing = md.split("## Missing runs", 1)[1]
    assert "`mobilenet_v2_w0.74_bsconv_u/seed1`" in missing and "`mobilenet_v2_w0.75_dsc/seed0`" not in missing
    assert missing.count("\n- `") == planned - 4
    assert "| 1 | 0 (DSC) | 0.75 |" in md  # SCC's reference row is the DSC net at the same width


def test_only_keeps_the_dsc_reference_of_what_it_selects(mr):
    configs = mr.plan_configs([0.75, 1.0], 0.75)
    keys = [r.key for r in mr.plan_runs(configs, 2, ["*w0.88_bsconv_u", "*scc_g4_o0.5"])]
    assert keys == [  # cheapest cost point first, seed-major within each experiment
        "mobilenet_v2_w0.75_dsc/seed0", "mobilenet_v2_w0.75_dsc/seed1",
        "mobilenet_v2_w0.75_scc_g4_o0.5/seed0", "mobilenet_v2_w0.75_scc_g4_o0.5/seed1",
        "mobilenet_v2_w1_dsc/seed0", "mobilenet_v2_w0.88_bsconv_u/seed0",
        "mobilenet_v2_w1_dsc/seed1", "mobilenet_v2_w0.88_bsconv_u/seed1"]


def test_other_schedules_do_not_count_as_done(mr):
    configs = mr.plan_configs([0.75], None)
    runs = mr.plan_runs(configs, 1)
    results = {"runs": dict([record(mr, configs[0], 0, 0.8, epochs=1), record(mr, configs[1], 0, 0.8)])}
    done = mr.done_runs(results, runs, {"epochs": 20, "train_subset": None})
    assert list(done) == [mr.Run(configs[1], 0).key]


def test_render_only_from_a_results_file(mr, tmp_path):
    from dsearch.training.full import FullTrainConfig
    configs = mr.plan_configs([0.75], None)
    schedule = mr.schedule_of(FullTrainConfig().proxy)
    results = {"format": 1, "runs": {}}
    for c in configs:
        for s in range(3):
            key, rec = record(mr, c, s, 0.8 + 0.01 * s + (0.05 if c.conv != "dsc" else 0.0))
            rec["schedule"] = schedule
            results["runs"][mr.stored_key(mr.Run(c, s).key, schedule)] = rec
    (tmp_path / "r.json").write_text(json.dumps(results))
    md = tmp_path / "r.md"
    assert mr.main(["--widths", "0.75", "--scc-width", "0", "--survey-kinds", "--json", str(tmp_path / "r.json"),
                    "--md", str(md), "--render-only"]) == 0
    text = md.read_text()
    assert "Runs finished: **9 of 9 planned**." in text and "None: every planned run finished." in text
    assert "**holds** here" in claim_sentence(text)
    assert "9,000 training, 1,000 validation and 2,000 test images of 1 channel at 28x28, 10 classes" in text
    assert "Not shown" not in text
    key, rec = record(mr, configs[0], 0, 0.5, epochs=3)
    results["runs"][key] = rec
    (tmp_path / "r.json").write_text(json.dumps(results))
    assert mr.main(["--widths", "0.75", "--scc-width", "0", "--survey-kinds", "--json", str(tmp_path / "r.json"),
                    "--md", str(md), "--render-only"]) == 0
    text = md.read_text()
    assert "Runs finished: **9 of 9 planned**." in text
    assert "also holds runs of other schedules (1 run of 3 epochs)" in text


def test_bad_arguments_exit_2(mr, tmp_path, capsys):
    assert mr.main(["--only", "nothing*", "--json", str(tmp_path / "r.json"), "--render-only"]) == 2
    assert "matches no configuration" in capsys.readouterr().err
    assert mr.main(["--widths", "0.75,x", "--render-only"]) == 2
    assert mr.main(["--widths", "0.75,-1", "--render-only"]) == 2
    (tmp_path / "bad.json").write_text("{not json")
    assert mr.main(["--json", str(tmp_path / "bad.json"), "--render-only"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_survey_kinds_are_compared_with_dsc_at_equal_cost(mr, tmp_path):
    configs = mr.plan_configs([0.75], None, mr.SURVEY_KINDS)
    survey = [c for c in configs if c.experiment == "survey"]
    assert [c.conv for c in survey] == list(mr.SURVEY_KINDS)
    target = mr.cost_of("dsc", 0.75)
    for c in survey:
        assert mr.cost_of(c.conv, c.width) <= target < mr.cost_of(c.conv, round(c.width + mr.WIDTH_STEP, 2))
    md = rendered(mr, configs, {"dsc": [0.80, 0.81, 0.80], "cp": [0.86, 0.87, 0.86], "tucker": [0.70, 0.71, 0.70]})
    section = md.split("## Other separable convs against DSC at equal MFLOPs", 1)[1].split("## Missing runs")[0]
    rows = {line.split(" | ")[0]: line for line in section.splitlines() if line.startswith("| ")}
    assert {"| DSC", "| DWSCW", "| GCWConv", "| ShuffleNet", "| CP", "| Tucker"} <= set(rows)
    assert rows["| CP"].endswith("| more accurate than DSC |")
    assert rows["| Tucker"].endswith("| less accurate than DSC |")
    assert ("Of the 5 conv kinds at this cost point: 1 more accurate than DSC, 1 less accurate than DSC, "
            "3 without finished runs on both sides.") in section
    assert "**holds** here" not in claim_sentence(md)  # the BSConv verdict counts BSConv rows only
    runs = mr.plan_runs(configs, 1)
    assert [r.config.experiment for r in runs] == ["equal-cost"] * 3 + ["survey"] * 5


def test_a_setting_a_stored_run_predates_counts_as_its_default(mr):
    """Runs stored before ProxyConfig gained bn_recompute trained without it: they are done for bn_recompute=0
    (the default, which trains as before) and not for a schedule that recomputes."""
    from dataclasses import fields

    from dsearch.training.proxy import ProxyConfig

    default = next(f.default for f in fields(ProxyConfig) if f.name == "bn_recompute")
    old = {"epochs": 10, "train_subset": None, "lr": None}
    now = {**old, "bn_recompute": default}
    assert mr.same_schedule(old, now)
    assert not mr.same_schedule(old, {**now, "bn_recompute": default + 64})
    assert not mr.same_schedule({**old, "lr": 0.1}, now)
    assert not mr.same_schedule({**now, "mixup": 0.2}, now)  # a setting the script does not know: another schedule
