"""One self-contained HTML dashboard of a study: accuracy against cost, conv types, progress, importances.

The page embeds plotly.js once, inline, so it opens offline and can be mailed around. Every
figure reads the analysis frame of `dsearch.analysis.pareto`; MFLOPs are counted at the deployment
resolution and every axis says so. Text taken from the study (names, architecture strings,
reasons) is HTML-escaped; plotly escapes its own JSON.
"""
from __future__ import annotations

import html
import inspect
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from ..errors import DsearchError
from ..model.ops import CONV_TYPES
from ..search.budget import Budget
from ..search.record import IDENTITY_ATTR, stored_settings
from ..search.trials import count_statuses
from .audit import PREDICTORS, study_audit
from .baselines import study_baselines, trained_ok
from .pareto import (
    best_within_budget,
    chance_line,
    pareto_front,
    progress_frame,
    reference_point,
    study_budget,
    trained,
    trials_frame,
)
from .verdict import study_verdict

# A fixed colour per conv kind (Okabe-Ito, colour-blind safe), so one kind looks the same in every figure.
KIND_COLOURS = {"regular": "#0072B2", "dsc": "#E69F00", "bsconv_u": "#009E73", "bsconv_s": "#CC79A7",
                "scc": "#D55E00"}
# Kinds registered later take these in registry order (Tol's muted palette, clear of the five above).
SPARE_COLOURS = ("#56B4E9", "#882255", "#44AA99", "#999933", "#332288", "#AA4499", "#117733", "#88CCEE")
FRONT_COLOUR = "#222222"
BUDGET_COLOUR = "#B00020"
REJECTED_COLOUR = "#9E9E9E"
IMPORTANCE_COLOUR = "#4477AA"
# Progress lines stay clear of the conv-kind colours so no one reads them as a conv type.
BEST_COLOUR = "#222222"
HYPERVOLUME_COLOUR = "#6A3D9A"

STATUS_WORDS = {"complete": "complete (trained)", "rejected": "rejected (over budget, not trained)",
                "invalid": "invalid", "pruned": "pruned", "failed": "failed", "running": "running"}
MIN_IMPORTANCE_TRIALS = 5  # PED-ANOVA compares a top group with all trials; fewer than this says nothing
TOP_GROUP_SIZE = 5  # aim for this many trials in PED-ANOVA's top group (its authors' advice)

TITLE_MFLOPS = "Validation accuracy vs MFLOPs"
TITLE_MPARAMS = "Validation accuracy vs parameters"
TITLE_CONV = "Validation accuracy vs MFLOPs, one panel per dominant conv type"
TITLE_PROGRESS = "Search progress"
TITLE_IMPORTANCE = "Parameter importances for validation accuracy"
TITLE_VERDICT = "Verdict: the finalists after full training, with 95% intervals over seeds"
VERDICT_COLOURS = {"pick": "#D55E00", "tied": "#E69F00", "behind": "#0072B2", "over budget": "#9E9E9E",
                   "baseline": "#009E73"}
ROLE_WORDS = {"pick": "the pick", "tied": "tied with the best", "behind": "behind the best",
              "over budget": "over the budget", "baseline": "best baseline"}
TITLE_AUDIT = "Proxy audit: proxy validation accuracy vs test accuracy after full training"
AUDIT_COLOUR = "#4477AA"
AUDIT_HOVER = ("<b>trial %{customdata[0]}</b><br>%{customdata[1]}<br>proxy val acc %{x:.4f}, full test acc %{y:.4f}"
               "<br>%{customdata[2]}<extra></extra>")

# customdata[1] is "<x> MFLOPs at RxR": every hover names the resolution its MFLOPs were counted at.
HOVER = ("<b>trial %{customdata[0]}</b><br>%{customdata[1]}, %{customdata[2]} M params<br>"
         "val acc %{customdata[3]}, test acc %{customdata[4]}<br>%{customdata[5]}<extra>%{fullData.name}</extra>")
REJECTED_HOVER = ("<b>trial %{customdata[0]}: rejected, not trained</b><br>%{customdata[1]}, %{customdata[2]} M params"
                  "<br>%{customdata[5]}<extra>rejected</extra>")
REJECTED_STRIP = "rejected (not trained)"
CONTEXT_COLOUR = "#D9D9D9"  # the other conv types' trials behind each panel of the conv-type figure
BASELINE_HOVER = ("<b>%{customdata[0]}</b>: hand-designed reference net, not found by the search<br>%{customdata[1]}, "
                  "%{customdata[2]} M params<br>proxy (as the trials): val acc %{customdata[3]}, test acc "
                  "%{customdata[4]}<br>%{customdata[5]}<extra>baseline</extra>")


@dataclass(frozen=True)
class Section:
    """One heading of the page: a figure with its caption, or (figure None) a note in its place."""

    title: str
    figure: go.Figure | None
    caption: str = ""


@dataclass(frozen=True)
class Dashboard:
    """Everything the page shows, before it is rendered to HTML."""

    title: str
    summary: str
    sections: tuple[Section, ...]
    notes: tuple[str, ...]
    n_trials: int
    n_trained: int


