"""The `dsearch` command line: thin commands over the library API."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .checks import check_int, check_number, check_resolution
from .errors import Deadline, DsearchError, Terminated, TimedOut, on_sigterm_raise, terminated, write_problem
from .model.archspec import ArchSpec
from .model.presets import PRESETS
from .paths import file_part, read_user_text, write_atomic, writing

if TYPE_CHECKING:
    import optuna
    from tqdm import tqdm  # for the annotation only: _StepBar imports it where a bar is made

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}
INTERRUPTED_CODE = 130  # 128 + SIGINT
TERMINATED_CODE = 143  # 128 + SIGTERM


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


def load_arch(arch: str, *, width: float | None = None, num_classes: int | None = None,
              in_channels: int | None = None, conv: str | None = None) -> ArchSpec:
    """A preset name or the path of an ArchSpec JSON file, with optional overrides."""
    from .model.factory import resolve_arch

    return resolve_arch(arch, width=width, num_classes=num_classes, in_channels=in_channels, conv=conv)


@command
def cmd_cost(args: argparse.Namespace) -> int:
    import torch

    from .cost.count import cost_table, count_cost
    from .cost.memory import check_fits_memory
    from .model.builder import build_model

    for value, flag in ((args.num_classes, "--num-classes"), (args.in_channels, "--in-channels")):
        if value is not None:
            check_int(value, flag, 1)
    if args.width is not None:
        check_number(args.width, "--width", low=0, low_open=True)
    check_int(args.depth, "--depth", 0)
    check_resolution(args.resolution, "--resolution")
    spec = load_arch(args.arch, width=args.width, num_classes=args.num_classes, in_channels=args.in_channels,
                     conv=args.conv)
    size = args.resolution or spec.resolution
    check_fits_memory(spec, size, 1, torch.device("cpu"), "--resolution")  # before fvcore allocates the pass
    model = build_model(spec)
    shape = (spec.in_channels, size, size)
    cost = count_cost(model, shape)
    if args.json:
        print(json.dumps({
            "name": spec.name, "resolution": size, "in_channels": spec.in_channels, "num_classes": spec.num_classes,
            "macs": cost.macs, "mflops": cost.mflops, "params": cost.params, "mparams": cost.mparams,
        }))
        return 0
    print(f"{spec.name or args.arch}: {cost.describe()} "
          f"({spec.in_channels} input channels, {spec.num_classes} classes)")
    print("MFLOPs = millions of multiply-accumulates of one forward pass at batch 1, counted by fvcore.")
    print(spec.summary())
    print()
    print(cost_table(model, shape, max_depth=args.depth))
    return 0


class _StepBar:
    """A per-trial progress bar over training steps, made on the first step and closed on the last."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def __call__(self, step: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None or step == 1:
            # disable=None: no bar when stderr is not a terminal (a log or CI gets the one line per trial only)
            self.bar = tqdm(total=total, desc="  training", unit="step", leave=False, disable=None)
        self.bar.update(1)
        if step == total:
            self.bar.close()
            self.bar = None


@command
def cmd_run(args: argparse.Namespace) -> int:
    from .analysis.finals import FinalsConfig, check_finals
    from .analysis.finals_workers import auto_final_jobs, run_finals_parallel
    from .analysis.verdict import verdict_lines
    from .paths import default_storage
    from .search.config import SearchConfig
    from .search.workers import run_parallel
    from .training.proxy import ProxyConfig

    proxy = ProxyConfig(epochs=args.epochs, batch_size=args.batch_size, train_subset=args.train_subset,
                        train_resolution=args.train_resolution, optimizer=args.optimizer, lr=args.lr,
                        seed=args.seed)
    cfg = SearchConfig(space=args.space, dataset=args.dataset, data_dir=args.data_dir,
                       budget_mflops=args.budget_mflops, budget_mparams=args.budget_mparams,
                       resolution=args.resolution, objective=args.objective, sampler=args.sampler,
                       pruner=args.pruner, seed=args.seed, device=args.device, proxy=proxy,
                       budget_ms=args.budget_ms, latency_target=args.latency_target,
                       latency_table=args.latency_table, measure_latency=args.measure_latency,
                       early_stop=args.early_stop, early_stop_margin=args.early_stop_margin)
    finals = None if args.no_finals else FinalsConfig(eta=args.eta, proxy_seeds=args.proxy_seeds,
                                                       seeds=args.final_seeds, epochs=args.final_epochs,
                                                       device=args.device)
    final_jobs = 1
    if finals is not None:
        check_finals(finals)  # before anything is written
        final_jobs = auto_final_jobs(args.device) if args.final_jobs is None else args.final_jobs
        check_int(final_jobs, "--final-jobs", 1)
    deadline = None
    if args.timeout is not None:  # the whole command's limit, counted from here: the search and the finals
        check_number(args.timeout, "--timeout", low=0, low_open=True)
        deadline = Deadline.after(args.timeout)
    if args.quiet:
        log, bars, steps = (lambda _msg: None), None, None
        warn = lambda msg: print(msg, file=sys.stderr)  # noqa: E731 - said even under --quiet
    else:
        from tqdm import tqdm

        log = tqdm.write
        warn = lambda msg: tqdm.write(msg, file=sys.stderr)  # noqa: E731 - above the bars, not through them
        bars = lambda n: tqdm(total=n, desc="search", unit="trial", disable=None)  # noqa: E731
        steps = _StepBar()
    resumed = _pending_finals(args.study_name, args.storage, cfg) if finals is not None else None
    if resumed is not None:
        study, url = resumed
        print(f"study '{args.study_name}': its finals were interrupted; resuming them (the search is not run again; "
              "every finished training is kept)")
    else:
        summary = run_parallel(cfg, args.study_name, args.storage, n_trials=args.n_trials, jobs=args.jobs,
                               deadline=deadline, log=log, progress_factory=bars, trial_progress=steps,
                               allow_changed_settings=args.allow_changed_settings, quiet=args.quiet, warn=warn)
        print_summary(summary, args.study_name, cfg)
        if summary.interrupted:
            return 130
        shortfall = summary.shortfall()
        if shortfall:  # fewer architectures than asked because trials failed: say so, and fail the command
            print(f"dsearch run: error: {shortfall}; `dsearch show {args.study_name}` lists every trial",
                  file=sys.stderr)
            return 1
        if summary.stopped:  # nothing new to train could be found
            print(f"dsearch run: error: stopped after training {summary.trained} of {args.n_trials} architectures: "
                  f"{summary.stopped}", file=sys.stderr)
            return 1
        study, url = summary.study, summary.storage_url
    if finals is None:
        return 0
    if deadline is not None and deadline.passed():  # the user's limit: no hours of full-schedule training after it
        print(f"finals: not started: {deadline.what} has passed. They start after a search that ends within the "
              "time limit: run again with a longer --timeout (or none) to go on searching and then run them")
        return 0
    try:
        verdict = run_finals_parallel(study, url, finals, jobs=final_jobs, seed=args.seed, log=log, progress=steps,
                                      quiet=args.quiet, deadline=deadline)
    except KeyboardInterrupt:
        print("interrupted during the finals: every finished training is kept; run the same command again to "
              "resume them", file=sys.stderr)
        return 130
    except TimedOut as err:
        print(f"finals: {err}; every finished training is kept: run the same command again to resume them")
        return 0
    print("\n".join(verdict_lines(verdict)))
    where = "" if url == default_storage(args.study_name) else f" --storage {url}"
    print(f"  export the pick with its fully trained weights: dsearch export {args.study_name}{where} --trial best")
    return 0


