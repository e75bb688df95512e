"""The HTML dashboard on small hand-made studies (no training): content, Pareto truth, edge cases, a real browser."""
import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from plotly.offline import get_plotlyjs

from dsearch.analysis.dashboard import (
    KIND_COLOURS,
    TITLE_CONV,
    TITLE_IMPORTANCE,
    TITLE_MFLOPS,
    TITLE_MPARAMS,
    TITLE_PROGRESS,
    conv_type_figure,
    dashboard_html,
    param_importances,
    pareto_figure,
    progress_figure,
    write_dashboard,
)
from dsearch.analysis.pareto import trials_frame
from dsearch.model.ops import CONV_TYPES
from dsearch.model.presets import preset, with_conv

BUDGET = 20.0
RESOLUTION = 32
ALL_TITLES = (TITLE_MFLOPS, TITLE_MPARAMS, TITLE_CONV, TITLE_PROGRESS, TITLE_IMPORTANCE)
PAYLOAD = "</script><script>alert(1)</script>"
NO_TRAINED = "No trained trial yet"

# (conv kind, width, MFLOPs, M params, val acc); costs are made up so the Pareto truth is under the test's control.
TRAINED = [
    ("regular", 1.0, 18.0, 0.27, 0.91),
    ("dsc", 1.0, 4.1, 0.05, 0.86),
    ("scc", 1.0, 2.5, 0.03, 0.86),
    ("bsconv_u", 1.0, 4.1, 0.05, 0.88),
    ("bsconv_s", 1.0, 3.0, 0.02, 0.84),
    ("regular", 0.5, 6.0, 0.07, 0.89),
    ("scc", 0.5, 1.2, 0.01, 0.80),
    ("dsc", 0.5, 1.5, 0.015, 0.78),
    ("scc", 1.0, 2.5, 0.03, 0.86),  # the same point as an earlier trial
    ("bsconv_u", 0.5, 9.0, 0.10, 0.88),
    ("regular", 1.5, 19.5, 0.60, 0.915),
    ("dsc", 1.5, 8.0, 0.12, 0.87),
]
REJECTED = [("regular", 2.0, 35.0, 1.1), ("dsc", 2.0, 180.0, 0.9), ("bsconv_s", 1.5, 24.0, 0.3)]


def identity(budget_mparams=None):
    return {"space": "residual", "dataset": "x", "budget_mflops": BUDGET, "budget_mparams": budget_mparams,
            "resolution": None, "objective": "multi"}


def new_study(name="t", budget_mparams=None, storage=None):
    study = optuna.create_study(study_name=name, directions=["maximize", "minimize"],
                                storage=storage or optuna.storages.InMemoryStorage())
    study.set_user_attr("dsearch_identity", identity(budget_mparams))
    return study


def arch_attrs(kind, width, summary=None):
    spec = with_conv(preset("resnet20", width=width, num_classes=10, in_channels=1), kind)
    return {"arch": spec.to_json(), "arch_summary": summary or spec.summary(), "resolution": RESOLUTION}


PARAMS = {"stage1.conv": CategoricalDistribution(list(CONV_TYPES)), "stem.width": IntDistribution(8, 32)}


def add_trained(study, kind, width, mflops, mparams, acc, summary=None):
    attrs = {**arch_attrs(kind, width, summary), "mflops": mflops, "mparams": mparams, "status": "complete",
             "val_acc": acc, "test_acc": acc - 0.01}
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=[acc, mflops], user_attrs=attrs,
                                 params={"stage1.conv": kind, "stem.width": int(16 * width)}, distributions=PARAMS))


def add_rejected(study, kind, width, mflops, mparams):
    attrs = {**arch_attrs(kind, width), "mflops": mflops, "mparams": mparams, "status": "rejected",
             "reason": f"over budget: {mflops} MFLOPs"}
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs=attrs))


def full_study(name="t", budget_mparams=None, storage=None):
    study = new_study(name, budget_mparams, storage)
    for i, row in enumerate(TRAINED):
        add_trained(study, *row)
        if i < len(REJECTED):
            add_rejected(study, *REJECTED[i])
    return study


def trace(fig, prefix):
    found = [t for t in fig.data if (t.name or "").startswith(prefix)]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


def non_dominated(points):
    """Brute force: points no other point beats in (cost down, score up); equal points do not dominate each other."""
    return {(c, s) for c, s in points
            if not any(c2 <= c and s2 >= s and (c2, s2) != (c, s) for c2, s2 in points)}


def test_page_is_self_contained_with_every_figure():
    page = dashboard_html(full_study())
    bundle = get_plotlyjs()
    assert page.count(bundle) == 1  # plotly.js inline, exactly once
    assert page.count(bundle[:300]) == 1  # and no second, different copy
    outside = page.replace(bundle, "")
    assert not re.search(r"<script[^>]*\ssrc=", outside) and "<link" not in outside
    assert "http" not in outside  # nothing fetched from the network (the bundle itself names URLs it never uses)
    assert page.count("Plotly.newPlot(") == len(ALL_TITLES)
    for title in ALL_TITLES:
        assert f">{title}</h2>" in page
    assert NO_TRAINED not in page
    assert "MFLOPs (millions of multiply-accumulates at 32x32)" in page
    assert "12 complete (trained), 3 rejected" in page
    assert "Best trial within budget: trial 13" in page  # 0.915 at 19.5 MFLOPs: TRAINED[10], after 3 rejected