@dataclass(frozen=True)
class DashboardInfo:
    """What `write_dashboard` wrote."""

    path: Path
    n_trials: int
    n_trained: int
    figures: tuple[str, ...]  # titles of the figures drawn, in page order
    notes: tuple[str, ...]  # page notes, then the notes shown in place of a figure


def kind_colour(kind: str | None) -> str:
    """The fixed colour of a conv kind (grey for none)."""
    if kind in KIND_COLOURS:
        return KIND_COLOURS[kind]
    extra = [k for k in CONV_TYPES if k not in KIND_COLOURS]
    return SPARE_COLOURS[extra.index(kind) % len(SPARE_COLOURS)] if kind in extra else REJECTED_COLOUR


def kind_label(kind: str | None) -> str:
    """The conv kind as the papers write it."""
    if not kind:
        return "no conv unit"
    return CONV_TYPES[kind].display if kind in CONV_TYPES else kind


def kind_order(kinds: pd.Series) -> list[Any]:
    """The kinds present, in registry order (unknown ones last), so legends are ordered the same everywhere."""
    present = set(kinds.dropna())
    order: list[Any] = [k for k in CONV_TYPES if k in present] + sorted(present - set(CONV_TYPES))
    return order + [None] if kinds.isna().any() else order


def deployment_resolution(frame: pd.DataFrame, study: optuna.Study | None = None) -> int | None:
    """The input size at which the trials' MFLOPs were counted (None when no trial has one yet)."""
    values = frame["resolution"].dropna() if "resolution" in frame else pd.Series(dtype=float)
    if not values.empty:
        return int(values.mode().iloc[0])
    return study_budget(study).resolution if study is not None else None  # the budget's: checked when read


def cost_label(cost: str, resolution: int | None) -> str:
    """Axis title of a cost, with its unit (and the resolution MFLOPs are counted at)."""
    if cost == "mflops":
        where = f" at {resolution}x{resolution}" if resolution else ""
        return f"MFLOPs (millions of multiply-accumulates{where})"
    return "parameters (millions)"