def _pending_finals(name: str, storage: str | None, cfg) -> tuple[optuna.Study, str] | None:
    """The study and its URL when it exists and has interrupted finals of this very search; else None."""
    from dataclasses import asdict

    from .analysis.finals import pending_finals
    from .search.storage import open_study

    try:
        study, url = open_study(name, storage, read_only=True)  # the search opens it for writing, and says so
    except DsearchError:
        return None  # no such study yet: the search makes it
    if pending_finals(study, asdict(cfg)) is None:
        return None
    return open_study(name, storage)  # the finals write: opened for writing (on read-only media, one line)


def print_summary(summary, study_name: str, cfg) -> None:
    from .analysis.pareto import chance_line, pareto_front, trials_frame

    res = summary.resolution
    c = summary.counts
    if summary.interrupted:
        print("interrupted: every finished trial is kept; run the same command again to resume.")
    print(f"study '{study_name}': {c['complete']} trained, {c['rejected']} rejected by the budget before training "
          f"(each repaired into a candidate within it), {c['duplicate']} duplicates not retrained, {c['invalid']} "
          f"invalid, {c['pruned']} pruned, {c['failed']} failed")
    share = summary.untrained_s / summary.wall_s if summary.wall_s else 0.0
    print(f"this run: {summary.trained} architectures trained in {summary.wall_s:.0f} s; samples not trained "
          f"(rejected, invalid, duplicate) took {summary.untrained_s:.1f} s ({share:.1%})")
    if summary.exhausted:
        print(f"done: {summary.exhausted}")
    if summary.timed_out:
        cut = (f"; stopped in training and kept as failed (not counted as trained): {', '.join(summary.cut)}"
               if summary.cut else "")
        print(f"time limit: {summary.timed_out} passed after {summary.trained} of {summary.asked} architectures were "
              f"trained{cut}")
    frame = trials_frame(summary.study)
    chance = chance_line(frame)
    if chance:
        print(f"dsearch run: warning: {chance}", file=sys.stderr)
    target = cfg.cost_target
    front = pareto_front(frame, "latency_ms" if target is not None else "mflops")
    if front.empty:
        print("no trained trial yet")
    else:
        against = f"latency in ms on {target.short} (predicted)" if target is not None else "MFLOPs"
        print(f"Pareto-optimal trials (validation accuracy vs {against} at {res}x{res}; test accuracy is reported "
              "only):")
        columns = ["trial", "val_acc", "test_acc", "mflops", "mparams", *(["latency_ms"] if target else []), "arch"]
        table = front[columns].rename(columns={
            "val_acc": "val acc", "test_acc": "test acc", "mflops": f"MFLOPs@{res}", "mparams": "M params",
            "latency_ms": f"ms@{target.short}" if target else ""})
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"storage: {summary.storage_url}")
    print(f"  resume or add a worker: dsearch run --study-name {study_name} --storage {summary.storage_url} ...")
    from .paths import default_storage

    where = "" if summary.storage_url == default_storage(study_name) else f" --storage {summary.storage_url}"
    print(f"  explore: dsearch show {study_name}{where}  |  dsearch dashboard {study_name}{where}")
    print(f"  take one away: dsearch train {study_name}{where} --trial best  |  "
          f"dsearch export {study_name}{where} --trial best")


def _open(name: str, storage: str | None, read_only: bool = False):
    """The study `name` in `storage`; `read_only` for commands that only read it (they work on read-only media)."""
    from .search.storage import open_study

    return open_study(name, storage, read_only=read_only)