@pytest.mark.parametrize("cost, column", [("mflops", 2), ("mparams", 3)])
def test_pareto_step_is_the_brute_force_front(cost, column):
    frame = trials_frame(full_study())
    fig = pareto_figure(frame, cost, None, RESOLUTION)
    front = trace(fig, "Pareto front")
    assert front.line.shape == "hv"
    assert list(front.x) == sorted(front.x)
    truth = non_dominated([(row[column], row[4]) for row in TRAINED])
    assert set(zip(front.x, front.y, strict=True)) == truth
    assert len(front.x) == len(truth)  # a duplicated point is drawn once
    # every trained trial is plotted once, in the trace of its conv kind, with its trial number in the hover
    plotted = {}
    for kind in {row[0] for row in TRAINED}:
        t = trace(fig, {"regular": "regular", "dsc": "DSC", "bsconv_u": "BSConv-U", "bsconv_s": "BSConv-S",
                        "scc": "SCC"}[kind] + " (")
        assert t.marker.color == KIND_COLOURS[kind]
        for x, y, data in zip(t.x, t.y, t.customdata, strict=True):
            plotted[int(data[0])] = (kind, x, y)
            assert "bb" in data[5]  # the compact arch string
    done = frame[frame["status"] == "complete"][["trial", "dominant_conv", cost, "val_acc"]]
    expected = {int(n): (k, c, a) for n, k, c, a in done.itertuples(index=False)}
    assert plotted == expected
    rejected = trace(fig, "rejected")
    assert sorted(rejected.x) == sorted(row[column] for row in REJECTED)
    # no invented accuracy: rejected trials sit on their own category strip, not on the accuracy axis
    assert rejected.yaxis == "y2" and set(rejected.y) == {"rejected (not trained)"}
    assert all(t.yaxis in (None, "y") for t in fig.data if t is not rejected and not t.name.startswith("budget"))
    assert all(d[1].endswith(f"MFLOPs at {RESOLUTION}x{RESOLUTION}") for t in fig.data if t.customdata is not None
               for d in t.customdata)


def test_budget_line_sits_at_the_budget():
    frame = trials_frame(full_study(budget_mparams=0.5))
    flops = trace(pareto_figure(frame, "mflops", BUDGET, RESOLUTION), "budget")
    assert list(flops.x) == [BUDGET, BUDGET] and flops.line.dash == "dash"
    assert "20 MFLOPs" in flops.name
    params = trace(pareto_figure(frame, "mparams", 0.5, RESOLUTION), "budget")
    assert list(params.x) == [0.5, 0.5]
    no_limit = pareto_figure(frame, "mparams", None, RESOLUTION)
    assert not [t for t in no_limit.data if t.name.startswith("budget")]


def test_conv_kinds_keep_their_colour_across_figures():
    frame = trials_frame(full_study())
    scatter = {t.name: t.marker.color for t in pareto_figure(frame, "mflops", BUDGET, RESOLUTION).data
               if t.name.split(" (")[0] in {"regular", "DSC", "BSConv-U", "BSConv-S", "SCC"}}
    panels = {t.name: t.marker.color for t in conv_type_figure(frame, RESOLUTION).data if t.name != "other conv types"}
    assert scatter == panels and len(scatter) == 5
    assert len(set(scatter.values())) == 5


def test_conv_panels_show_each_measured_trial_once_at_its_cost():
    frame = trials_frame(full_study())
    fig = conv_type_figure(frame, RESOLUTION)
    coloured = [t for t in fig.data if t.name != "other conv types"]
    assert len(coloured) == len({row[0] for row in TRAINED})  # one panel per conv type present
    seen = sorted((float(x), float(y)) for t in coloured for x, y in zip(t.x, t.y, strict=True))
    assert seen == sorted((row[2], row[4]) for row in TRAINED)  # every trained trial, no bin or mean
    for t in coloured:  # behind each panel: exactly the other types' trials, in grey
        grey = [g for g in fig.data if g.name == "other conv types" and g.xaxis == t.xaxis]
        assert sum(len(g.x) for g in grey) == len(TRAINED) - len(t.x)
    titles = [a.text for a in fig.layout.annotations]
    assert "BSConv-S: 1 trial" in titles and "regular: 3 trials" in titles


def test_progress_ends_at_the_brute_force_hypervolume_and_best_accuracy():
    study = full_study()
    fig = progress_figure(trials_frame(study), BUDGET, RESOLUTION)
    best, hv = fig.data
    assert best.y[-1] == pytest.approx(max(row[4] for row in TRAINED if row[2] <= BUDGET))
    # The area dominated in (MFLOPs up to the budget) x (accuracy above 0), integrated over a fine MFLOPs grid.
    step = BUDGET / 20000
    area = sum(step * max((a for _, _, c, _, a in TRAINED if c <= (i + 0.5) * step), default=0.0)
               for i in range(20000))
    assert hv.y[-1] == pytest.approx(area, rel=1e-3)
    assert list(hv.x) == sorted(t.number for t in study.trials)
    assert "reference point: validation accuracy 0, 20 MFLOPs at 32x32 (the MFLOPs budget)" in dashboard_html(study)