def _fmt(value: Any, digits: int) -> str:
    """A number for a hover label; n/a when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _arch_lines(arch: Any) -> str:
    """The compact arch string, one stage per hover line; escaped because plotly renders a little HTML."""
    if not isinstance(arch, str):
        return ""
    return "<br>".join(html.escape(part) for part in arch.split(" | "))


def _mflops_text(value: Any, resolution: Any) -> str:
    """E.g. '12.34 MFLOPs at 224x224' (the trial's own deployment resolution)."""
    where = f" at {int(resolution)}x{int(resolution)}" if resolution is not None and pd.notna(resolution) else ""
    return f"{_fmt(value, 2)} MFLOPs{where}"


def hover_data(rows: pd.DataFrame, text_column: str = "arch") -> list[list[str]]:
    """customdata rows: trial, MFLOPs at RxR, M params, val acc, test acc, and the arch string (or another text)."""
    data = []
    for _, r in rows.iterrows():
        value = r[text_column]
        text = _arch_lines(value) if text_column == "arch" else html.escape(value) if isinstance(value, str) else ""
        data.append([str(int(r["trial"])), _mflops_text(r["mflops"], r.get("resolution")), _fmt(r["mparams"], 3),
                     _fmt(r["val_acc"], 4), _fmt(r["test_acc"], 4), text])
    return data


def _accuracy_range(done: pd.DataFrame, extra: Sequence[float] = ()) -> tuple[float, float]:
    """y range (low, high) around the trained accuracies (and `extra` ones, e.g. the baselines')."""
    values = [float(v) for v in done["val_acc"]] + [float(v) for v in extra]
    low, high = min(values), max(values)
    pad = max(0.05 * (high - low), 0.01)
    return low - 2 * pad, high + 2 * pad


def pareto_figure(frame: pd.DataFrame, cost: str, budget: float | None, resolution: int | None,
                  baselines: Sequence[Mapping[str, Any]] = ()) -> go.Figure:
    """Validation accuracy against one cost: trained trials by dominant conv, Pareto step, budget, rejected,
    and the study's baselines (dsearch.analysis.baselines) as labelled reference points."""
    done = trained(frame)
    done = done[done[cost].notna()]
    if done.empty:
        raise DsearchError(f"no trained trial with a {cost} value")
    references = [b for b in baselines if trained_ok(b.get("proxy")) and b.get(cost) is not None]
    y_low, y_high = _accuracy_range(done, [b["proxy"]["val_acc"] for b in references])
    fig = go.Figure()
    for kind in kind_order(done["dominant_conv"]):
        rows = done[done["dominant_conv"] == kind] if kind is not None else done[done["dominant_conv"].isna()]
        fig.add_trace(go.Scatter(
            x=rows[cost], y=rows["val_acc"], mode="markers", name=f"{kind_label(kind)} ({len(rows)})",
            marker={"color": kind_colour(kind), "size": 10, "line": {"color": "white", "width": 1}},
            customdata=hover_data(rows), hovertemplate=HOVER))
    front = pareto_front(frame, cost=cost)
    # hv: moving right from a front point, its accuracy stays the best reachable until the next (dearer) point.
    fig.add_trace(go.Scatter(
        x=front[cost], y=front["val_acc"], mode="lines+markers", line_shape="hv", name=f"Pareto front ({len(front)})",
        line={"color": FRONT_COLOUR, "width": 2}, uid=f"pareto-{cost}",
        marker={"symbol": "circle-open", "size": 15, "color": FRONT_COLOUR, "line": {"width": 2}},
        customdata=hover_data(front), hovertemplate=HOVER))
    rejected = frame[(frame["status"] == "rejected") & frame[cost].notna()] if not frame.empty else frame
    if not rejected.empty:
        # Rejected samples have a cost but no accuracy: a rug on their own strip under the x axis, never a y value.
        fig.add_trace(go.Scatter(
            x=rejected[cost], y=[REJECTED_STRIP] * len(rejected), yaxis="y2", mode="markers",
            name=f"rejected, not trained ({len(rejected)})",
            marker={"symbol": "x-thin", "size": 9, "color": REJECTED_COLOUR,
                    "line": {"color": REJECTED_COLOUR, "width": 2}},
            customdata=hover_data(rejected, "reason"), hovertemplate=REJECTED_HOVER))
    add_baselines(fig, baselines, cost)
    unit = "MFLOPs" if cost == "mflops" else "M params"
    if budget is not None:
        # A two-point trace rather than a shape: data coordinates stay right on a log axis, and it gets a legend entry.
        fig.add_trace(go.Scatter(
            x=[budget, budget], y=[y_low, y_high], mode="lines+text", name=f"budget ({budget:g} {unit})",
            uid=f"budget-{cost}", line={"color": BUDGET_COLOUR, "width": 2, "dash": "dash"},
            text=["", f" budget {budget:g} {unit}"], textposition="bottom right",
            textfont={"color": BUDGET_COLOUR}, hoverinfo="skip"))
    xs = pd.concat([done[cost], rejected[cost]] if not rejected.empty else [done[cost]]).astype(float)
    if budget is not None:
        xs = pd.concat([xs, pd.Series([float(budget)])])
    if references:
        xs = pd.concat([xs, pd.Series([float(b[cost]) for b in references])])
    # Rejected samples can cost 10x the budget: a log axis keeps the trained ones readable next to them.
    log_x = bool(xs.min() > 0 and xs.max() / xs.min() > 10)
    xaxis: dict[str, Any] = {"title": {"text": cost_label(cost, resolution) + (" - log scale" if log_x else "")},
                             "type": "log" if log_x else "linear"}
    if log_x:  # plotly's own log ticks label 20 as "2"; spell every tick out
        ticks = log_ticks(float(xs.min()), float(xs.max()))
        xaxis.update(tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    title = TITLE_MFLOPS if cost == "mflops" else TITLE_MPARAMS
    yaxis: dict[str, Any] = {"title": {"text": "validation accuracy"}, "range": [y_low, y_high], "zeroline": False}
    layout: dict[str, Any] = {}
    if not rejected.empty:
        yaxis["domain"] = [0.14, 1.0]
        layout["yaxis2"] = {"domain": [0.0, 0.07], "type": "category", "categoryarray": [REJECTED_STRIP],
                            "fixedrange": True, "showgrid": False, "zeroline": False}
    fig.update_layout(
        title={"text": title}, template="plotly_white", height=600, hovermode="closest", xaxis=xaxis, yaxis=yaxis,
        legend={"title": {"text": "dominant conv type"}}, **layout)
    return fig


def baseline_hover(b: Mapping[str, Any]) -> list[str]:
    """customdata of a baseline: label, MFLOPs at RxR, M params, proxy val and test acc, the full schedule's result."""
    proxy, full = b.get("proxy") or {}, b.get("full") or {}
    if full.get("status") == "failed":
        result = f"full schedule: failed ({html.escape(str(full.get('reason')))})"
    elif trained_ok(full):
        result = f"full schedule ({full.get('epochs')} epochs): test acc {_fmt(full.get('test_acc'), 4)}"
    else:
        result = "full schedule: not trained (dsearch baselines STUDY)"
    return [html.escape(str(b["label"])), _mflops_text(b["mflops"], b.get("resolution")), _fmt(b.get("mparams"), 3),
            _fmt(proxy.get("val_acc"), 4), _fmt(proxy.get("test_acc"), 4), result]


def add_baselines(fig: go.Figure, baselines: Sequence[Mapping[str, Any]], cost: str, row: int | None = None,
                  col: int | None = None) -> None:
    """The baselines as labelled stars at (cost, proxy val acc), in their conv kind's colour; a baseline whose proxy
    training failed has no accuracy to stand at: it gets a legend entry saying so."""
    ok = [b for b in baselines if trained_ok(b.get("proxy")) and b.get(cost) is not None]
    if ok:
        # One legend entry for all of them, also when drawn over several panels.
        first = not any(t.legendgroup == "baselines" and t.showlegend is not False for t in fig.data)
        fig.add_trace(go.Scatter(
            x=[b[cost] for b in ok], y=[b["proxy"]["val_acc"] for b in ok], mode="markers+text",
            name="baselines: hand-designed MobileNetV2" + (f" ({len(ok)})" if row is None else ""),
            text=[html.escape(str(b["label"])) for b in ok], showlegend=first,
            # left of the star: baselines sit near the budget, at the right edge of the plot
            textposition="top left", textfont={"size": 10}, legendgroup="baselines",
            marker={"symbol": "star", "size": 16, "color": [kind_colour(b.get("conv")) for b in ok],
                    "line": {"color": FRONT_COLOUR, "width": 1}},
            customdata=[baseline_hover(b) for b in ok], hovertemplate=BASELINE_HOVER), row=row, col=col)
    for b in baselines:
        if (b.get("proxy") or {}).get("status") == "failed":
            fig.add_trace(go.Scatter(
                x=[None], y=[None], mode="markers", name=f"baseline {b['label']}: proxy training failed",
                legendgroup="baselines", marker={"symbol": "star-open", "size": 12, "color": REJECTED_COLOUR},
                hoverinfo="skip"), row=row, col=col)


def log_ticks(low: float, high: float) -> list[float]:
    """1-2-5 tick values covering [low, high] on a log axis."""
    first, last = math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1
    ticks = [m * 10.0 ** e for e in range(first, last + 1) for m in (1, 2, 5)]
    return [float(f"{t:.6g}") for t in ticks if low / 1.5 <= t <= high * 1.5]


def conv_type_figure(frame: pd.DataFrame, resolution: int | None,
                     baselines: Sequence[Mapping[str, Any]] = ()) -> go.Figure:
    """One panel per dominant conv type: its trained trials at their MFLOPs, every other type's in grey behind.

    Shared axes put the types side by side at equal cost; only measured points are drawn (no bins, means or fits),
    so a type with few trials shows just those few, where they are.
    """
    done = trained(frame)
    done = done[done["mflops"].notna()]
    if done.empty:
        raise DsearchError("no trained trial with an MFLOPs value")
    kinds = kind_order(done["dominant_conv"])
    cols = min(len(kinds), 3)
    rows = math.ceil(len(kinds) / cols)
    counts = {k: int((done["dominant_conv"] == k).sum() if k is not None else done["dominant_conv"].isna().sum())
              for k in kinds}
    fig = make_subplots(rows=rows, cols=cols, shared_xaxes="all", shared_yaxes="all", horizontal_spacing=0.04,
                        vertical_spacing=0.12,
                        subplot_titles=[f"{kind_label(k)}: {counts[k]} trial{'s' if counts[k] != 1 else ''}"
                                        for k in kinds])
    costs = done["mflops"].astype(float)
    log_x = bool(costs.min() > 0 and costs.max() / costs.min() > 10)
    for i, kind in enumerate(kinds):
        row, col = i // cols + 1, i % cols + 1
        mask = done["dominant_conv"] == kind if kind is not None else done["dominant_conv"].isna()
        others, mine = done[~mask], done[mask]
        if not others.empty:
            fig.add_trace(go.Scatter(
                x=others["mflops"], y=others["val_acc"], mode="markers", name="other conv types",
                legendgroup="other", showlegend=False, marker={"color": CONTEXT_COLOUR, "size": 7},
                hoverinfo="skip"), row=row, col=col)
        fig.add_trace(go.Scatter(
            x=mine["mflops"], y=mine["val_acc"], mode="markers", name=f"{kind_label(kind)} ({len(mine)})",
            marker={"color": kind_colour(kind), "size": 10, "line": {"color": "white", "width": 1}},
            customdata=hover_data(mine), hovertemplate=HOVER), row=row, col=col)
        add_baselines(fig, [b for b in baselines if b.get("conv") == kind], "mflops", row, col)
    where = f" at {resolution}x{resolution}" if resolution else ""
    fig.update_xaxes(type="log" if log_x else "linear")
    if log_x:
        ticks = log_ticks(float(costs.min()), float(costs.max()))
        fig.update_xaxes(tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    for col in range(1, cols + 1):
        fig.update_xaxes(title_text=f"MFLOPs{where}" + (" (log)" if log_x else ""), row=rows, col=col)
    fig.update_yaxes(title_text="validation accuracy", col=1)
    fig.update_layout(title={"text": TITLE_CONV}, template="plotly_white", height=260 + 300 * rows,
                      legend={"title": {"text": "dominant conv type"}}, hovermode="closest")
    return fig


def reference_text(frame: pd.DataFrame, budget: float | None, resolution: int | None) -> str:
    """Where the hypervolume's reference point lies and why."""
    ref = reference_point(frame, budget, "mflops")
    why = "the MFLOPs budget" if budget is not None else "1.1 x the costliest trained trial; no MFLOPs budget"
    where = f" at {resolution}x{resolution}" if resolution else ""
    return f"reference point: validation accuracy 0, {ref:.4g} MFLOPs{where} ({why})"


def progress_figure(frame: pd.DataFrame, budget: float | None, resolution: int | None) -> go.Figure:
    """Best validation accuracy within budget and hypervolume after each finished trial."""
    progress = progress_frame(frame, budget, "mflops")
    if progress.empty:
        raise DsearchError("no finished trial")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.14, subplot_titles=(
        "best validation accuracy within budget so far",
        "hypervolume of the accuracy-MFLOPs front so far<br><sup>" + html.escape(
            reference_text(frame, budget, resolution)) + "</sup>"))
    best = pd.to_numeric(progress["best_score"], errors="coerce")
    fig.add_trace(go.Scatter(x=progress["trial"], y=best, mode="lines+markers", line_shape="hv",
                             name="best val acc within budget", line={"color": BEST_COLOUR},
                             hovertemplate="after trial %{x}: %{y:.4f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=progress["trial"], y=progress["hypervolume"], mode="lines+markers", line_shape="hv",
                             name="hypervolume (accuracy x MFLOPs)", line={"color": HYPERVOLUME_COLOUR},
                             hovertemplate="after trial %{x}: %{y:.4g}<extra></extra>"), row=2, col=1)
    fig.update_layout(title={"text": TITLE_PROGRESS}, template="plotly_white", height=620, showlegend=True,
                      legend={"orientation": "h", "y": -0.15})
    fig.update_xaxes(title_text="trial number (every finished trial, rejected ones included)", row=2, col=1)
    fig.update_yaxes(title_text="validation accuracy", row=1, col=1)
    fig.update_yaxes(title_text="accuracy x MFLOPs", rangemode="tozero", row=2, col=1)
    return fig


def _ped_anova(n_complete: int) -> optuna.importance.BaseImportanceEvaluator:
    """PED-ANOVA with a top group of about TOP_GROUP_SIZE trials (its default 10% needs ~50 trials)."""
    quantile = min(0.5, max(0.1, TOP_GROUP_SIZE / n_complete))
    evaluator = optuna.importance.PedAnovaImportanceEvaluator
    # Optuna 5 calls the top quantile target_quantile; older releases only take the default.
    if "target_quantile" in inspect.signature(evaluator).parameters:
        return evaluator(target_quantile=quantile)
    return evaluator()


def param_importances(study: optuna.Study) -> tuple[dict[str, float] | None, str]:
    """Importances of the sampled parameters for validation accuracy, or None and the reason why not."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return None, (f"Parameter importances need at least {MIN_IMPORTANCE_TRIALS} complete (trained) trials; "
                      f"this study has {len(complete)}. Run more trials and regenerate the dashboard.")
    evaluator = _ped_anova(len(complete))
    # PED-ANOVA ranks what drives *low* target values, so accuracy (values[0]) is negated.
    target: Callable[[optuna.trial.FrozenTrial], float] = lambda t: -t.values[0]  # noqa: E731
    try:
        with warnings.catch_warnings():  # its small-sample and "low target" warnings are explained in the caption
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator, target=target)
    except Exception as err:  # noqa: BLE001 - any failure becomes a note on the page, not a crash
        return None, f"Parameter importances could not be computed: {type(err).__name__}: {err}"
    if not importances or not any(math.isfinite(v) and v > 0 for v in importances.values()):
        return None, (f"Parameter importances are all zero over the {len(complete)} complete trials (for example "
                      "when they all reach the same validation accuracy); nothing to rank yet.")
    quantile = getattr(evaluator, "_target_quantile", 0.1)
    caption = (f"PED-ANOVA (Optuna {optuna.__version__}): how differently each sampled parameter is distributed "
               f"among the top {quantile:.0%} of the {len(complete)} complete trials by validation accuracy than "
               "among all of them; normalized to sum to 1. Rejected, failed and running trials are not used. "
               + ("With this few trials it is a rough indication. " if len(complete) < 50 else "")
               + (f"The {MAX_IMPORTANCE_BARS} largest of {len(importances)} are shown."
                  if len(importances) > MAX_IMPORTANCE_BARS else ""))
    return importances, caption


MAX_IMPORTANCE_BARS = 20  # a space has ~40 parameters; the tail of near-zero bars only pushes the page down


def importance_figure(importances: dict[str, float]) -> go.Figure:
    """Horizontal bars, most important parameter on top (the top MAX_IMPORTANCE_BARS)."""
    items = sorted(importances.items(), key=lambda kv: kv[1])[-MAX_IMPORTANCE_BARS:]
    fig = go.Figure(go.Bar(
        x=[v for _, v in items], y=[k for k, _ in items], orientation="h", marker={"color": IMPORTANCE_COLOUR},
        text=[f"{v:.2f}" for _, v in items], textposition="outside", name="importance",
        hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_layout(title={"text": TITLE_IMPORTANCE}, template="plotly_white", height=max(360, 120 + 26 * len(items)),
                      xaxis={"title": {"text": "importance for validation accuracy (normalized)"},
                             "range": [0, 1.15 * max(v for _, v in items)]},
                      yaxis={"title": {"text": "sampled parameter"}, "automargin": True}, showlegend=False)
    return fig


def audit_figure(audit: dict[str, Any]) -> go.Figure:
    """Each audited trial at (proxy validation accuracy, test accuracy after the full schedule)."""
    trials = audit.get("trials") or {}
    if not trials:
        raise DsearchError("the stored audit has no trials")
    numbers = sorted(trials, key=int)
    rows = [trials[n] for n in numbers]
    fig = go.Figure(go.Scatter(
        x=[r["proxy_val_acc"] for r in rows], y=[r["full_test_acc"] for r in rows], mode="markers",
        name=f"audited trials ({len(rows)})",
        marker={"color": AUDIT_COLOUR, "size": 11, "line": {"color": "white", "width": 1},
                "symbol": ["diamond" if r.get("pareto") else "circle" for r in rows]},
        customdata=[[str(n), _mflops_text(r.get("mflops"), r.get("resolution")) + f", {_fmt(r.get('mparams'), 3)} "
                     "M params", _arch_lines(r.get("arch"))] for n, r in zip(numbers, rows, strict=True)],
        hovertemplate=AUDIT_HOVER))
    epochs = (audit.get("schedule") or {}).get("epochs")
    fig.update_layout(title={"text": TITLE_AUDIT}, template="plotly_white", height=520, hovermode="closest",
                      xaxis={"title": {"text": "proxy validation accuracy (the search's score)"}},
                      yaxis={"title": {"text": f"test accuracy after full training ({epochs} epochs)"}})
    return fig


def verdict_figure(verdict: dict[str, Any]) -> go.Figure:
    """The finalists and the best baseline: full-schedule validation and test means with their 95% intervals."""
    rows = verdict.get("rows") or []
    if not rows:
        raise DsearchError("the stored verdict has no finalists")
    r = verdict.get("resolution")
    fig = go.Figure()
    for score, symbol in (("val", "circle"), ("test", "diamond-open")):
        means = [row[f"{score}_mean"] for row in rows]
        fig.add_trace(go.Scatter(
            x=[row["mflops"] for row in rows], y=means, mode="markers+text" if score == "val" else "markers",
            name=f"{score} accuracy, mean over seeds",
            text=[row["key"] + (" (pick)" if row["role"] == "pick" else "") for row in rows] if score == "val"
            else None, textposition="top center",
            marker={"symbol": symbol, "size": 11, "color": [VERDICT_COLOURS[row["role"]] for row in rows]},
            error_y={"type": "data", "symmetric": False,
                     "array": [(row[f"{score}_high"] - m) if row[f"{score}_high"] is not None else 0
                               for row, m in zip(rows, means, strict=True)],
                     "arrayminus": [(m - row[f"{score}_low"]) if row[f"{score}_low"] is not None else 0
                                    for row, m in zip(rows, means, strict=True)]},
            customdata=[[row["key"], ROLE_WORDS.get(row["role"], row["role"]), str(row["n"]),
                         ", ".join(f"{v:.4f}" for v in row[score])] for row in rows],
            hovertemplate=("<b>%{customdata[0]}</b> (%{customdata[1]})<br>" + score
                           + " acc %{y:.4f} over %{customdata[2]} seeds: %{customdata[3]}<extra></extra>")))
    level = verdict.get("level", 0.95)
    fig.update_layout(title={"text": TITLE_VERDICT}, template="plotly_white", height=520, hovermode="closest",
                      xaxis={"title": {"text": cost_label("mflops", r)}},
                      yaxis={"title": {"text": f"accuracy after full training (mean, {level:.0%} interval)"}})
    return fig


def audit_caption(audit: dict[str, Any]) -> str:
    """Kendall tau (95% interval) of the proxy, MFLOPs and params against full test accuracy, and the verdict."""

    def tau(name: str, part: dict[str, Any] = audit) -> str:
        a = (part.get("agreement") or {}).get(name) or {}
        ci = a.get("tau_ci") or [None, None]
        value = f"{a['tau']:.2f}" if a.get("tau") is not None else "n/a"
        interval = f" (95% CI {ci[0]:.2f} to {ci[1]:.2f})" if ci[0] is not None else ""
        where = f" at {resolutions[0]}x{resolutions[0]}" if name == "mflops" and len(resolutions) == 1 else ""
        return f"{PREDICTORS[name][1]}{where} {value}{interval}"

    resolutions = sorted({t.get("resolution") for t in (audit.get("trials") or {}).values()} - {None})
    schedule = audit.get("schedule") or {}
    said = str(audit.get("verdict", "")).removeprefix("verdict: ")
    both = audit.get("with_baselines")
    joint = ""
    if both:
        said_both = str(both.get("verdict", "")).removeprefix("verdict: ")
        joint = (f" With the {len(both.get('baselines') or [])} fully trained baselines added: "
                 f"{'; '.join(tau(name, both) for name in PREDICTORS)}; {said_both}.")
    return (f"Each point is an audited trial (diamonds: on the Pareto front), retrained with the full schedule "
            f"({schedule.get('epochs')} epochs). Kendall tau with full test accuracy: "
            f"{'; '.join(tau(name) for name in PREDICTORS)}. {said[:1].upper() + said[1:]}.{joint} "
            f"Made by {audit.get('made')}; `dsearch audit` updates it.")


def status_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Trials per dsearch status, by the same rule as `dsearch run` and `dsearch show`."""
    return count_statuses(zip(frame["state"], frame["status"], strict=True))


def summary_text(study: optuna.Study, frame: pd.DataFrame, budget: Budget,
                 resolution: int | None) -> str:
    """The page's opening paragraph (plain text): study, counts per status, budget, resolution, best trial."""
    identity = stored_settings(study, IDENTITY_ATTR)
    facts = ", ".join(f"{k} {identity[k]}" for k in ("space", "dataset", "objective") if identity.get(k))
    counts = status_counts(frame)
    listed = ", ".join(f"{n} {STATUS_WORDS.get(s, s)}" for s, n in counts.items() if n)
    where = f" at {resolution}x{resolution}" if resolution else ""
    parts = [f"Study '{study.study_name}'" + (f" ({facts})" if facts else "") + f": {len(frame)} trials"
             + (f" - {listed}." if listed else "."),
             f"Budget: {budget.describe()}" + (f" (MFLOPs counted{where})." if budget.mflops is not None else "."),
             f"Deployment resolution (where MFLOPs are counted): {resolution}x{resolution}." if resolution
             else "Deployment resolution: not known yet (no trial has been costed)."]
    try:
        best = best_within_budget(frame, budget)
    except DsearchError:
        parts.append("Best trial within budget: none yet.")
    else:
        parts.append(f"Best trial within budget: trial {int(best['trial'])}, validation accuracy "
                     f"{best['val_acc']:.4f} (test {_fmt(best['test_acc'], 4)}), {best['mflops']:.2f} MFLOPs{where}, "
                     f"{_fmt(best['mparams'], 3)} M params: {best['arch'] or 'architecture not recorded'}.")
    return " ".join(parts)


def _figure_section(title: str, build: Callable[[], go.Figure], caption: str) -> Section:
    """A figure section; a figure that cannot be drawn becomes a note instead of breaking the page."""
    try:
        return Section(title, build(), caption)
    except Exception as err:  # noqa: BLE001 - one broken figure must not cost the whole dashboard
        return Section(title, None, f"Not drawn: {type(err).__name__}: {err}")


def build_dashboard(study: optuna.Study, title: str | None = None) -> Dashboard:
    """Every section of the dashboard, from the study's current trials."""
    frame = trials_frame(study)
    budget = study_budget(study)
    resolution = deployment_resolution(frame, study)
    done = trained(frame)
    notes: list[str] = []
    counts = status_counts(frame)
    if counts["running"]:
        notes.append(f"{counts['running']} trial(s) still running; they appear once finished - regenerate the "
                     "dashboard then.")
    sections: list[Section] = []
    references = study_baselines(study)
    stars = (" Stars are hand-designed reference nets (MobileNetV2 at the largest width within the budget, with each "
             "conv kind; `dsearch baselines`), trained with the same proxy: their validation accuracy is comparable; "
             "hover for their full-schedule test accuracy." if references else "")
    chance = chance_line(frame)
    if chance:
        notes.insert(0, f"Warning: {chance}.")
    if done.empty:
        notes.insert(0, f"No trained trial yet: run `dsearch run --study-name {study.study_name}` (with this "
                        "study's --storage and settings) to train some, then regenerate the dashboard.")
    else:
        where = f" at {resolution}x{resolution}" if resolution else ""
        sections.append(_figure_section(
            TITLE_MFLOPS, lambda: pareto_figure(frame, "mflops", budget.mflops, resolution, references),
            f"Each dot is a trained architecture, coloured by the conv type of most of its conv units. The black "
            f"staircase is the Pareto front (no other trial is both cheaper and more accurate). Grey x marks on the "
            f"strip under the plot, labelled '{REJECTED_STRIP}', are samples rejected before training because they "
            f"were over budget: they have a cost but no accuracy. MFLOPs counted{where}.{stars}"))
        sections.append(_figure_section(
            TITLE_MPARAMS, lambda: pareto_figure(frame, "mparams", budget.mparams, resolution, references),
            "The same trials against their trainable parameters; the staircase is the Pareto front over parameters."
            + stars))
        sections.append(_figure_section(
            TITLE_CONV, lambda: conv_type_figure(frame, resolution, references),
            "Each panel shows the trained trials whose conv units are mostly of one type, in its colour, over "
            "every other trained trial in grey, on shared axes: compare types at equal MFLOPs only where both have "
            "points. Only measured trials are drawn (no averages, bins or fits), so a type with few trials shows "
            "only those few."))
        sections.append(_figure_section(
            TITLE_PROGRESS, lambda: progress_figure(frame, budget.mflops, resolution),
            "Hypervolume: the area of the (MFLOPs down, accuracy up) plane dominated by the Pareto front, bounded by "
            f"the {reference_text(frame, budget.mflops, resolution)}; it grows when the front improves."))
        importances, caption = param_importances(study)
        sections.append(Section(TITLE_IMPORTANCE, importance_figure(importances), caption) if importances
                        else Section(TITLE_IMPORTANCE, None, caption))
        try:
            verdict = study_verdict(study)
        except DsearchError as err:  # the trials are still worth a page; the note says what to do
            verdict = None
            notes.append(f"Warning: {err}.")
        if verdict is not None:
            sections.append(_figure_section(
                TITLE_VERDICT, lambda: verdict_figure(verdict),
                "The finals' last rung: each finalist and the best baseline trained with the full schedule at "
                f"seeds {', '.join(map(str, verdict.get('seeds') or []))}; dots are validation means (which choose), "
                "open diamonds test means (only reported), bars their 95% t intervals. " + " ".join(
                    verdict.get("sentences") or [])))
        audit = study_audit(study)
        if audit is not None:
            sections.append(_figure_section(TITLE_AUDIT, lambda: audit_figure(audit), audit_caption(audit)))
    return Dashboard(title=title or f"dsearch study '{study.study_name}'",
                     summary=summary_text(study, frame, budget, resolution), sections=tuple(sections),
                     notes=tuple(notes), n_trials=len(frame), n_trained=len(done))


# Records script errors and, after load, how many plots drew, where `chromium --dump-dom` can read them.
ERROR_TRAP = """<script>
(function () {
  var errors = window.__dsearchErrors = [];
  function show() {
    var pre = document.getElementById("js-errors");
    if (pre) { pre.textContent = errors.join("\\n"); }
    document.documentElement.setAttribute("data-js-errors", String(errors.length));
  }
  window.addEventListener("error", function (e) {
    errors.push(String(e.message || "error") + (e.filename ? " (" + e.filename + ":" + e.lineno + ")" : ""));
    show();
  });
  window.addEventListener("unhandledrejection", function (e) {
    var r = e.reason;
    errors.push("unhandled rejection: " + String(r && r.message ? r.message : r));
    show();
  });
  function countPlots() {
    var n = 0;
    document.querySelectorAll(".js-plotly-plot").forEach(function (div) {
      if (div.querySelector(".main-svg") && div.querySelector(".main-svg .trace")) { n += 1; }
    });
    document.getElementById("plots-rendered").textContent = String(n);
    document.documentElement.setAttribute("data-plots-rendered", String(n));
    show();
  }
  window.addEventListener("load", function () {
    countPlots();
    setTimeout(countPlots, 300);
    setTimeout(countPlots, 1500);
  });
})();
</script>"""

STYLE = """<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 1400px; margin: 1.5em auto;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
p.summary { font-size: 1.02em; line-height: 1.5; }
p.caption { color: #555; font-size: 0.92em; margin-top: 0.2em; }
.note { background: #fff6e0; border-left: 4px solid #e6a800; padding: 0.6em 0.9em; }
footer { color: #777; font-size: 0.85em; margin-top: 2.5em; }
</style>"""


def render_html(dashboard: Dashboard) -> str:
    """The page: plotly.js inline once (with the first figure), every other figure reusing it."""
    esc = html.escape
    body = [f"<h1>{esc(dashboard.title)}</h1>", f'<p class="summary">{esc(dashboard.summary)}</p>']
    body += [f'<p class="note">{esc(note)}</p>' for note in dashboard.notes]
    drawn = 0
    for i, section in enumerate(dashboard.sections, start=1):
        body.append(f'<h2 id="section-{i}">{esc(section.title)}</h2>')
        if section.figure is None:
            body.append(f'<p class="note">{esc(section.caption)}</p>')
            continue
        body.append(pio.to_html(section.figure, include_plotlyjs=drawn == 0, full_html=False, div_id=f"figure-{i}",
                                config={"displaylogo": False}))
        if section.caption:
            body.append(f'<p class="caption">{esc(section.caption)}</p>')
        drawn += 1
    offline = " plotly.js is embedded, so this file opens offline." if drawn else ""
    body.append(f"<footer>Generated by dsearch from the study's storage.{offline} Validation accuracy chooses "
                "architectures; test accuracy is reported only.</footer>")
    body.append(f'<pre id="js-errors" hidden></pre><p id="plots-rendered" data-expected="{drawn}" hidden>0</p>')
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', ERROR_TRAP,
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(dashboard.title)}</title>", STYLE, "</head>", f'<body data-plots-expected="{drawn}">',
        *body, "</body>", "</html>", ""])


def dashboard_html(study: optuna.Study, title: str | None = None) -> str:
    """The study's dashboard as one self-contained HTML page."""
    return render_html(build_dashboard(study, title))


def write_dashboard(study: optuna.Study, path: Path, title: str | None = None) -> DashboardInfo:
    """Write the dashboard to `path` atomically (a reader never sees half a file) and say what it holds."""
    path = Path(path)
    dashboard = build_dashboard(study, title)
    page = render_html(dashboard)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(page)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return DashboardInfo(path=path, n_trials=dashboard.n_trials, n_trained=dashboard.n_trained,
                         figures=tuple(s.title for s in dashboard.sections if s.figure is not None),
                         notes=dashboard.notes + tuple(s.caption for s in dashboard.sections if s.figure is None))