@command
def cmd_show(args: argparse.Namespace) -> int:
    from .analysis.pareto import (
        COSTS,
        chance_line,
        failure_lines,
        hypervolume,
        pareto_front,
        reference_point,
        trials_frame,
    )
    from .search.record import study_budget
    from .search.trials import trial_counts

    if args.parquet:
        _check_parquet()  # before anything is written
    study, url = _open(args.study, args.storage, read_only=True)
    frame = trials_frame(study)
    for path, writer in ((args.csv, _write_csv), (args.parquet, _write_parquet)):
        if path:
            writer(frame, Path(path))
            print(f"wrote {len(frame)} trials x {len(frame.columns)} columns to {path}")
    c = trial_counts(study)
    budget = study_budget(study)
    print(f"study '{study.study_name}' ({url}): {len(frame)} trials: {c['complete']} trained, {c['rejected']} "
          f"rejected by the budget, {c['invalid']} invalid, {c['pruned']} pruned, {c['failed']} failed, "
          f"{c['running']} running; budget: {budget.describe() if budget.limited else 'none'}")
    for line in failure_lines(frame):  # why they failed (a diverged loss, a crash): before any table
        print(f"  {line}")
    cost = args.by
    if cost == "latency_ms" and frame["latency_ms"].isna().all():
        raise DsearchError("no trial has a latency: studies searched with --latency-target hold one (predicted); use "
                           "--by mflops or --by mparams")
    front = pareto_front(frame, cost)
    if front.empty:
        print("no trained trial yet: run `dsearch run` (or wait for the running workers)")
        return 0
    res = int(front["resolution"].iloc[0])
    ref = reference_point(frame, budget.limits().get(cost), cost)
    targets = frame["latency_target"].dropna().unique() if frame["latency_ms"].notna().any() else []
    on = f" on {targets[0]}" if len(targets) == 1 else ""  # which target the ms are on (older studies: the device)
    latency_cost = cost == "latency_ms"
    what = f"{COSTS[cost]}{on if latency_cost else ''} at {res}x{res}"
    note = "latency predicted from the target's table; " if latency_cost and on else ""
    print(f"Pareto-optimal trials, validation accuracy vs {what} ({note}test accuracy is reported only):")
    latency = ["latency_ms"] if frame["latency_ms"].notna().any() else []
    table = front[["trial", "val_acc", "test_acc", "mflops", "mparams", *latency, "rung", "dominant_conv",
                   "arch"]].rename(columns={"val_acc": "val acc", "test_acc": "test acc", "mflops": f"MFLOPs@{res}",
                                            "mparams": "M params", "dominant_conv": "mostly",
                                            "latency_ms": f"ms{on.replace(' on ', '@')}"})
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("  (val/test acc: one proxy training; rung: the highest rung of the finals the trial reached, 0: the "
          "search only, 2: a finalist)")
    unit = {"mflops": "MFLOPs", "mparams": "M params", "latency_ms": "ms"}[cost]
    print(f"hypervolume {hypervolume(front, ref, cost=cost):.4g} (accuracy x {unit}; reference point: accuracy 0, "
          f"{ref:g} {unit})")
    from .analysis.baselines import comparison_lines

    for line in comparison_lines(study, frame):
        print(line)
    chance = chance_line(frame)
    if chance:
        print(f"warning: {chance}")
    from .analysis.verdict import study_verdict, verdict_lines

    try:
        verdict = study_verdict(study)
    except DsearchError as err:  # the trials above stand on their own; say what is wrong with the verdict
        print(f"dsearch show: warning: {err}", file=sys.stderr)
        return 0
    if verdict is None:
        print("no verdict: the study's finals have not run (`dsearch run` without --no-finals ends with them); "
              "every accuracy above is a single proxy training")
    else:
        print("\n".join(verdict_lines(verdict)))
    return 0


@command
def cmd_baselines(args: argparse.Namespace) -> int:
    from .analysis.baselines import KINDS, run_baselines, table_lines

    study, url = _open(args.study, args.storage)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    records = run_baselines(study, url, epochs=args.epochs, log=log, full=not args.proxy_only,
                            kinds=args.conv or KINDS)
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        res = records[0]["resolution"]
        print(f"baselines of study '{study.study_name}': hand-designed MobileNetV2 at the largest width within the "
              f"budget, per conv kind; MFLOPs at {res}x{res}; proxy = the study's proxy training, full = the full "
              "schedule of `dsearch train`")
        for line in table_lines(records):
            print(line)
    failed = [f"{r['label']} ({what})" for r in records for what in ("proxy", "full")
              if (r.get(what) or {}).get("status") == "failed"]
    if failed:
        print(f"dsearch baselines: error: training failed for {', '.join(failed)}; the reasons are kept with the "
              "study (see above)", file=sys.stderr)
        return 1
    return 0


def _write_csv(frame, path: Path) -> None:
    write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False), "--csv")


def _check_parquet() -> None:
    import importlib.util

    if importlib.util.find_spec("pyarrow") is None and importlib.util.find_spec("fastparquet") is None:
        raise DsearchError("--parquet needs pyarrow: pip install pyarrow (or use --csv)")


def _write_parquet(frame, path: Path) -> None:
    write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False), "--parquet")


@command
def cmd_dashboard(args: argparse.Namespace) -> int:
    from .analysis.dashboard import write_dashboard

    study, _ = _open(args.study, args.storage, read_only=True)
    out = Path(args.out or Path("studies") / file_part(study.study_name) / "dashboard.html")
    if out.is_dir():
        raise DsearchError(f"--out {out} is a folder; give an .html file name")
    with writing(out, "--out"):  # e.g. the default place on read-only media
        info = write_dashboard(study, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, self-contained; {info.n_trained} trained of "
          f"{info.n_trials} trials)")
    for note in info.notes:
        print(f"  note: {note}")
    if args.open:
        import webbrowser

        if not webbrowser.open(out.resolve().as_uri()):
            print(f"  could not start a browser here; open {out.resolve().as_uri()} yourself")
    return 0


def _trial_note(study, number: int, doing: str) -> str | None:
    """A note when trial `number` is not a trained trial within budget (its status and reason), else None."""
    from .search.record import AT_CHANCE, CHANCE_CAUSE, REASON, full_training
    from .search.trials import trial_status
    from .training.failures import failure_reason

    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        return None  # arch_of says which numbers exist
    status = trial_status(trials[number])
    if status == "complete":
        chance = trials[number].user_attrs.get(AT_CHANCE)
        if chance and full_training(study, number) is None:  # fully trained weights would say otherwise
            cause = trials[number].user_attrs.get(CHANCE_CAUSE)  # absent from studies made before issue 34
            return f"warning: trial {number}'s validation {chance}; " + (f"{cause}; " if cause else "") + \
                f"{doing} anyway"
        return None
    reason = failure_reason(trials[number]) if status == "failed" else trials[number].user_attrs.get(REASON)
    reason = None if status == "running" else reason
    what = {"rejected": "was rejected by the budget before training", "failed": "failed",
            "running": "is still running"}.get(status, f"is {status}")
    return f"note: trial {number} {what}" + (f" ({reason})" if reason else "") + f"; {doing} anyway"


def _is_study_target(target: str) -> bool:
    """STUDY|ARCH targets: an ArchSpec JSON file or a preset name is an architecture; anything else a study."""
    return not (target.endswith(".json") or Path(target).is_file() or target in PRESETS)


