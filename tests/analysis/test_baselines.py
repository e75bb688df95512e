"""Baselines at the budget: the widths found, the conv swaps, training kept on the study (resumable), show, CLI."""
import dataclasses
import json

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial
from PIL import Image

from dsearch.analysis import baselines as bl
from dsearch.cli import main
from dsearch.cost import spec_cost
from dsearch.errors import DsearchError
from dsearch.model.archspec import iter_conv_units
from dsearch.model.ops import CONV_TYPES
from dsearch.model.presets import mobilenet_v2
from dsearch.search.budget import Budget
from dsearch.search.config import SearchConfig
from dsearch.search.driver import prepare_study
from dsearch.search.resume import plain
from dsearch.search.spaces import load_space
from dsearch.training import full as fulltrain
from dsearch.training.proxy import DeviceData, ProxyConfig, TrainingDiverged, select_device, train_proxy


def next_width_over(b, budget, in_channels, num_classes, resolution):
    """True when the grid's next width of the same variant is over the budget (or past the grid's end)."""
    wider = round(b.width + bl.WIDTH_STEP, 2)
    if wider > bl.WIDTHS[-1]:
        return True
    spec = bl.variant(wider, b.conv, in_channels, num_classes, resolution)
    cost = spec_cost(spec, resolution)
    over = [cost.mflops > budget.mflops] if budget.mflops is not None else []
    if budget.mparams is not None:
        over.append(cost.mparams > budget.mparams)
    return any(over)


@pytest.mark.parametrize("budget, in_channels, num_classes, resolution", [
    (Budget(300.0), 1, 10, 224),  # the default run
    (Budget(100.0, 1.0), 3, 100, 224),
    (Budget(None, 0.5), 1, 10, 224),
    (Budget(4.0), 1, 3, 32),
])
def test_each_width_is_the_largest_within_budget(budget, in_channels, num_classes, resolution):
    found = bl.baseline_specs(budget, in_channels, num_classes, resolution)
    assert [b.conv for b in found] == list(bl.KINDS)
    for b in found:
        cost = spec_cost(b.spec, resolution)
        assert b.spec.resolution == resolution and b.cost == cost
        assert budget.mflops is None or cost.mflops <= budget.mflops
        assert budget.mparams is None or cost.mparams <= budget.mparams
        assert next_width_over(b, budget, in_channels, num_classes, resolution), b.label
        assert b.label == f"mobilenet_v2_w{b.width:g}_{b.conv}"


def test_default_budget_widths_differ_by_conv_kind():
    found = {b.conv: b.width for b in bl.baseline_specs(Budget(300.0), 1, 10, 224)}
    # BSConv-U's pointwise conv runs before the stride, so it costs more than DSC and fits at a smaller width.
    assert found["bsconv_u"] < found["dsc"]
    assert spec_cost(mobilenet_v2(found["dsc"], 10, 1, 224)).mflops <= 300 < spec_cost(
        mobilenet_v2(round(found["dsc"] + 0.05, 2), 10, 1, 224)).mflops


def test_the_swap_is_what_it_says():
    for b in bl.baseline_specs(Budget(300.0), 1, 10, 224):
        published = mobilenet_v2(b.width, num_classes=10, in_channels=1, resolution=224)
        if b.conv == "dsc":
            assert b.spec == published  # MobileNetV2 as published
        kinds = {conv.kind for _, conv, *_ in iter_conv_units(b.spec)}
        assert kinds == {b.conv} and all(st.conv.kind == b.conv for st in b.spec.stages)
        # (implicit knobs such as dilation are left out of a spec at their default)
        defaults = {k.name: k.default for k in CONV_TYPES[b.conv].knobs if not k.implicit}
        for st, orig in zip(b.spec.stages, published.stages, strict=True):
            knobs = st.conv.knob_dict
            # the registry's default knobs, except the BN (+ ReLU6) between the parts that MobileNetV2 has
            carried = {k: v for k, v in orig.conv.knob_dict.items() if k in defaults}
            assert knobs == {**defaults, **carried}
            assert dataclasses.replace(st, conv=orig.conv) == orig  # nothing else of the stage changed
        assert (b.spec.stem, b.spec.head) == (published.stem, published.head)


