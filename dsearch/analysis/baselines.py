"""Hand-designed reference nets at a study's budget: MobileNetV2 and the same net with each separable conv swapped in.

For a study's budget (MFLOPs and/or M params at its deployment resolution) the baselines are
MobileNetV2 as published (its conv unit: depthwise + BN + ReLU6 + pointwise, `dsc`) at the
largest width multiplier on the grid WIDTHS (0.1 to 2.0 in steps of 0.05) that fits, and the
same net with its conv unit switched to each other separable kind (`bsconv_u`, `bsconv_s`,
`scc`, at the registry's default knobs; the BN + ReLU6 between the two parts carry over where
the kind takes them). A swap changes the cost (BSConv-U's pointwise runs before the stride, so
it costs more), so each variant gets the largest grid width at which it fits: every baseline
costs at most the budget. Widths are searched by costing every grid point with the analytic
cost model (no assumption that cost grows with width; ~40 costings per kind).

Each baseline is trained with the study's proxy (same data, split, subset, resolution and
settings as its trials, so its proxy validation accuracy sits on the trials' axes) and with the
full schedule of `dsearch train`. Results are kept on the study as user attrs
`baseline.<label>` as soon as each is trained, so a rerun (or another worker on the same
storage) trains only what is missing or was trained with another schedule. A baseline whose
training diverged is kept with the reason, never with a made-up accuracy.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from ..checks import check_int
from ..cost.count import Cost, spec_cost
from ..cost.memory import check_fits_memory
from ..data import load_dataset
from ..errors import DsearchError, deferred_interrupts
from ..latency import LatencyModel
from ..model.archspec import ArchSpec, ArchSpecError
from ..model.ops import CONV_TYPES
from ..model.presets import mobilenet_v2, with_conv
from ..search.budget import Budget
from ..search.config import SearchConfig
from ..search.record import BASELINE_PREFIX, CONFIG_ATTR, damaged, full_training, made_by, stored_settings, study_budget
from ..search.resume import plain
from ..training.failures import check_finite_state
from ..training.full import FullTrainConfig, study_full_config, train_full
from ..training.proxy import DeviceData, ProxyConfig, TrainingDiverged, check_proxy, select_device, train_proxy
from ..training.schedule import schedule_key

ATTR_PREFIX = BASELINE_PREFIX
WIDTH_STEP = 0.05
WIDTHS = tuple(round(k * WIDTH_STEP, 2) for k in range(2, 41))  # 0.1, 0.15, ..., 2.0
# The conv kinds swapped into MobileNetV2, from the registry (ConvType.baseline); `dsc` is the net as published.
# `regular` is left out: a dense k x k conv on the expanded width is no mobile design (at the same budget it would
# shrink the net to a few channels).
KINDS = tuple(name for name, ct in CONV_TYPES.items() if ct.baseline)


@dataclass(frozen=True)
class Baseline:
    """One reference net: its label, conv kind, width multiplier, architecture and cost at the deployment size."""

    label: str
    conv: str
    width: float
    spec: ArchSpec
    cost: Cost


def variant(width: float, kind: str, in_channels: int, num_classes: int, resolution: int) -> ArchSpec:
    """MobileNetV2 at `width` with its conv unit switched to `kind` (default knobs; `dsc` is the published net)."""
    spec = mobilenet_v2(width, num_classes=num_classes, in_channels=in_channels, resolution=resolution)
    return spec if kind == "dsc" else with_conv(spec, kind)


def baseline_label(width: float, kind: str) -> str:
    return f"mobilenet_v2_w{width:g}_{kind}"


def widest_within(budget: Budget, kind: str, in_channels: int, num_classes: int, resolution: int,
                  latency: Callable[[ArchSpec], float] | None = None) -> Baseline | None:
    """The variant `kind` at the largest grid width that is valid and within `budget`; None when none fits.

    A latency limit is checked with `latency` (a prediction, spec -> ms): latency grows with the width, so the
    widths within the other limits are bisected, a few predictions per kind instead of one per width."""
    fitting: list[Baseline] = []
    counted = replace(budget, ms=None, latency_target=None)
    for width in WIDTHS:
        try:
            spec = variant(width, kind, in_channels, num_classes, resolution)
        except ArchSpecError:
            continue  # e.g. SCC groups that do not divide a width: this kind has no net at this width
        if counted.fits(spec):
            fitting.append(Baseline(baseline_label(width, kind), kind, width, spec, spec_cost(spec)))
    if budget.ms is None or not fitting:
        return fitting[-1] if fitting else None
    if latency is None:
        raise DsearchError("the budget limits latency: choosing its baselines needs the study's latency model")
    lo, hi = -1, len(fitting)  # fitting[lo] within the latency limit (-1: none known), fitting[hi] over it
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if latency(fitting[mid].spec) <= budget.ms:
            lo = mid
        else:
            hi = mid
    return fitting[lo] if lo >= 0 else None


def baseline_specs(budget: Budget, in_channels: int, num_classes: int, resolution: int,
                   kinds: Sequence[str] = KINDS, latency: Callable[[ArchSpec], float] | None = None) -> list[Baseline]:
    """MobileNetV2 and its conv swaps (`kinds`, of KINDS), each at its largest width within `budget` (counted at
    `resolution`; a latency limit checked with `latency`, spec -> predicted ms).

    Raises DsearchError when the budget sets no limit, or when even MobileNetV2 at the smallest width is over it.
    """
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise DsearchError(f"no baseline of conv kind {', '.join(unknown) or '(none given)'}; the baselines are "
                           f"MobileNetV2 with {', '.join(KINDS)}")
    if not budget.limited:
        raise DsearchError("the study has no budget; baselines are reference nets at a study's budget "
                           "(create the study with --budget-mflops, --budget-mparams and/or --budget-ms)")
    budget = replace(budget, resolution=resolution)
    found = [b for kind in kinds if (b := widest_within(budget, kind, in_channels, num_classes, resolution, latency))]
    if not found:
        smallest = spec_cost(variant(WIDTHS[0], "dsc", in_channels, num_classes, resolution))
        raise DsearchError(
            f"no baseline fits the budget ({budget.describe()} at {resolution}x{resolution}): MobileNetV2 at its "
            f"smallest width {WIDTHS[0]:g} costs {smallest.mflops:.2f} MFLOPs, {smallest.mparams:.3f} M params, and "
            "no conv swap fits either; there is no hand-designed reference at this budget")
    return found


def study_search_config(study: optuna.Study) -> SearchConfig:
    """The settings a study was searched with, as stored on it by `dsearch run`."""
    stored = stored_settings(study, CONFIG_ATTR)
    if not stored:
        raise DsearchError(f"study '{study.study_name}' holds no dsearch settings ({CONFIG_ATTR}); baselines need a "
                           "study made by `dsearch run`")
    proxy_fields = {f.name for f in dataclasses.fields(ProxyConfig)}
    fields = {f.name for f in dataclasses.fields(SearchConfig)} - {"proxy"}
    try:
        proxy = ProxyConfig(**{k: v for k, v in (stored.get("proxy") or {}).items() if k in proxy_fields})
        return SearchConfig(**{k: v for k, v in stored.items() if k in fields}, proxy=proxy)
    except TypeError as err:  # a key that is no field name (not a string) in a hand-edited record
        raise damaged(study, CONFIG_ATTR, f"cannot be read ({err})", "restore the study's storage from a copy") \
            from None


def study_latency(study: optuna.Study, log: Callable[[str], None] | None = None) -> LatencyModel | None:
    """The latency model of the study's latency target (None: the study has none; MFLOPs are its cost)."""
    search = study_search_config(study)
    target = search.cost_target
    if target is None:
        return None
    table = Path(search.latency_table) if search.latency_table else None
    return LatencyModel.for_target(target, table=table, log=log)