@command
def cmd_export(args: argparse.Namespace) -> int:
    from .analysis.pareto import arch_of
    from .cost.count import spec_cost
    from .export.writer import check_weights_fit, export_spec, feed_size, load_weights

    info: dict = {}
    if _is_study_target(args.target):
        if args.weights:
            raise DsearchError("--weights is for an ArchSpec JSON target; a study's weights are found by trial")
        from .analysis.pick import pick_trial
        from .search.record import study_data_facts
        from .search.weights import NOT_KEPT_ATTR, trial_weights

        study, url = _open(args.target, args.storage, read_only=True)
        number = pick_trial(study, args.trial, flag="--trial", log=print)
        spec = arch_of(study, number)
        note = _trial_note(study, number, "exporting its architecture")
        if note:
            print(note)
        found = trial_weights(study, number, url)
        state, source = found if found is not None else (None, None)
        data = study_data_facts(study)
        info = {"study": study.study_name, "trial": number, **{k: data[k] for k in ("mean", "std", "classes")
                                                                  if k in data}}
        if found is not None:
            info.update(_study_weights_facts(study, number, found[1]))
        out = Path(args.out or Path("exports") / f"{file_part(study.study_name)}-trial{number}")
        storage = f" --storage {url}" if args.storage else ""
        written = " --storage URL" if "@" in storage else storage  # the command lands in README.md: no password
        retrain = f"dsearch train {args.target} --trial {number}{written} --train-resolution {spec.resolution}"
        if found is None:
            lost = study.get_trials(deepcopy=False)[number].user_attrs.get(NOT_KEPT_ATTR)
            why = f" ({lost})" if lost else ""
            print(f"trial {number} has no kept weights{why}; `dsearch train {args.target} --trial {number}{storage}` "
                  "trains it and keeps them")
    else:
        spec = load_arch(args.target)
        is_file = Path(args.target).is_file()  # a JSON file, else a preset (untrained unless --weights)
        if args.weights and not Path(args.weights).is_file():
            raise DsearchError(f"--weights {args.weights} does not exist")
        weights = Path(args.weights) if args.weights else Path(args.target).with_name("weights.pt") if is_file else None
        found = (load_weights(weights), str(weights)) if weights and weights.is_file() else None
        state, source = found if found is not None else (None, None)
        if weights is not None and found is not None:
            info = {"weights": str(weights)}
            metrics = weights.with_name("metrics.json")  # written with the weights by `dsearch train ARCH.json`
            if metrics.is_file():
                facts = _read_metrics(metrics)
                info.update({k: facts[k] for k in ("dataset", "epochs", "test_acc", "train_resolution", "mean", "std",
                                                   "classes") if k in facts})
        out = Path(args.out or Path("exports") / file_part(Path(args.target).stem))
        retrain = f"dsearch train {args.target} --train-resolution {spec.resolution}"
    if found is not None:
        check_weights_fit(spec, *found)
    with writing(out, "--out"):  # a full disk or read-only media: nothing was moved into `out`
        result = export_spec(spec, out, state, info, onnx=args.onnx, torchscript=args.torchscript,
                             torch_export=args.torch_export, retrain=retrain)
    print(f"exported to {result.out_dir}: {', '.join(result.files)}")
    r, size = spec.resolution, feed_size(spec, info)
    if state is not None:
        trained_at = f"trained at {size}x{size}" if info.get("train_resolution") else "trained at an unknown size"
        print(f"  weights: {source}, {trained_at}; standalone model.py matches dsearch's network (max |diff| "
              f"{result.max_abs_diff:.2g})")
    fed = f"model.py and README.md feed {size}x{size} inputs" if state is not None else "untrained"
    print(f"  cost: {spec_cost(spec).mflops:.2f} MFLOPs@{r}x{r} (the deployment resolution); {fed}")
    for note in result.notes:
        print(f"  note: {note}")
    if result.warning:
        print(f"dsearch export: warning: {result.warning}", file=sys.stderr)
    return 0


def _read_metrics(path: Path) -> dict:
    """The facts `dsearch train ARCH.json` wrote beside its weights."""
    fix = "delete it, or retrain with `dsearch train` to write it again"
    try:
        facts = json.loads(read_user_text(path, "a metrics file"))
    except DsearchError as err:
        raise DsearchError(f"{err}; {fix}") from None
    except (ValueError, RecursionError) as err:  # not JSON, an integer of over 4300 digits, nesting too deep
        raise DsearchError(f"cannot read {path} ({type(err).__name__}); {fix}") from None
    if not isinstance(facts, dict):
        raise DsearchError(f"{path} is not a JSON object of facts; delete it, or retrain with `dsearch train`")
    return facts


def _study_weights_facts(study, number: int, source: str) -> dict:
    """How trial `number`'s kept weights were made: the full training's facts, else its proxy's (INFO entries)."""
    from .search.record import CONFIG_ATTR, full_training, stored_settings

    full = full_training(study, number)
    made = full if full is not None else study.get_trials(deepcopy=False)[number].user_attrs
    dataset = stored_settings(study, CONFIG_ATTR).get("dataset")
    facts = {"weights": source, "dataset": made.get("dataset", dataset), "epochs": made.get("epochs"),
             "test_acc": made.get("test_acc"), "train_resolution": made.get("train_resolution")}
    return {k: v for k, v in facts.items() if v is not None}


@command
def cmd_train(args: argparse.Namespace) -> int:
    from .search.record import CONFIG_ATTR, stored_settings
    from .training.full import FullTrainConfig, kept_state, study_defaults, train_full, write_trained
    from .training.proxy import ProxyConfig

    proxy = ProxyConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                        label_smoothing=args.label_smoothing, seed=args.seed)
    cfg = FullTrainConfig(dataset=args.dataset, data_dir=args.data_dir, train_resolution=args.train_resolution,
                          device=args.device, proxy=proxy)
    steps = None if args.quiet else _StepBar()
    log = (lambda _msg: None) if args.quiet else print
    warn = lambda msg: print(msg, file=sys.stderr)  # noqa: E731 - said even under --quiet
    if _is_study_target(args.target):
        from .analysis.pareto import arch_of
        from .analysis.pick import pick_trial
        from .search.weights import WeightsNotKept, artifact_dir, save_full_weights

        study, url = _open(args.target, args.storage)
        number = pick_trial(study, args.trial, flag="--trial", log=log)
        spec = arch_of(study, number)
        note = _trial_note(study, number, "training it")
        if note:
            print(note)  # even with --quiet: the user asked for a trial the search did not train
        cfg = study_defaults(stored_settings(study, CONFIG_ATTR), cfg)
        result, facts = train_full(spec, cfg, steps, log, warn)
        try:
            save_full_weights(study, number, kept_state(result), artifact_dir(study, url), facts)
        except WeightsNotKept as err:
            raise DsearchError(f"{err}; test accuracy was {result.test_acc:.4f}: free space beside the study's "
                               "storage and train again to keep them") from None
        storage = f" --storage {url}" if args.storage else ""
        where = (f"kept with study '{study.study_name}' for trial {number}; `dsearch export {args.target} "
                 f"--trial {number}{storage}` picks them up")
    else:
        if args.trial != "best":
            raise DsearchError("--trial applies to a study; an ArchSpec JSON file is one architecture")
        spec = load_arch(args.target)
        result, facts = train_full(spec, cfg, steps, log, warn)
        out = Path(args.out or Path("trained") / file_part(Path(args.target).stem))
        with writing(out, "--out"):
            write_trained(out, spec, kept_state(result), facts)
        where = (f"written to {out}/ (arch.json, weights.pt, metrics.json); `dsearch export {out / 'arch.json'}` "
                 "picks them up")
    size, r = facts["train_resolution"], spec.resolution
    print(f"test accuracy {result.test_acc:.4f} (val {result.val_acc:.4f}) after {result.epochs} epochs at "
          f"{size}x{size}, {result.train_time_s:.0f} s on {result.device}")
    print(f"weights {where}")
    if size != r:  # even with --quiet: these weights are for another input size than the one the cost is counted at
        print(f"note: trained at {size}x{size}, not at the deployment resolution {r}x{r} where the cost is counted; "
              f"feed them {size}x{size} inputs, or train at {r}x{r} with --train-resolution {r}")
    return 0