def test_no_budget_or_nothing_fitting_is_one_clear_error():
    with pytest.raises(DsearchError, match="no baseline fits the budget .* smallest width 0.1 costs"):
        bl.baseline_specs(Budget(5.0), 1, 10, 224)
    with pytest.raises(DsearchError, match="no budget"):
        bl.baseline_specs(Budget(), 1, 10, 224)


def write_images(root, classes=3, per_class=40, size=32):
    """A tiny learnable image folder: each class a different brightness pattern, with noise."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            base = np.zeros((size, size))
            base[:, c * size // classes:(c + 1) * size // classes] = 180
            pixels = np.clip(base + rng.normal(0, 40, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")


def make_study(root, name, budget_mflops):
    """A study as `dsearch run` leaves it (settings bound), on a tiny image folder, without trials."""
    images = root / "images"
    if not images.exists():
        write_images(images)
    # the mobile space deployed at 32x32: baselines depend on the budget and resolution, not on the space
    cfg = SearchConfig(space="mobile", resolution=32, dataset=f"imagefolder:{images}", budget_mflops=budget_mflops,
                       proxy=ProxyConfig(epochs=1, batch_size=32, train_subset=64))
    url = f"sqlite:///{root}/study.db"
    study = prepare_study(cfg, name, url, cfg.identity(load_space("mobile"), 32))
    return study, url, cfg


KINDS = ("dsc", "scc")  # two of the four kinds keep the training tests fast; the others train by the same code


@pytest.fixture(scope="module")
def fast():
    """No memory checks (tested in test_reliability; each builds a net on the meta device, ~1 s on this CPU)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bl, "check_fits_memory", lambda *args, **kwargs: None)
        mp.setattr(fulltrain, "check_fits_training", lambda *args, **kwargs: None)
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fast):
    """A study whose DSC and SCC baselines were trained (proxy and a 1-epoch full schedule) by run_baselines."""
    root = tmp_path_factory.mktemp("baselines")
    study, url, cfg = make_study(root, "b", 4.0)
    lines: list[str] = []
    records = bl.run_baselines(study, url, epochs=1, log=lines.append, kinds=KINDS)
    return {"study": study, "url": url, "cfg": cfg, "records": records, "log": lines, "root": root}


def test_baselines_are_trained_and_kept_on_the_study(trained):
    records = trained["records"]
    expected = bl.baseline_specs(Budget(4.0), 1, 3, 32, KINDS)
    assert [r["label"] for r in records] == [b.label for b in expected]
    reopened = optuna.load_study(study_name="b", storage=trained["url"])
    assert bl.study_baselines(reopened) == sorted(records, key=lambda r: r["label"])
    for r, b in zip(records, expected, strict=True):
        assert r["arch"] == plain(b.spec.to_dict()) and r["mflops"] == b.cost.mflops and r["resolution"] == 32
        assert r["proxy"]["status"] == "complete" and 0 <= r["proxy"]["val_acc"] <= 1
        assert r["full"]["status"] == "complete" and r["full"]["epochs"] == 1 and r["full"]["config"]["epochs"] == 1
    # The proxy result is what the study's own proxy gives this architecture (training is seeded).
    cfg = trained["cfg"]
    from dsearch.data import load_dataset

    data = DeviceData(load_dataset(cfg.dataset, seed=cfg.seed), select_device("cpu"), cfg.proxy.train_subset)
    again = train_proxy(expected[0].spec, data, cfg.proxy)
    assert records[0]["proxy"]["val_acc"] == again.val_acc and records[0]["proxy"]["test_acc"] == again.test_acc


def test_a_rerun_trains_nothing_and_other_epochs_retrain_only_the_full_schedule(trained, monkeypatch):
    calls = {"proxy": 0, "full": 0}
    real_proxy, real_full = bl.train_proxy, bl.train_full

    def count(kind, fn):
        def wrapped(*args, **kwargs):
            calls[kind] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(bl, "train_proxy", count("proxy", real_proxy))
    monkeypatch.setattr(bl, "train_full", count("full", real_full))
    second = optuna.load_study(study_name="b", storage=trained["url"])  # as a second worker would
    assert bl.run_baselines(second, trained["url"], epochs=1, log=lambda _m: None, kinds=KINDS) == trained["records"]
    assert calls == {"proxy": 0, "full": 0}
    again = bl.run_baselines(second, trained["url"], epochs=2, log=lambda _m: None, kinds=KINDS)
    assert calls == {"proxy": 0, "full": len(KINDS)}
    assert [r["proxy"] for r in again] == [r["proxy"] for r in trained["records"]]
    assert all(r["full"]["epochs"] == 2 for r in bl.study_baselines(second))
    bl.run_baselines(second, trained["url"], epochs=1, log=lambda _m: None, full=False, kinds=KINDS)
    assert calls == {"proxy": 0, "full": len(KINDS)}  # proxy-only keeps what is there