def study_deployment_budget(study: optuna.Study) -> tuple[Budget, int]:
    """The study's budget and the deployment resolution it is counted at."""
    budget = study_budget(study)
    if not budget.resolution:
        raise DsearchError(f"study '{study.study_name}' records no deployment resolution; baselines need a study made "
                           "by `dsearch run`")
    return budget, budget.resolution


def study_baselines(study: optuna.Study) -> list[dict[str, Any]]:
    """Every baseline kept on the study, by label."""
    attrs = study.user_attrs
    return [attrs[k] for k in sorted(attrs) if k.startswith(ATTR_PREFIX) and isinstance(attrs[k], Mapping)]


def trained_ok(part: Mapping[str, Any] | None) -> bool:
    """True for a proxy/full result that trained to an accuracy (not missing, not failed)."""
    return part is not None and part.get("status") == "complete" and part.get("val_acc") is not None


def _current(part: Mapping[str, Any] | None, schedule: dict[str, Any]) -> bool:
    """True for a result (complete or failed) of this very schedule: it is kept, not trained again."""
    return part is not None and part.get("schedule") == schedule


def new_record(b: Baseline, train_resolution: int) -> dict[str, Any]:
    """A baseline's record before any training."""
    return plain({"label": b.label, "conv": b.conv, "width": b.width, "arch": b.spec.to_dict(),
                  "mflops": b.cost.mflops, "mparams": b.cost.mparams, "resolution": b.spec.resolution,
                  "train_resolution": train_resolution, "proxy": None, "full": None, "made": made_by()})