def test_importances_rank_what_leads_to_high_accuracy():
    # The 5 most accurate trials all have a = 0; the 5 least accurate all have b = 0; elsewhere both are spread.
    # Accuracy is maximized, so `a` must come out as the important one (a sign error would pick `b`).
    dists = {"a": IntDistribution(0, 3), "b": IntDistribution(0, 3)}
    study = new_study()
    for i in range(20):
        a, b = (0 if i < 5 else i % 4), (0 if i >= 15 else (i + 1) % 4)
        study.add_trial(create_trial(state=TrialState.COMPLETE, values=[0.9 - 0.01 * i, 1.0], params={"a": a, "b": b},
                                     distributions=dists))
    importances, caption = param_importances(study)
    assert importances is not None and importances["a"] > importances["b"]
    assert "top 25% of the 20 complete trials" in caption


def test_too_few_trials_for_importances_is_a_note():
    study = new_study()
    for row in TRAINED[:3]:
        add_trained(study, *row)
    importances, caption = param_importances(study)
    assert importances is None and "at least 5" in caption and "has 3" in caption
    page = dashboard_html(study)
    assert page.count("Plotly.newPlot(") == 4 and html.escape(caption) in page


def test_empty_study_gives_a_page_with_the_message(tmp_path):
    info = write_dashboard(new_study("empty"), tmp_path / "empty.html")
    page = info.path.read_text()
    assert NO_TRAINED in page and "dsearch run" in page
    assert info.figures == () and info.n_trials == 0 and info.n_trained == 0
    assert "Plotly.newPlot(" not in page and 'data-plots-expected="0"' in page


def test_only_rejected_trials_give_a_page_with_the_message():
    study = new_study()
    for row in REJECTED:
        add_rejected(study, *row)
    page = dashboard_html(study)
    assert NO_TRAINED in page and "3 rejected (over budget, not trained)" in page
    assert "Best trial within budget: none yet" in page


def test_a_running_trial_is_counted_not_plotted():
    study = full_study()
    running = study.ask()
    running.set_user_attr("status", "training")
    running.set_user_attr("mflops", 5.0)
    page = dashboard_html(study)
    assert "1 running" in page and "still running" in page
    assert page.count("Plotly.newPlot(") == len(ALL_TITLES)
    alone = new_study("alone")
    alone.ask()
    assert NO_TRAINED in dashboard_html(alone)


def test_study_text_is_escaped():
    study = new_study(name=f"evil{PAYLOAD}")
    for kind, width, mflops, mparams, acc in TRAINED:
        add_trained(study, kind, width, mflops, mparams, acc, summary=f"s16 | {PAYLOAD}")
    page = dashboard_html(study, title=f"title {PAYLOAD}")
    assert PAYLOAD not in page and "alert(1)</script>" not in page
    assert html.escape(PAYLOAD) in page  # shown as text, not dropped


def test_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "out" / "dash.html"
    info = write_dashboard(full_study(), target)
    assert info.path == target and info.figures == ALL_TITLES and info.n_trials == 15 and info.n_trained == 12
    assert os.stat(target).st_mode & 0o044 == 0o044
    before = target.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_dashboard(new_study("other"), target)
    assert target.read_bytes() == before  # the old page survives a failed write
    assert sorted(p.name for p in target.parent.iterdir()) == ["dash.html"]  # no temp file left


def render_in_chromium(page: Path, profile: Path) -> tuple[list[str], int]:
    """The JS errors the page recorded and the number of plots it drew, read from chromium's DOM after load."""
    cmd = [shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
           "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True).stdout
    errors = re.search(r'<pre id="js-errors"[^>]*>(.*?)</pre>', dom, re.S)
    rendered = re.search(r'<html[^>]*data-plots-rendered="(\d+)"', dom)
    assert errors is not None and rendered is not None, dom[-2000:]
    text = html.unescape(errors.group(1)).strip()
    return (text.split("\n") if text else []), int(rendered.group(1))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs a chromium binary on PATH for the browser test")
def test_every_figure_renders_in_a_browser_without_errors(tmp_path):
    info = write_dashboard(full_study(), tmp_path / "dash.html")
    errors, rendered = render_in_chromium(info.path, tmp_path / "profile")
    assert errors == [] and rendered == len(info.figures) == len(ALL_TITLES)
    # The trap itself works: the same page with a script error reports it.
    broken = tmp_path / "broken.html"
    broken.write_text(info.path.read_text().replace("</body>", "<script>throw new Error('boom')</script></body>"))
    errors, rendered = render_in_chromium(broken, tmp_path / "profile")
    assert len(errors) == 1 and "boom" in errors[0] and rendered == len(ALL_TITLES)