def test_cli_prints_kept_baselines_as_json_and_table(trained, capsys):
    url = trained["url"]
    assert main(["baselines", "b", "--storage", url, "--epochs", "2", "--json", "--conv", *KINDS]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(out, key=lambda r: r["label"]) == bl.study_baselines(optuna.load_study(study_name="b", storage=url))
    assert main(["baselines", "b", "--storage", url, "--proxy-only", "--conv", *KINDS]) == 0
    text = capsys.readouterr().out
    assert "MFLOPs at 32x32" in text
    for r in out:
        row = next(line for line in text.splitlines() if line.split()[0] == r["label"])
        assert f"{r['proxy']['val_acc']:.4f}" in row and f"{r['mflops']:.2f}" in row


def test_a_diverged_baseline_is_kept_as_failed(tmp_path, monkeypatch, capsys, fast):
    study, url, _ = make_study(tmp_path, "d", 4.0)

    def diverge(spec, *args, **kwargs):
        if spec.stages[0].conv.kind == "scc":
            raise TrainingDiverged("loss became nan in epoch 1 by step 1")
        return real(spec, *args, **kwargs)

    real = bl.train_proxy
    monkeypatch.setattr(bl, "train_proxy", diverge)
    assert main(["baselines", "d", "--storage", url, "--proxy-only", "--conv", *KINDS]) == 1
    out, err = capsys.readouterr()
    record = next(r for r in bl.study_baselines(study) if r["conv"] == "scc")
    assert record["proxy"]["status"] == "failed" and record["proxy"]["val_acc"] is None
    assert "loss became nan" in record["proxy"]["reason"] and record["full"] is None
    assert f"{record['label']}: proxy training failed: proxy training diverged" in out
    assert "training failed for " + record["label"] in err


def test_cli_error_when_nothing_fits(tmp_path, capsys):
    study, url, _ = make_study(tmp_path, "n", 0.05)
    assert main(["baselines", "n", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no baseline fits the budget (0.05 MFLOPs at 32x32)" in err
    assert bl.study_baselines(study) == []


def add_trial(study, val_acc, mflops, mparams=0.5):
    spec = mobilenet_v2(0.5, num_classes=3, in_channels=1, resolution=32)
    attrs = {"arch": spec.to_dict(), "arch_summary": spec.summary(), "resolution": 32, "status": "complete",
             "mflops": mflops, "mparams": mparams, "val_acc": val_acc, "test_acc": val_acc - 0.01, "trained": True}
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=[val_acc, mflops], user_attrs=attrs))
    return len(study.trials) - 1


def record(label, mflops, proxy_val, full=None, proxy_status="complete"):
    return {"label": label, "conv": label.rsplit("_", 1)[-1], "width": 0.5, "arch": {}, "mflops": mflops,
            "mparams": 0.3, "resolution": 32, "train_resolution": 32,
            "proxy": {"status": proxy_status, "val_acc": proxy_val, "test_acc": proxy_val, "epochs": 1},
            "full": full}


def test_show_compares_the_best_found_with_the_best_baseline_like_with_like(tmp_path, capsys):
    study, url, _ = make_study(tmp_path, "s", 4.0)
    add_trial(study, 0.700, 1.0)
    best = add_trial(study, 0.812, 3.5)
    add_trial(study, 0.900, 5.0)  # over the budget: not "found within it"
    config = {"epochs": 20, "lr": 0.04}
    facts = {"config": config, "train_resolution": 32, "dataset": "d"}
    full = {"status": "complete", "val_acc": 0.85, "test_acc": 0.86, "epochs": 20, **facts}
    for r in (record("mobilenet_v2_w0.6_bsconv_u", 3.2, 0.795, full),
              record("mobilenet_v2_w0.5_dsc", 2.0, 0.780, {**full, "val_acc": 0.84, "test_acc": 0.95}),
              record("mobilenet_v2_w0.9_scc", 4.5, 0.990),  # over the budget
              record("mobilenet_v2_w0.7_bsconv_s", 3.0, None, proxy_status="failed")):
        study.set_user_attr(f"baseline.{r['label']}", r)
    assert main(["show", "s", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert (f"best found (trial {best}, 3.5 MFLOPs@32x32): proxy val 0.812 vs best baseline "
            "mobilenet_v2_w0.6_bsconv_u (3.2 MFLOPs@32x32): proxy val 0.795 (+0.017)") in out
    assert f"full schedule: not compared: trial {best} has no full training" in out
    study.set_user_attr(f"trained.{best}", {"test_acc": 0.83, "val_acc": 0.82, "epochs": 20, **facts})
    main(["show", "s", "--storage", url])
    # full vs full: the baseline with the best full *validation* accuracy, its test accuracy reported
    assert (f"full schedule (20 epochs): trial {best} test 0.830 vs mobilenet_v2_w0.6_bsconv_u test 0.860 (-0.030)"
            in capsys.readouterr().out)
    study.set_user_attr(f"trained.{best}", {"test_acc": 0.83, "epochs": 10, **facts, "config": {"epochs": 10}})
    main(["show", "s", "--storage", url])
    assert f"trial {best} was fully trained with another schedule" in capsys.readouterr().out


def test_dashboard_draws_baselines_as_labelled_references(trained):
    from dsearch.analysis.dashboard import conv_type_figure, pareto_figure
    from dsearch.analysis.pareto import trials_frame

    study = trained["study"]
    add_trial(study, 0.5, 2.0)
    frame = trials_frame(study)
    records = bl.study_baselines(study)
    fig = pareto_figure(frame, "mflops", 4.0, 32, baselines=records)
    refs = [t for t in fig.data if (t.name or "").startswith("baseline")]
    assert len(refs) == 1
    points = set(zip(refs[0].x, refs[0].y, strict=True))
    assert points == {(r["mflops"], r["proxy"]["val_acc"]) for r in records}
    assert list(refs[0].text) == [r["label"] for r in records] and refs[0].marker.symbol == "star"
    hover = " ".join(str(c) for row in refs[0].customdata for c in row)
    assert "hand-designed reference" in refs[0].hovertemplate and "full schedule (2 epochs): test acc" in hover
    low, high = fig.layout.yaxis.range
    assert all(low <= r["proxy"]["val_acc"] <= high for r in records)
    params = pareto_figure(frame, "mparams", None, 32, baselines=records)
    ref = next(t for t in params.data if (t.name or "").startswith("baseline"))
    assert set(ref.x) == {r["mparams"] for r in records}
    panels = conv_type_figure(frame, 32, baselines=records)
    drawn = [t for t in panels.data if (t.name or "").startswith("baseline")]
    # the trial is mostly DSC: only the DSC baseline has a panel to go in
    assert [list(t.text) for t in drawn] == [[r["label"] for r in records if r["conv"] == "dsc"]]


def test_a_diverged_full_training_is_kept_other_errors_are_raised(tmp_path, monkeypatch, fast):
    write_images(tmp_path / "images")
    b = bl.baseline_specs(Budget(4.0), 1, 3, 32, ("dsc",))[0]
    cfg = fulltrain.FullTrainConfig(dataset=f"imagefolder:{tmp_path / 'images'}", device="cpu")

    def diverge(*args, **kwargs):
        raise TrainingDiverged("loss became inf in epoch 1 by step 1")

    monkeypatch.setattr(fulltrain, "train_proxy", diverge)
    part = bl._train_full(b, cfg, {"k": 1}, lambda _m: None)  # the real train_full, whose trainer diverges
    assert part["status"] == "failed" and part["test_acc"] is None and "loss became inf" in part["reason"]
    with pytest.raises(DsearchError, match="image folder .* does not exist"):
        bl._train_full(b, dataclasses.replace(cfg, dataset=f"imagefolder:{tmp_path / 'gone'}"), {}, lambda _m: None)