def _store(study: optuna.Study, record: dict[str, Any]) -> None:
    record["made"] = made_by()  # the last training's version and time; each result holds its own schedule
    study.set_user_attr(ATTR_PREFIX + record["label"], plain(record))


def _failure(schedule: dict[str, Any], epochs: int, reason: str) -> dict[str, Any]:
    return {"status": "failed", "reason": reason, "val_acc": None, "test_acc": None, "epochs": epochs,
            "schedule": schedule}


@deferred_interrupts()  # Ctrl-C and SIGTERM stop it between storage writes, never inside one
def run_baselines(study: optuna.Study, storage_url: str, *, epochs: int | None = None,
                  log: Callable[[str], None] = print, full: bool = True,
                  kinds: Sequence[str] = KINDS) -> list[dict[str, Any]]:
    """Train the study's baselines (of conv `kinds`) that are missing or were trained with another schedule; return
    them.

    Each is trained with the study's proxy and, when `full`, with the full schedule of `dsearch train`
    (`epochs` overriding its epoch count), and stored on the study as soon as it is trained.
    `storage_url` is where the study lives (named in the hints logged).
    """
    if epochs is not None:
        check_int(epochs, "--epochs", 1)
    cfg = study_search_config(study)
    check_proxy(cfg.proxy)
    budget, resolution = study_deployment_budget(study)
    data = load_dataset(cfg.dataset, cfg.data_dir, seed=cfg.seed)
    latency = study_latency(study, log)
    baselines = baseline_specs(budget, data.in_channels, data.num_classes, resolution, kinds,
                               latency=latency.predict_ms if latency is not None else None)
    full_cfg = study_full_config(stored_settings(study, CONFIG_ATTR), epochs)
    check_proxy(full_cfg.proxy)
    try:
        device = select_device("auto")
    except (ValueError, RuntimeError) as err:
        raise DsearchError(str(err).splitlines()[0]) from None
    train_resolution = cfg.proxy.train_resolution or data.image_size[0]
    # Before any training, so that a net too large for the device fails now, not after an hour: the dearest one
    # at the larger batch (one check; each builds the net on the meta device, about a second on a small CPU).
    dearest = max(baselines, key=lambda b: spec_cost(b.spec, train_resolution).macs)
    check_fits_memory(dearest.spec, train_resolution, max(cfg.proxy.batch_size, full_cfg.proxy.batch_size), device,
                      "--train-resolution", training=True)
    # A proxy result is comparable with the study's trials with the same data, split seed and proxy settings; two
    # full trainings are the same schedule with the same data, training size and settings (not where the data
    # lives, nor the device).
    proxy_key = schedule_key(cfg.proxy, dataset=cfg.dataset, split_seed=cfg.seed)
    full_key = schedule_key(full_cfg.proxy, dataset=full_cfg.dataset, train_resolution=full_cfg.train_resolution)
    log(f"{len(baselines)} baselines within {budget.describe()} at {resolution}x{resolution} "
        f"(study '{study.study_name}' in {storage_url}): " + ", ".join(b.label for b in baselines))
    device_data: DeviceData | None = None
    records = []
    for b in baselines:
        # Read again just before training: another worker on the same storage may have trained it meanwhile.
        stored = study.user_attrs.get(ATTR_PREFIX + b.label)
        record = dict(stored) if isinstance(stored, Mapping) and stored.get("arch") == plain(b.spec.to_dict()) \
            else new_record(b, train_resolution)
        if not _current(record.get("proxy"), proxy_key):
            if device_data is None:
                device_data = DeviceData(data, device, cfg.proxy.train_subset, cfg.proxy.train_resolution)
            record["proxy"] = _train_proxy(b, device_data, cfg.proxy, proxy_key, log)
            _store(study, record)
        else:
            log(f"{b.label}: proxy result kept from an earlier run")
        if full and not _current(record.get("full"), full_key):
            record["full"] = _train_full(b, full_cfg, full_key, log)
            _store(study, record)
        elif full:
            log(f"{b.label}: full-schedule result kept from an earlier run")
        records.append(plain(record))
    return records