@command
def cmd_audit(args: argparse.Namespace) -> int:
    from .analysis.audit import AUDIT_ATTR, report_lines, run_audit

    check_int(args.k, "--k", 3)
    check_int(args.epochs, "--epochs", 1)
    study, url = _open(args.study, args.storage)
    out = sys.stderr if args.json else sys.stdout  # --json: stdout holds the JSON object and nothing else
    outcome = run_audit(study, url, k=args.k, epochs=args.epochs, device=args.device, baselines=not args.no_baselines,
                        log=lambda msg: print(msg, file=out), progress=_StepBar())
    if args.json:
        print(json.dumps(outcome.audit))
        return 0
    print()
    for line in report_lines(outcome.audit, outcome.baselines):
        print(line)
    storage = f" --storage {url}" if args.storage else ""
    print(f"stored on the study as '{AUDIT_ATTR}' (`dsearch audit {args.study}{storage} --json` prints it; "
          f"`dsearch dashboard {args.study}{storage}` draws it)")
    return 0


@command
def cmd_latency(args: argparse.Namespace) -> int:
    from .latency import LatencyModel, parse_target
    from .search.latency import table_from_space

    target = parse_target(args.target, "--target")
    model = LatencyModel.for_target(target, table=Path(args.table) if args.table else None,
                                    log=None if args.json else print)
    if args.space:
        if args.arch:
            raise DsearchError("give an architecture to measure or --space to build a table, not both")
        report = table_from_space(model, args.space, args.samples, args.budget_mflops, args.in_channels,
                                  args.num_classes, args.seed, log=None if args.json else print)
        print(json.dumps(report) if args.json else f"table {model.table.path}: {report['parts']} parts, "
              f"{report['networks']} whole networks ({model.table.describe()})")
        return 0
    if not args.arch:
        raise DsearchError("give an architecture (preset, ArchSpec JSON or study) to measure, or --space SPACE to "
                           "build a table")
    if _is_study_target(args.arch):
        from .analysis.pareto import arch_of
        from .analysis.pick import pick_trial

        study, _ = _open(args.arch, args.storage, read_only=True)
        spec = arch_of(study, pick_trial(study, args.trial, flag="--trial"))
    else:
        spec = load_arch(args.arch)
    if args.resolution is not None:
        check_resolution(args.resolution, "--resolution")
        spec = spec.replace(resolution=args.resolution)
    model.predict(spec)  # measures the parts the table lacks
    measured = model.measure(spec, again=args.again) if model.local else None
    prediction = model.predict(spec, leave_out=True)  # not fitted on its own measurement
    others = sum(1 for key in model.table.networks if key != model.network_key(spec))
    size = target.size(spec.resolution)
    if args.json:
        print(json.dumps({"arch": spec.summary(), "target": target.name, "resolution": size,
                          "predicted_ms": prediction.ms, "parts_ms": prediction.parts_ms,
                          "overhead_ms": prediction.overhead_ms,
                          "measured": measured.to_dict() if measured else None, "table": str(model.table.path),
                          "machine": model.table.header["machine"], "versions": model.table.header["versions"]}))
        return 0
    print(f"{spec.summary()}")
    print(f"latency on {target.short} at {size}x{size}, batch {target.batch}, {target.threads} thread(s) "
          f"({model.table.describe()}):")
    print(f"  predicted {prediction.ms:.3f} ms  (sum of {len(model.parts(spec))} parts {prediction.parts_ms:.3f} ms, "
          f"overhead {prediction.overhead_ms:+.3f} ms, a factor fitted on {others} other network(s) measured whole)")
    if measured is None:
        print("  measured  - (the table was made on another machine: measure there)")
    else:
        error = 100 * (prediction.ms - measured.median_ms) / measured.median_ms
        print(f"  measured  {measured.describe()}; prediction error {error:+.1f}%")
    print(f"table: {model.table.path}")
    return 0


@command
def cmd_spaces(args: argparse.Namespace) -> int:
    from .cost.count import spec_cost
    from .search.budget import Budget, budget_share, build, cheapest_params
    from .search.spaces import available_spaces, extreme_spec, load_space, space_size

    check_int(args.in_channels, "--in-channels", 1)
    check_int(args.num_classes, "--num-classes", 2)
    check_int(args.samples, "--samples", 100)
    for value, flag in ((args.budget_mflops, "--budget-mflops"), (args.budget_mparams, "--budget-mparams")):
        if value is not None:
            check_number(value, flag, low=0, low_open=True)
    names = args.space or list(available_spaces())
    spaces = [load_space(name) for name in names]
    budget = Budget(args.budget_mflops, args.budget_mparams)
    print(f"MFLOPs at each space's resolution, for {args.in_channels} input channel(s) and {args.num_classes} classes")
    print(f"{'space':<10} {'resolution':>10} {'architectures':>14} {'MFLOPs min':>11} {'MFLOPs max':>11}  description")
    for space in spaces:
        lo = spec_cost(extreme_spec(space, args.in_channels, args.num_classes))
        hi = spec_cost(extreme_spec(space, args.in_channels, args.num_classes, cheapest=False))
        res = f"{space.resolution}x{space.resolution}"
        print(f"{space.name:<10} {res:>10} {space_size(space):>14.3g} {lo.mflops:>11.2f} {hi.mflops:>11.2f}  "
              f"{space.description}")
    if args.budget_mflops is None and args.budget_mparams is None:
        return 0
    print()
    print(f"Share of each space within {budget.describe()} (at the space's resolution), from {args.samples} "
          f"uniform random samples (every choice equally likely, as Optuna's RandomSampler draws them):")
    for space in spaces:
        share = budget_share(space, budget, args.in_channels, args.num_classes, args.samples, args.seed)
        lo_ci, hi_ci = share.interval()
        cheapest = extreme_spec(space, args.in_channels, args.num_classes)
        dearest = extreme_spec(space, args.in_channels, args.num_classes, cheapest=False)
        print(f"{space.name}: {share.share:.2%} within budget (95% interval {lo_ci:.2%}-{hi_ci:.2%}; "
              f"{share.invalid} invalid samples; {share.seconds:.1f} s)")
        closest = build(space, cheapest_params(space, budget, args.in_channels, args.num_classes), args.in_channels,
                        args.num_classes)[0]
        if not budget.fits(closest):
            print("  no architecture of this space fits the budget")
        elif share.within == 0:
            print("  none of the samples fit, but the cheapest architecture does: `dsearch run` repairs samples "
                  "into the budget")
        if share.largest_within is not None:
            largest = spec_cost(share.largest_within)
            print(f"  costliest sample within budget: {largest.mflops:.2f} MFLOPs, {largest.mparams:.3f} M params: "
                  f"{share.largest_within.summary()}")
        for label, spec in (("cheapest", cheapest), ("costliest", dearest)):
            cost = spec_cost(spec)
            print(f"  {label} of the space: {cost.mflops:.2f} MFLOPs, {cost.mparams:.3f} M params: {spec.summary()}")
    return 0


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" where an option has a value by default; None and off-by-default flags say it in words."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from .analysis.audit import DEFAULT_K
    from .analysis.baselines import KINDS as BASELINE_KINDS
    from .analysis.finals import FinalsConfig
    from .analysis.pareto import COSTS
    from .data import DATASETS
    from .model.ops import CONV_TYPES
    from .search.config import OBJECTIVES, PRUNER_FACTORIES, SAMPLER_FACTORIES, SearchConfig
    from .training.proxy import OPTIMIZERS, ProxyConfig
    from .version import __version__

    search, proxy, full = SearchConfig(), ProxyConfig(), _full_train_defaults()
    parser = argparse.ArgumentParser(
        prog="dsearch", description="Architecture search over separable convolutions under a compute budget.",
        formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"dsearch {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks (also Optuna's for failed trials)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command_parser(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)

    presets = ", ".join(sorted(PRESETS))
    lr_help = (f"peak learning rate, used as given (default: {_lr_defaults()} at batch 128, scaled linearly to the "
               "batch used: --batch-size, or the training split where that is smaller)")

    p = command_parser("cost", "MFLOPs and parameters of an architecture (preset or ArchSpec JSON)")
    p.add_argument("arch", metavar="ARCH", help=f"preset ({presets}) or ArchSpec JSON file")
    p.add_argument("--resolution", type=int, help="input size to count at (default: the spec's deployment size)")
    p.add_argument("--num-classes", type=int, help="override the number of classes (default: the spec's)")
    p.add_argument("--in-channels", type=int, help="override the number of input channels (default: the spec's)")
    p.add_argument("--width", type=float, help="width multiplier, presets only (default: the preset's 1.0)")
    p.add_argument("--conv", help=f"switch every conv unit to this kind with its default knobs: "
                                  f"{', '.join(CONV_TYPES)} (default: keep the spec's)")
    p.add_argument("--depth", type=int, default=3, help="module depth of the per-layer table")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")

    p = command_parser("run", "search a space under a budget (trains proxies, stores every trial)")
    g = p.add_argument_group("budget and space")
    g.add_argument("--budget-mflops", type=float,
                   help="MFLOPs budget: millions of multiply-accumulates at the deployment resolution (default: none)")
    g.add_argument("--budget-mparams", type=float, help="parameter budget in millions (default: none)")
    g.add_argument("--budget-ms", type=float,
                   help="latency budget in milliseconds on --latency-target, predicted before any training from the "
                        "target's latency table (default: none)")
    g.add_argument("--latency-target",
                   help="RUNTIME[:threads=N,batch=N,resolution=N] (ort-cpu, torch-cpu, torch-cuda): latency on it is "
                        "the cost the search trades accuracy against and the finals pick by (default: none, MFLOPs; "
                        "ort-cpu with --budget-ms)")
    g.add_argument("--latency-table", metavar="FILE",
                   help="a latency table copied from the machine the model ships on (`dsearch latency --space`; "
                        "default: this machine's table of the target, measured as needed)")
    g.add_argument("--space", default=search.space, help="space name (see `dsearch spaces`) or a space YAML file")
    g.add_argument("--resolution", type=int,
                   help="deployment resolution where budgets are counted (default: the space's)")
    g.add_argument("--objective", default=search.objective, choices=list(OBJECTIVES),
                   help="multi: maximize val accuracy and minimize MFLOPs; accuracy: maximize val accuracy (prunable)")
    g = p.add_argument_group("data and proxy training")
    g.add_argument("--dataset", default=search.dataset,
                   help=f"{', '.join(DATASETS)} (the embedded one works offline)")
    g.add_argument("--data-dir", help="where torchvision datasets live (default: ~/.cache/dsearch/data)")
    g.add_argument("--train-resolution", type=int, help="proxy training input size (default: the data's own)")
    g.add_argument("--epochs", type=int, default=proxy.epochs, help="proxy training epochs per trial")
    g.add_argument("--batch-size", type=int, default=proxy.batch_size, help="proxy training batch size")
    g.add_argument("--train-subset", type=int, help="train on at most this many images (default: all)")
    g.add_argument("--optimizer", default=proxy.optimizer, choices=list(OPTIMIZERS), help="proxy optimizer")
    g.add_argument("--lr", type=float, help=lr_help)
    g.add_argument("--device", default=search.device, help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, ...")
    g.add_argument("--measure-latency", action="store_true",
                   help="also measure each trained candidate whole on --latency-target (without one: PyTorch eager "
                        "on --device), the protocol of `dsearch latency`")
    g = p.add_argument_group("study")
    g.add_argument("--n-trials", type=int, default=10,
                   help="architectures this command trains, shared by its --jobs workers (rejected, repeated and "
                        "invalid samples do not count)")
    g.add_argument("--jobs", type=int, default=1,
                   help="workers training at once on this machine, sharing the study and --n-trials, each with "
                        "cores/N CPU threads (on a CPU, 2 or more train more architectures per minute)")
    g.add_argument("--timeout", type=float,
                   help="the command's time limit in seconds, from its start: the trial in training then is stopped "
                        "(kept as failed) and the finals do not start after it (default: none)")
    g.add_argument("--study-name", default="default", help="the study to create or resume")
    g.add_argument("--storage", help="Optuna storage URL (sqlite:///..., postgresql://...) or journal file path "
                                     "(default: sqlite:///studies/<study-name>/study.db)")
    g.add_argument("--sampler", default=search.sampler, choices=list(SAMPLER_FACTORIES), help="Optuna sampler")
    g.add_argument("--pruner", default=search.pruner, choices=list(PRUNER_FACTORIES),
                   help="Optuna pruner, used with --objective accuracy (Optuna prunes single-objective studies only)")
    g.add_argument("--early-stop", action="store_true",
                   help="with --objective multi: stop a trial whose val accuracy after an epoch trails a cheaper-or-"
                        "equal Pareto-front trial's at that epoch by more than --early-stop-margin")
    g.add_argument("--early-stop-margin", type=float, default=search.early_stop_margin,
                   help="accuracy margin of --early-stop")
    g.add_argument("--seed", type=int, default=search.seed, help="sampler, data split and training seed")
    g.add_argument("--allow-changed-settings", action="store_true",
                   help="resume a study with settings other than those it was made with (recorded on the study)")
    g.add_argument("--quiet", action="store_true", help="no progress bars or per-trial lines")
    finals = FinalsConfig()
    g = p.add_argument_group("finals and verdict (after the search)")
    g.add_argument("--no-finals", action="store_true",
                   help="the quick search only: no rungs, no full-schedule finals, no verdict")
    g.add_argument("--eta", type=int, default=finals.eta, help="each rung keeps the best 1/eta of the one below")
    g.add_argument("--proxy-seeds", type=int, default=finals.proxy_seeds,
                   help="rung 1: proxy trainings per promoted candidate (the search's own included)")
    g.add_argument("--final-seeds", type=int, default=finals.seeds,
                   help="final rung: full-schedule trainings per finalist and for the best baseline")
    g.add_argument("--final-epochs", type=int, help="final rung's epochs (default: dsearch train's)")
    g.add_argument("--final-jobs", type=int,
                   help="processes sharing the finals' trainings, each with cores/N CPU threads (default: one per "
                        "CPU core on a CPU, at most 4; 1 on a GPU)")

    def study_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--storage", help="Optuna storage URL or journal file "
                                         "(default: sqlite:///studies/<name>/study.db)")

    p = command_parser("show", "the Pareto table of a study; --csv/--parquet write every trial")
    p.add_argument("study", metavar="STUDY", help="study name")
    study_args(p)
    p.add_argument("--by", default="mflops", choices=list(COSTS), help="the cost axis of the Pareto front")
    p.add_argument("--csv", metavar="FILE",
                   help="write the whole trial frame (flattened architectures) as CSV (default: no file)")
    p.add_argument("--parquet", metavar="FILE",
                   help="write the whole trial frame as Parquet, needs pyarrow (default: no file)")

    p = command_parser("baselines", "train hand-designed reference nets at a study's budget (MobileNetV2 at the "
                                    "largest width within it, each separable conv swapped in); kept with the study")
    p.add_argument("study", metavar="STUDY", help="study name")
    study_args(p)
    p.add_argument("--epochs", type=int, help=f"epochs of the full schedule (default: `dsearch train`'s, "
                                              f"{full.proxy.epochs})")
    p.add_argument("--proxy-only", action="store_true", help="train with the study's proxy only, not the full schedule")
    p.add_argument("--conv", nargs="+", choices=list(BASELINE_KINDS), metavar="KIND",
                   help=f"conv kinds in MobileNetV2 (dsc: as published; default: all of {', '.join(BASELINE_KINDS)})")
    p.add_argument("--json", action="store_true", help="print the baselines as JSON (progress goes to stderr)")

    p = command_parser("dashboard", "write a self-contained HTML dashboard of a study (Plotly, works offline)")
    p.add_argument("study", metavar="STUDY", help="study name")
    study_args(p)
    p.add_argument("--out", metavar="FILE.html", help="where to write it (default: studies/<name>/dashboard.html)")
    p.add_argument("--open", action="store_true", help="open it in the default browser")

    p = command_parser("export", "write a standalone model.py (torch only), arch.json and weights.pt")
    p.add_argument("target", metavar="STUDY|ARCH", help=f"a study name, an ArchSpec JSON file or a preset ({presets})")
    study_args(p)
    p.add_argument("--trial", default="best",
                   help="'best' (the verdict's pick; without finals, the best proxy val accuracy within budget) "
                        "or a trial number")
    p.add_argument("--out", metavar="DIR", help="default: exports/<study>-trial<N> (or exports/<json or preset name>)")
    p.add_argument("--weights", metavar="FILE", help="weights for an ArchSpec JSON or preset target "
                                                     "(default: weights.pt next to the JSON file, when present)")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (needs onnx and onnxscript)")
    p.add_argument("--torchscript", action="store_true", help="also write model.ts (scripted TorchScript)")
    p.add_argument("--torch-export", action="store_true",
                   help="also write model.pt2 (torch.export; load with torch.export.load), checked by loading it back")

    p = command_parser("train", "train one architecture fully (a study trial or an ArchSpec JSON file)")
    p.add_argument("target", metavar="STUDY|ARCH.json", help="a study name, or an ArchSpec JSON file")
    study_args(p)
    p.add_argument("--trial", default="best", help="'best' or a trial number (study targets)")
    p.add_argument("--epochs", type=int, default=full.proxy.epochs, help="training epochs")
    p.add_argument("--dataset", help=f"one of {', '.join(DATASETS)} (default: the study's; "
                                     f"{search.dataset} for a JSON file)")
    p.add_argument("--data-dir", help="where torchvision datasets live (default: the study's, else "
                                      "~/.cache/dsearch/data)")
    p.add_argument("--train-resolution", type=int,
                   help="training input size (default: the study's proxy setting, else the data's own size)")
    p.add_argument("--batch-size", type=int, default=full.proxy.batch_size, help="training batch size")
    p.add_argument("--optimizer", default=full.proxy.optimizer, choices=list(OPTIMIZERS), help="optimizer")
    p.add_argument("--lr", type=float, help=lr_help.replace(_lr_defaults(), _lr_defaults(full_training=True)))
    p.add_argument("--label-smoothing", type=float, default=full.proxy.label_smoothing,
                   help="label smoothing of the cross-entropy loss")
    p.add_argument("--device", default=full.device, help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, ...")
    p.add_argument("--seed", type=int, default=full.proxy.seed, help="data split and training seed")
    p.add_argument("--out", metavar="DIR", help="for a JSON target (default: trained/<json name>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")

    p = command_parser("audit", "check the proxy: retrain a sample of trials fully and compare rankings "
                                "(Kendall tau, Spearman) of the proxy, MFLOPs and params with full test accuracy")
    p.add_argument("study", metavar="STUDY", help="study name")
    study_args(p)
    p.add_argument("--k", type=int, default=DEFAULT_K,
                   help="trials to retrain, at least: the whole Pareto front, then trials spread over quantile "
                        "strata of proxy accuracy x MFLOPs until each stratum has one")
    p.add_argument("--epochs", type=int, default=full.proxy.epochs, help="full training epochs (as `dsearch train`)")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the hand-designed baselines at the budget (trained with the proxy and the full schedule)")
    p.add_argument("--json", action="store_true", help="print the stored audit as one JSON object, nothing else")
    p.add_argument("--device", default=full.device, help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, ...")

    p = command_parser("latency", "predicted and measured latency of an architecture on a latency target; "
                                  "with --space, build a target's latency table (to copy to the machine that searches)")
    p.add_argument("arch", metavar="ARCH|STUDY", nargs="?",
                   help=f"preset ({presets}), ArchSpec JSON file, or study name (with --trial)")
    p.add_argument("--target", default="ort-cpu",
                   help="RUNTIME[:threads=N,batch=N,resolution=N], runtimes: ort-cpu, torch-cpu, torch-cuda "
                        "(default: ort-cpu)")
    p.add_argument("--table", metavar="FILE",
                   help="a latency table file (e.g. copied from the machine a model ships on; default: this "
                        "machine's table of the target in DSEARCH_LATENCY_DIR or ~/.cache/dsearch/latency)")
    study_args(p)
    p.add_argument("--trial", default="best", help="'best' or a trial number (study targets) (default: best)")
    p.add_argument("--resolution", type=int, help="deployment resolution to time at (default: the spec's)")
    p.add_argument("--again", action="store_true",
                   help="measure the whole network again, not from the table (default: off)")
    p.add_argument("--space", help="build the table: measure the parts of --samples architectures of this space "
                                   "(name or YAML file), and a few of them whole (default: none, measure ARCH)")
    p.add_argument("--samples", type=int, default=100, help="architectures sampled with --space (default: 100)")
    p.add_argument("--budget-mflops", type=float,
                   help="with --space: sample only architectures within it (default: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --space samples (default: 0)")
    p.add_argument("--in-channels", type=int, default=1, help="input channels of the --space samples (default: 1)")
    p.add_argument("--num-classes", type=int, default=10, help="classes of the --space samples (default: 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object (default: off)")

    p = command_parser("spaces", "list the search spaces with their size and MFLOPs range; with a budget, the "
                                 "share of each space within it")
    p.add_argument("space", nargs="*", help="built-in space names or YAML files (default: every built-in space)")
    p.add_argument("--budget-mflops", type=float,
                   help="MFLOPs budget at each space's resolution (default: none, no share is estimated)")
    p.add_argument("--budget-mparams", type=float, help="parameter budget in millions (default: none)")
    p.add_argument("--samples", type=int, default=10_000, help="random samples per space for the share")
    p.add_argument("--seed", type=int, default=0, help="seed of the random samples")
    p.add_argument("--in-channels", type=int, default=1, help="input channels the costs are counted for")
    p.add_argument("--num-classes", type=int, default=10, help="classes the costs are counted for")
    for p in sub.choices.values():  # --debug also after the command; SUPPRESS keeps `dsearch --debug run` working
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    return parser


def _full_train_defaults():
    from .training.full import FullTrainConfig

    return FullTrainConfig()


def _lr_defaults(full_training: bool = False) -> str:
    """The per-optimizer default peak learning rates, as the trainers pick them."""
    from .training.full import FULL_TRAIN_SGD_LR
    from .training.proxy import DEFAULT_LR

    rates = {**DEFAULT_LR, "sgd": FULL_TRAIN_SGD_LR} if full_training else DEFAULT_LR
    return " / ".join(f"{rate:g} {opt}" for opt, rate in rates.items())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. A user error or a write the disk refused (full, read-only) is one line and exit 2, Ctrl-C
    exit 130, both without a traceback unless --debug; any other exception is a bug in dsearch and keeps its
    traceback."""
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    if threading.current_thread() is threading.main_thread():
        on_sigterm_raise()  # a scheduler's or `timeout`'s SIGTERM ends the work like Ctrl-C, keeping what finished
    logging.getLogger("dsearch").setLevel(logging.DEBUG if debug else logging.NOTSET)
    try:
        code = COMMANDS[args.command](args)
        if code == INTERRUPTED_CODE and terminated():  # the command caught the interrupt and kept what finished
            print(f"dsearch {args.command}: terminated (SIGTERM)", file=sys.stderr)
            return TERMINATED_CODE
        return code
    except DsearchError as err:
        if debug:
            traceback.print_exc()
        print(f"dsearch {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        if debug:
            traceback.print_exc()
        what = str(err) if isinstance(err, Terminated) else "interrupted"
        print(f"dsearch {args.command}: {what}", file=sys.stderr)
        return TERMINATED_CODE if isinstance(err, Terminated) else INTERRUPTED_CODE
    except BrokenPipeError:  # e.g. `dsearch show X | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as err:  # a write the disk refused where no command named it (the study's storage)
        problem = write_problem(err)
        if problem is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"dsearch {args.command}: error: {_refused_storage(args, problem)}", file=sys.stderr)
        return 2


def _refused_storage(args: argparse.Namespace, problem: str) -> str:
    """The line for a refused write of the command's study storage (any other write says its own)."""
    from .paths import default_storage, refused_write
    from .search.storage import storage_write_error

    name = getattr(args, "study_name", None) or getattr(args, "study", None) or getattr(args, "target", None)
    storage = getattr(args, "storage", None)
    if storage or (name and _is_study_target(name)):
        return str(storage_write_error(storage or default_storage(file_part(name or "default")), problem))
    return refused_write("a file", problem, None)


if __name__ == "__main__":
    sys.exit(main())