def _train_proxy(b: Baseline, data: DeviceData, proxy: ProxyConfig, schedule: dict[str, Any],
                 log: Callable[[str], None]) -> dict[str, Any]:
    log(f"{b.label}: proxy training ({proxy.epochs} epochs, {len(data.train_x)} images at {data.size}x{data.size}), "
        f"{b.cost.mflops:.2f} MFLOPs at {b.spec.resolution}x{b.spec.resolution}, {b.cost.mparams:.3f} M params")
    try:
        result = train_proxy(b.spec, data, proxy)
        check_finite_state(result.state)
    except TrainingDiverged as err:
        log(f"{b.label}: proxy training diverged: {err}")
        return _failure(schedule, proxy.epochs, f"proxy training diverged: {err}")
    log(f"{b.label}: proxy val acc {result.val_acc:.4f} (test {result.test_acc:.4f}), {result.train_time_s:.0f} s")
    return {"status": "complete", "val_acc": result.val_acc, "test_acc": result.test_acc, "epochs": result.epochs,
            "history": result.history, "train_resolution": data.size, "train_time_s": round(result.train_time_s, 1),
            "device": result.device, "schedule": schedule}


def _train_full(b: Baseline, cfg: FullTrainConfig, schedule: dict[str, Any],
                log: Callable[[str], None]) -> dict[str, Any]:
    log(f"{b.label}: full schedule ({cfg.proxy.epochs} epochs)")
    try:
        result, facts = train_full(b.spec, cfg, None, log)
    except DsearchError as err:
        # train_full reports divergence as a DsearchError raised while handling TrainingDiverged: that is a
        # result to keep; any other error (bad data, no memory) is the user's to fix and propagates.
        if not isinstance(err.__context__, TrainingDiverged):
            raise
        log(f"{b.label}: full training diverged: {err.__context__}")
        return _failure(schedule, cfg.proxy.epochs, f"full training diverged: {err.__context__}")
    log(f"{b.label}: full-schedule test acc {result.test_acc:.4f} (val {result.val_acc:.4f}), "
        f"{result.train_time_s:.0f} s")
    return {"status": "complete", "val_acc": result.val_acc, "test_acc": result.test_acc, "epochs": result.epochs,
            "config": facts["config"], "train_resolution": facts["train_resolution"], "dataset": facts["dataset"],
            "train_time_s": facts["train_time_s"], "device": result.device, "schedule": schedule}


def within(record: Mapping[str, Any], budget: Budget) -> bool:
    """True when the baseline's record costs at most every limit of `budget`."""
    return budget.fits_record(record)


def _acc(part: Mapping[str, Any] | None, key: str) -> str:
    if not part:
        return "-"
    if part.get("status") == "failed":
        return "failed"
    value = part.get(key)
    return f"{value:.4f}" if value is not None else "-"


def table_lines(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """The baselines as a text table: cost where counted, proxy and full-schedule accuracies, failures spelled out."""
    rows = list(records)
    if not rows:
        return []
    res = rows[0].get("resolution")
    header = (f"{'baseline':<32} {'width':>5} {f'MFLOPs@{res}':>11} {'M params':>8} {'proxy val':>9} "
              f"{'proxy test':>10} {'full val':>8} {'full test':>9} {'epochs':>6}")
    lines = [header]
    notes = []
    for r in rows:
        full = r.get("full") or {}
        lines.append(f"{r['label']:<32} {r['width']:>5g} {r['mflops']:>11.2f} {r['mparams']:>8.3f} "
                     f"{_acc(r.get('proxy'), 'val_acc'):>9} {_acc(r.get('proxy'), 'test_acc'):>10} "
                     f"{_acc(full, 'val_acc'):>8} {_acc(full, 'test_acc'):>9} {full.get('epochs') or '-':>6}")
        for what, part in (("proxy", r.get("proxy")), ("full", r.get("full"))):
            if part and part.get("status") == "failed":
                notes.append(f"{r['label']}: {what} training failed: {part.get('reason')}")
    return lines + notes


def _mflops(value: float, resolution: Any) -> str:
    return f"{value:.1f} MFLOPs@{resolution}x{resolution}"


def comparison_lines(study: optuna.Study, frame: pd.DataFrame) -> list[str]:
    """How the best trial found within the budget compares with the best baseline within it: proxy vs proxy, and
    full vs full when both were trained with the same full schedule. Empty when the study has no baselines."""
    from .pareto import best_within_budget

    budget = study_budget(study)
    baselines = [b for b in study_baselines(study) if within(b, budget)]
    if not baselines:
        return []
    try:
        best = best_within_budget(frame, budget)
    except DsearchError:
        return [f"{len(baselines)} baselines, but no trained trial within the budget to compare them with yet"]
    number, res = int(best["trial"]), best.get("resolution")
    # A trial without a recorded resolution was counted where the study's baselines were.
    res = int(res) if res is not None and pd.notna(res) else baselines[0]["resolution"]
    found = f"best found (trial {number}, {_mflops(best['mflops'], res)})"
    proxied = [b for b in baselines if trained_ok(b.get("proxy"))]
    if not proxied:
        return [f"{len(baselines)} baselines, none with a proxy result (failed or not trained; `dsearch baselines "
                f"{study.study_name}`)"]
    top = max(proxied, key=lambda b: (b["proxy"]["val_acc"], -b["mflops"]))
    lines = [f"{found}: proxy val {best['val_acc']:.3f} vs best baseline {top['label']} "
             f"({_mflops(top['mflops'], top['resolution'])}): proxy val {top['proxy']['val_acc']:.3f} "
             f"({best['val_acc'] - top['proxy']['val_acc']:+.3f})"]
    full = [b for b in baselines if trained_ok(b.get("full"))]
    if not full:
        return lines
    mine = full_training(study, number) or {}
    same = [b for b in full if _same_full(mine, b["full"])]
    if same:
        ref = max(same, key=lambda b: (b["full"]["val_acc"], -b["mflops"]))
        theirs = ref["full"]["test_acc"]
        lines.append(f"full schedule ({ref['full']['epochs']} epochs): trial {number} test {mine['test_acc']:.3f} vs "
                     f"{ref['label']} test {theirs:.3f} ({mine['test_acc'] - theirs:+.3f})")
    else:
        epochs = full[0]["full"]["epochs"]
        why = "has no full training" if not mine else "was fully trained with another schedule"
        lines.append(f"full schedule: not compared: trial {number} {why}; the baselines have {epochs} epochs "
                     f"(`dsearch train {study.study_name} --trial {number} --epochs {epochs}`)")
    return lines


def _same_full(trained: Mapping[str, Any], baseline_full: Mapping[str, Any]) -> bool:
    """True when a trial's full training (`trained.N` facts) used the baselines' full schedule."""
    keys = ("config", "train_resolution", "dataset")
    return bool(trained) and trained.get("test_acc") is not None and all(
        trained.get(k) == baseline_full.get(k) for k in keys)
