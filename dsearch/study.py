"""The Optuna driver: sample -> cost -> budget check -> proxy training -> storage.

Every candidate's cost is counted at the deployment resolution before any training. One over
budget is never trained: it is recorded (cost, reason) as a PRUNED trial whose constraint
values are positive, so the sampler learns from it (`trial.set_constraint`), and its repair
(dsearch.budget: the closest architecture within the budget by a documented rule) is enqueued
as the next trial, so every sample leads to a trainable candidate. An architecture already
trained in the study is not trained again: the repeat is recorded as a duplicate with the
original's result. A run that cannot find anything new to train stops and says why. Several
`dsearch run` processes on one storage cooperate on one study; RDB storages (SQLite by default,
PostgreSQL/MySQL for many machines) carry heartbeats, so a killed worker's trial is marked failed.
"""
from __future__ import annotations

import os
import random
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
import optuna.storages.journal  # a submodule: `import optuna` alone does not declare it
import sqlalchemy
import torch
from optuna.trial import FrozenTrial, TrialState

from . import native
from .archspec import ArchSpecError
from .budget import Budget, build, feasible_count, feasible_params, random_recorder, repair
from .cost import Cost, spec_cost
from .data import Dataset, load_dataset
from .errors import DsearchError
from .failures import check_finite_state, failure_reason, optuna_log_level, recording_failures
from .latency import measure_latency
from .paths import default_storage, local_storage_file
from .record import STATUSES, arch_attrs, arch_key, name_metrics, set_constraints, trial_arch_key
from .resume import CONFIG_ATTR, bind, check_resume, space_digest
from .spaces import Space, extreme_spec, load_space, sample
from .train import OPTIMIZERS, DeviceData, ProxyConfig, TrainingDiverged, select_device, train_proxy
from .validate import check_device, check_fits_memory, check_int, check_number, check_resolution, check_seed
from .weights import artifact_dir, save_trial_weights

OBJECTIVES = ("multi", "accuracy")
MAX_FAILURES_IN_A_ROW = 5  # a broken setup should not burn through every sample
STALE_AFTER = 6  # trials in a row that trained nothing new before a random untried candidate is enqueued
FRESH_ATTEMPTS = 300  # random samples (repaired) tried when looking for an untried candidate
HEARTBEAT_S = 20
STORAGE_ATTEMPTS = 4
GRACE_HEARTBEATS = 3  # a trial whose worker missed 3 heartbeats (60 s by default) is marked failed
WORKER_SEED_STRIDE = 1_000_003  # sampler seeds of parallel workers lie this far apart
HEARTBEAT_ENV = "DSEARCH_HEARTBEAT_S"  # seconds between heartbeats; tests shorten it to see a killed worker sooner


def heartbeat_seconds() -> int:
    """Seconds between a worker's heartbeats on an RDB storage: $DSEARCH_HEARTBEAT_S, else 20."""
    text = os.environ.get(HEARTBEAT_ENV, "")
    if not text:
        return HEARTBEAT_S
    if not text.isdigit() or int(text) < 1:
        raise DsearchError(f"{HEARTBEAT_ENV}={text!r} must be a whole number of seconds >= 1")
    return int(text)


@dataclass(frozen=True)
class SearchConfig:
    space: str = "mobile"
    dataset: str = "fashion-mnist-embedded"
    data_dir: str | None = None
    budget_mflops: float | None = None
    budget_mparams: float | None = None
    resolution: int | None = None  # deployment resolution; None: the space's
    objective: str = "multi"  # multi: (val acc up, MFLOPs down); accuracy: val acc up
    sampler: str = "tpe"
    pruner: str = "median"  # used with objective "accuracy" (Optuna prunes single-objective studies only)
    seed: int = 0
    device: str = "auto"
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    measure_latency: bool = False  # batch-1 eval latency of each trained candidate on the training device
    # Multi-objective early stopping: stop a trial whose val acc after an epoch trails, by more than the margin,
    # a cheaper-or-equal Pareto-front trial's val acc after the same epoch (Optuna's pruners are single-objective).
    early_stop: bool = False
    early_stop_margin: float = 0.02

    @property
    def budget(self) -> Budget:
        return Budget(self.budget_mflops, self.budget_mparams, self.resolution)

    def identity(self, space: Space, train_resolution: int) -> dict[str, Any]:
        """The settings a study is bound to (see dsearch.resume); resuming with other values is refused."""
        proxy = {f"proxy.{k}": v for k, v in asdict(self.proxy).items() if k not in ("seed", "train_resolution")}
        return {"version": 2, "space": space.name, "space_sha256": space_digest(space), "dataset": self.dataset,
                "budget_mflops": self.budget_mflops, "budget_mparams": self.budget_mparams,
                "resolution": self.resolution or space.resolution, "train_resolution": train_resolution,
                "objective": self.objective, **proxy}


@dataclass
class SearchSummary:
    study: optuna.Study
    storage_url: str
    resolution: int
    counts: dict[str, int]
    wall_s: float
    interrupted: bool = False
    asked: int = 0  # architectures this run was asked to train
    trained: int = 0  # ... and trained (this worker, this run)
    failed: int = 0  # trials that failed in this run
    last_failure: str | None = None  # the last failed trial's reason
    untrained_s: float = 0.0  # this run's time in trials that trained nothing (rejected, invalid, duplicate)
    stopped: str | None = None  # why the run stopped before training what was asked, when it could not go on
    exhausted: str | None = None  # set when every architecture within the budget has been trained

    def shortfall(self) -> str | None:
        """Why this run trained fewer architectures than asked, when trials failed; None otherwise."""
        if self.interrupted or self.trained >= self.asked or not self.failed:
            return None
        return (f"{self.trained} of {self.asked} architectures trained: {self.failed} trial(s) failed "
                f"(last: {self.last_failure})")


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`: an RDB URL (sqlite/postgresql/mysql) with heartbeats, or a journal file path."""
    local = local_storage_file(url)
    if local is not None:
        _check_storage_file(local, url)
    if "://" in url:
        engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        heartbeat = heartbeat_seconds()
        # Workers starting together on an empty database race to create Optuna's tables: retry.
        for attempt in range(STORAGE_ATTEMPTS):
            try:
                with warnings.catch_warnings():
                    # Heartbeats are "experimental" in Optuna 5 but are what marks a killed worker's trial failed.
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                         heartbeat_interval=heartbeat,
                                                         grace_period=GRACE_HEARTBEATS * heartbeat)
                if url.startswith("sqlite:///"):
                    _sqlite_write_ahead_log(storage)
                return storage
            except Exception as err:  # noqa: BLE001 - any driver/connection error becomes one line
                if "import" in str(err).lower() or attempt == STORAGE_ATTEMPTS - 1:
                    raise DsearchError(f"cannot open storage {url!r}: {str(err).splitlines()[0]}") from None
                time.sleep(0.5 + attempt)
    try:
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
    except OSError as err:
        raise DsearchError(f"cannot open journal storage {url}: {err.strerror or err}") from None


def _check_storage_file(path: Path, url: str) -> None:
    """A storage file must be a file (or not exist yet) in a folder that can be made; one line otherwise."""
    if path.is_dir():
        example = path / ("study.db" if "://" in url else "journal.log")
        raise DsearchError(f"storage {url} is a folder; give a file path (e.g. {example})")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DsearchError(f"cannot make the folder of storage {url}: {err.strerror or err}") from None


def storage_url_of(study: optuna.Study) -> str:
    """The URL (RDB) or file path (journal) of an open study's storage, as `open_storage` takes it."""
    storage = getattr(study, "_storage", None)
    storage = getattr(storage, "_backend", storage)  # Optuna wraps RDB storages in a cache
    if isinstance(storage, optuna.storages.RDBStorage):
        return str(storage.url)
    backend = getattr(storage, "_backend", None)
    if isinstance(backend, optuna.storages.journal.JournalFileBackend):
        return str(backend._file_path)
    raise DsearchError("cannot tell where this study is stored; pass storage=URL")


def _sqlite_write_ahead_log(storage: optuna.storages.RDBStorage) -> None:
    """WAL journal with synchronous=NORMAL on every connection: a commit costs ~4x less than in SQLite's default.

    Every trial writes tens of small transactions (each parameter and attribute), so this is what keeps a
    rejected sample cheap. A killed process loses nothing committed; only a power cut can lose the last commits.
    """
    def on_connect(connection: Any, _record: Any) -> None:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
        except Exception:  # noqa: BLE001 - e.g. locked by a worker in another journal mode: keep the defaults
            pass

    sqlalchemy.event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened while creating the tables predate the listener


def open_study(study_name: str, storage_url: str | None = None) -> tuple[optuna.Study, str]:
    """An existing study (running or finished) and its storage URL; never creates one."""
    url = storage_url or default_storage(study_name)
    local = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None if "://" in url else url
    if local is not None and not Path(local).is_file():
        hint = "" if storage_url else " (the default storage); pass --storage URL if it lives elsewhere"
        raise DsearchError(f"no study '{study_name}': {url} does not exist{hint}")
    storage = open_storage(url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = ", ".join(optuna.get_all_study_names(storage)) or "none"
        raise DsearchError(f"no study '{study_name}' in {url} (studies there: {names})") from None
    return study, url


SAMPLER_FACTORIES: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    # constant_liar: a running trial of another worker counts as a poor result, so that workers spread out
    # (no effect with one worker, which never asks while its own trial runs).
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=6, constant_liar=True),
    "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed, population_size=8),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}
PRUNER_FACTORIES: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    "hyperband": lambda: optuna.pruners.HyperbandPruner(),
    "none": lambda: optuna.pruners.NopPruner(),
}


def check_config(cfg: SearchConfig) -> None:
    """Every setting checked before anything is loaded or written; each error states the rule."""
    for value, flag in ((cfg.budget_mflops, "--budget-mflops"), (cfg.budget_mparams, "--budget-mparams")):
        if value is not None:
            check_number(value, flag, low=0, low_open=True)
    check_resolution(cfg.resolution, "--resolution")
    if cfg.objective not in OBJECTIVES:
        raise DsearchError(f"unknown objective {cfg.objective!r}; valid: {', '.join(OBJECTIVES)}")
    for name, table, what in ((cfg.sampler, SAMPLER_FACTORIES, "sampler"), (cfg.pruner, PRUNER_FACTORIES, "pruner")):
        if name not in table:
            raise DsearchError(f"unknown {what} {name!r}; valid: {', '.join(table)}")
    check_seed(cfg.seed)
    check_device(cfg.device)
    check_proxy(cfg.proxy)


def check_proxy(p: ProxyConfig) -> None:
    """The proxy-training settings: finite and in range."""
    check_int(p.epochs, "--epochs", 1)
    check_int(p.batch_size, "--batch-size", 2)
    if p.train_subset is not None:
        check_int(p.train_subset, "--train-subset", 1)
        if p.train_subset < p.batch_size:
            raise DsearchError(f"--train-subset {p.train_subset} is smaller than one batch ({p.batch_size})")
    check_resolution(p.train_resolution, "--train-resolution")
    if p.optimizer not in OPTIMIZERS:
        raise DsearchError(f"unknown optimizer {p.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if p.lr is not None:
        check_number(p.lr, "--lr", low=0, low_open=True)
    if p.weight_decay is not None:
        check_number(p.weight_decay, "weight decay", low=0)
    check_number(p.label_smoothing, "--label-smoothing", low=0, high=1, high_open=True)
    check_number(p.bsconv_alpha, "bsconv_s alpha", low=0)
    check_seed(p.seed)


def check_fits(space: Space, data: Dataset, cfg: SearchConfig, device) -> None:
    """Refuse resolutions whose activations cannot fit: counting the largest candidate, and training it."""
    largest = extreme_spec(space, data.in_channels, data.num_classes, cfg.resolution, cheapest=False)
    check_fits_memory(largest, cfg.resolution or space.resolution, 1, torch.device("cpu"), "--resolution")
    check_fits_memory(largest, cfg.proxy.train_resolution or data.image_size[0], cfg.proxy.batch_size, device,
                      "--train-resolution", training=True)


def check_budget_reachable(space: Space, data: Dataset, cfg: SearchConfig) -> Cost:
    """Fail at once when no architecture of the space fits the budget; returns the cheapest cost."""
    cheapest = spec_cost(extreme_spec(space, data.in_channels, data.num_classes, cfg.resolution))
    res = cfg.resolution or space.resolution
    if cfg.budget_mflops is not None and cheapest.mflops > cfg.budget_mflops:
        raise DsearchError(
            f"no architecture of space '{space.name}' fits --budget-mflops {cfg.budget_mflops:g}: the cheapest costs "
            f"{cheapest.mflops:.2f} MFLOPs at {res}x{res}; raise the budget or use a smaller space/resolution")
    if cfg.budget_mparams is not None and cheapest.mparams > cfg.budget_mparams:
        raise DsearchError(
            f"no architecture of space '{space.name}' fits --budget-mparams {cfg.budget_mparams:g}: the cheapest has "
            f"{cheapest.mparams:.3f} M params; raise the budget or use a smaller space")
    return cheapest


class Objective:
    """Optuna objective: one sampled architecture, checked against the budget, then trained."""

    def __init__(self, cfg: SearchConfig, space: Space, data: Dataset, device_data: DeviceData,
                 log: Callable[[str], None], progress: Callable[[int, int], None] | None = None,
                 weights_dir: Path | None = None, worker: int | None = None) -> None:
        self.cfg, self.space, self.data, self.device_data = cfg, space, data, device_data
        self.worker = worker  # which worker of a parallel run trains here (None: a standalone run)
        self.weights_dir = weights_dir
        self.resolution = cfg.resolution or space.resolution
        self.train_resolution = device_data.size
        self.log, self.progress = log, progress

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        try:
            spec = sample(self.space, trial, self.data.in_channels, self.data.num_classes, self.resolution)
        except ArchSpecError as err:
            self._constraints(trial, invalid=1.0)
            self._finish(trial, "invalid", f"invalid architecture: {err}")
            raise optuna.TrialPruned(f"invalid architecture: {err}") from None
        cost = spec_cost(spec)
        key = arch_key(spec)
        for name, value in {**arch_attrs(spec), "arch_key": key}.items():
            trial.set_user_attr(name, value)
        trial.set_user_attr("mflops", cost.mflops)
        trial.set_user_attr("mparams", cost.mparams)
        trial.set_user_attr("resolution", self.resolution)
        over_flops = cost.mflops - self.cfg.budget_mflops if self.cfg.budget_mflops is not None else -1.0
        over_params = cost.mparams - self.cfg.budget_mparams if self.cfg.budget_mparams is not None else -1.0
        self._constraints(trial, over_flops, over_params)
        where = f"{cost.mflops:.1f} MFLOPs at {self.resolution}x{self.resolution}, {cost.mparams:.2f} M params"
        if over_flops > 0 or over_params > 0:
            limits = []
            if over_flops > 0:
                limits.append(f"> {self.cfg.budget_mflops:g} MFLOPs")
            if over_params > 0:
                limits.append(f"> {self.cfg.budget_mparams:g} M params")
            reason = f"over budget: {where} ({', '.join(limits)})"
            self._finish(trial, "rejected", reason)
            fixed, params, steps = repair(self.space, trial.params, self.cfg.budget, self.data.in_channels,
                                          self.data.num_classes)
            trial.study.enqueue_trial(params, user_attrs={"repair_of": trial.number, "repair_changes": steps})
            self.log(f"trial {trial.number}: rejected, {reason}; queued its repair "
                     f"({spec_cost(fixed).mflops:.1f} MFLOPs, {steps} change(s))")
            raise optuna.TrialPruned(reason)
        original = self.trained_with(trial.study, key, trial.number)
        if original is not None:
            return self._duplicate(trial, original)
        train_cost = spec_cost(spec, self.train_resolution)
        trial.set_user_attr("mflops_train", train_cost.mflops)
        trial.set_user_attr("train_resolution", self.train_resolution)
        if self.device_data.device.type == "cpu":  # the thread count changes a seeded trial's sums, so its result
            trial.set_user_attr("cpu_threads", torch.get_num_threads())
            trial.set_user_attr("cpu_kernels", native.status())  # dsearch's own or PyTorch's: sums differ slightly
        if self.worker is not None:
            trial.set_user_attr("worker", self.worker)
        if self.cfg.measure_latency:
            trial.set_user_attr("latency_ms", round(measure_latency(spec, self.device_data.device), 3))
            trial.set_user_attr("latency_device", str(self.device_data.device))
        trial.set_user_attr("status", "training")
        single = self.cfg.objective == "accuracy"

        def on_epoch(epoch: int, acc: float) -> None:
            trial.set_user_attr("history", trial.user_attrs.get("history", []) + [acc])
            if self.cfg.early_stop and not single and epoch + 1 < self.cfg.proxy.epochs:
                better = outpaced_by(trial.study, cost.mflops, epoch, acc, self.cfg.early_stop_margin)
                if better is not None:
                    reason = (f"stopped early after epoch {epoch + 1}: val acc {acc:.4f} is more than "
                              f"{self.cfg.early_stop_margin:g} below the {better.user_attrs['history'][epoch]:.4f} "
                              f"of trial {better.number} ({better.user_attrs['mflops']:.1f} MFLOPs, on the Pareto "
                              "front) at that epoch")
                    self._finish(trial, "pruned", reason)
                    trial.set_user_attr("trained", True)
                    self.log(f"trial {trial.number}: {reason}")
                    raise optuna.TrialPruned()
            if single:
                trial.report(acc, epoch)
                if trial.should_prune():
                    self._finish(trial, "pruned", f"pruned by {self.cfg.pruner} after epoch {epoch + 1} "
                                                  f"(val acc {acc:.4f})")
                    trial.set_user_attr("trained", True)
                    raise optuna.TrialPruned()

        try:
            result = train_proxy(spec, self.device_data, self.cfg.proxy, on_epoch, self.progress)
            check_finite_state(result.state)  # a finite loss can hide inf batch-norm statistics
        except TrainingDiverged as err:  # a failure, not a trained trial (run_search logs it)
            self._finish(trial, "failed", f"training diverged: {err}")
            raise
        for key, value in (("val_acc", result.val_acc), ("test_acc", result.test_acc),
                           ("train_time_s", round(result.train_time_s, 2)), ("device", result.device),
                           ("images_per_s", round(result.images_per_s, 1)), ("epochs", result.epochs)):
            trial.set_user_attr(key, value)
        trial.set_user_attr("trained", True)
        if self.weights_dir is not None and result.state is not None:
            try:
                save_trial_weights(trial, result.state, self.weights_dir)
            except OSError as err:  # the accuracy is the result; lost weights can be retrained with `dsearch train`
                self.log(f"trial {trial.number}: weights not kept: {err}")
        self._finish(trial, "complete", None)
        self.log(f"trial {trial.number}: val acc {result.val_acc:.4f} (test {result.test_acc:.4f}), {where} "
                 f"[{train_cost.mflops:.2f} MFLOPs at {self.train_resolution}x{self.train_resolution} trained], "
                 f"{result.train_time_s:.0f} s, {spec.summary()}")
        return result.val_acc if single else (result.val_acc, cost.mflops)

    def trained_with(self, study: optuna.Study, key: str, exclude: int) -> optuna.trial.FrozenTrial | None:
        """The earliest finished trial of `study` that trained the architecture `key`, if any."""
        return next((t for t in trained_trials(study) if t.number != exclude and trial_arch_key(t) == key), None)

    def _duplicate(self, trial: optuna.Trial, original: optuna.trial.FrozenTrial) -> float | tuple[float, float]:
        """Record a repeat of an architecture the study already trained, with the original's result."""
        trial.set_user_attr("duplicate_of", original.number)
        reason = f"same architecture as trial {original.number}, which holds its result; not trained again"
        self._finish(trial, "duplicate", reason)
        self.log(f"trial {trial.number}: duplicate of trial {original.number}, not trained again")
        if original.state != TrialState.COMPLETE:
            raise optuna.TrialPruned(reason)
        values = original.values  # a complete trial holds one value per objective: (val acc[, MFLOPs])
        return (values[0], values[1]) if self.cfg.objective == "multi" else values[0]

    @staticmethod
    def _constraints(trial: optuna.Trial, over_flops: float = -1.0, over_params: float = -1.0,
                     invalid: float = 0.0) -> None:
        # The same keys on every trial: the samplers compare constraint vectors across trials.
        set_constraints(trial, {"mflops_over_budget": over_flops, "mparams_over_budget": over_params,
                                "invalid": invalid})

    @staticmethod
    def _finish(trial: optuna.Trial, status: str, reason: str | None) -> None:
        trial.set_user_attr("status", status)
        if reason:
            trial.set_user_attr("reason", reason)


def outpaced_by(study: optuna.Study, mflops: float, epoch: int, acc: float,
                margin: float) -> optuna.trial.FrozenTrial | None:
    """A Pareto-front trial costing at most `mflops` whose val acc after `epoch` beat `acc` by more than `margin`."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("status") == "complete" and "val_acc" in t.user_attrs]
    front = [t for t in done if not any(
        o.user_attrs["val_acc"] >= t.user_attrs["val_acc"] and o.user_attrs["mflops"] <= t.user_attrs["mflops"]
        and (o.user_attrs["val_acc"], -o.user_attrs["mflops"]) != (t.user_attrs["val_acc"], -t.user_attrs["mflops"])
        for o in done)]
    for t in sorted(front, key=lambda t: t.number):
        history = t.user_attrs.get("history", [])
        if t.user_attrs["mflops"] <= mflops and len(history) > epoch and history[epoch] > acc + margin:
            return t
    return None


def prepare_study(cfg: SearchConfig, study_name: str, storage_url: str, identity: dict[str, Any],
                  allow_changed_settings: bool = False, worker: int = 0) -> optuna.Study:
    """Create the study, or load it and check that it was made with the same settings (see dsearch.resume).

    `worker` numbers the parallel workers of one `dsearch run --jobs N` (0 for the first): each gets its own
    sampler seed, so that workers started at the same moment do not propose the same architectures.
    """
    storage = open_storage(storage_url)
    directions: list[Literal["maximize", "minimize"]] = ["maximize"]  # val acc, then MFLOPs for "multi"
    if cfg.objective == "multi":
        directions.append("minimize")
    try:
        existing = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        existing = None
    changes = check_resume(study_name, existing, identity, allow_changed_settings)
    # A distinct sampler seed per start, so that a resumed or second worker does not replay the same samples.
    seed = cfg.seed + (len(existing.get_trials(deepcopy=False)) if existing is not None else 0)
    seed = (seed + WORKER_SEED_STRIDE * worker) % 2 ** 32
    study = optuna.create_study(study_name=study_name, storage=storage, directions=directions, load_if_exists=True,
                                sampler=SAMPLER_FACTORIES[cfg.sampler](seed), pruner=PRUNER_FACTORIES[cfg.pruner]())
    bind(study, identity, asdict(cfg), existing is None, changes)
    name_metrics(study, cfg.objective, cfg.resolution or load_space(cfg.space).resolution)
    return study


def study_split_seed(study: optuna.Study, default: int) -> int:
    """The seed of the study's validation split: that of the run that made it (its recorded settings)."""
    seed = (study.user_attrs.get(CONFIG_ATTR) or {}).get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else default


def data_facts(data: Dataset) -> dict[str, Any]:
    """What a user of an exported model needs to know about its input and output."""
    return {"mean": [float(v) for v in data.mean], "std": [float(v) for v in data.std],
            "classes": [str(c) for c in data.classes], "image_size": list(data.image_size)}


def count_statuses(pairs: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Trials per dsearch status from (Optuna state name, status attr) pairs; RUNNING and FAIL states win."""
    counts = dict.fromkeys(STATUSES, 0)
    for state, status in pairs:
        if state == TrialState.RUNNING.name:
            counts["running"] += 1
        elif state == TrialState.WAITING.name:
            counts["waiting"] += 1
        elif state == TrialState.FAIL.name:
            counts["failed"] += 1
        else:
            counts[status if status in counts else "failed"] += 1
    return counts


def trial_status(trial: FrozenTrial) -> str:
    """A trial's dsearch status; a FAIL or RUNNING state wins over the attribute (a killed trial says "training")."""
    if trial.state in (TrialState.FAIL, TrialState.RUNNING):
        return "failed" if trial.state == TrialState.FAIL else "running"
    return trial.user_attrs.get("status", trial.state.name.lower())


def trial_counts(study: optuna.Study) -> dict[str, int]:
    return count_statuses((t.state.name, trial_status(t)) for t in study.get_trials(deepcopy=False))


def run_search(cfg: SearchConfig, study_name: str, storage_url: str | None = None, n_trials: int = 10,
               timeout: float | None = None, log: Callable[[str], None] = print,
               progress_factory: Callable[[int], Any] | None = None,
               trial_progress: Callable[[int, int], None] | None = None,
               allow_changed_settings: bool = False, worker: int | None = None,
               on_study: Callable[[optuna.Study, int], None] | None = None,
               shared_from: int | None = None) -> SearchSummary:
    """Run (or resume) a search until this worker has trained `n_trials` architectures or `timeout` passes.

    Every input is checked before anything is written, so bad input creates no study. A resume with
    other settings is refused unless `allow_changed_settings` (then the change is recorded on the study).
    `worker` numbers the parallel workers of one run (see dsearch.workers; None: a standalone run);
    `on_study(study, first)` is called once the study exists, before any trial, with the number this run's
    trials start from. With `shared_from` (the study's
    trial count when a parallel run began; -1: when this worker begins), `n_trials` counts what all the
    run's workers train from there on, and this worker starts no trial once those trained and those
    running reach it.
    """
    check_config(cfg)
    optuna.logging.set_verbosity(optuna_log_level())  # dsearch prints its own one line per trial
    check_int(n_trials, "--n-trials", 1)
    if timeout is not None:
        check_number(timeout, "--timeout", low=0, low_open=True)
    storage_url = storage_url or default_storage(study_name)
    space = load_space(cfg.space)
    data = load_dataset(cfg.dataset, cfg.data_dir, seed=cfg.seed)
    try:
        device = select_device(cfg.device)
    except (ValueError, RuntimeError) as err:
        raise DsearchError(str(err).splitlines()[0]) from None
    check_fits(space, data, cfg, device)
    check_budget_reachable(space, data, cfg)
    identity = cfg.identity(space, cfg.proxy.train_resolution or data.image_size[0])
    study = prepare_study(cfg, study_name, storage_url, identity, allow_changed_settings, worker or 0)
    split_seed = study_split_seed(study, cfg.seed)
    if split_seed != cfg.seed:  # every trial of a study is validated on the same images, whoever trains it
        data = load_dataset(cfg.dataset, cfg.data_dir, seed=split_seed)
        log(f"validating on the study's split (seed {split_seed}, the seed it was made with); --seed {cfg.seed} "
            "seeds this worker's sampler and training")
    if "dsearch_data" not in study.user_attrs:
        study.set_user_attr("dsearch_data", data_facts(data))
    device_data = DeviceData(data, device, cfg.proxy.train_subset, cfg.proxy.train_resolution)
    objective = Objective(cfg, space, data, device_data, log, trial_progress, artifact_dir(study, storage_url), worker)
    target, exhausted = _target(study, space, data, cfg, n_trials, log)
    bar = progress_factory(target) if progress_factory and target else None
    trained = 0
    failures_in_a_row = 0
    failed: list[str] = []  # this run's failure reasons
    stale = 0  # trials in a row that trained nothing new
    stopped: str | None = None
    first = len(study.get_trials(deepcopy=False))  # this run's trials come after
    rng = random.Random(f"{cfg.seed}/{first}" + (f"/{worker}" if worker else ""))  # worker 0 as a standalone run
    if shared_from is not None and shared_from < 0:
        shared_from = first
    if on_study is not None:
        on_study(study, first)

    def run_done() -> int:
        """Architectures this run has trained: this worker's, or with shared_from every worker's."""
        return trained if shared_from is None else len(trained_trials_since(study, shared_from))

    def shared_done(first_of_run: int) -> bool:
        """Whether a shared run's trained and running trials (all workers') reach the target."""
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        busy = sum(t.number >= first_of_run for t in running)  # this run's; not a dead worker's stale trial
        return len(trained_trials_since(study, first_of_run)) + busy >= target

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal trained, failures_in_a_row, stale, stopped, exhausted
        if shared_from is not None and shared_done(shared_from):  # this one's trial included
            study.stop()
        if trial.state == TrialState.FAIL:
            failures_in_a_row += 1
            reason = failure_reason(trial)
            failed.append(reason)
            log(f"trial {trial.number}: failed: {reason}")
            if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                stopped = f"{failures_in_a_row} trials in a row failed; last error: {reason}"
                log(f"stopping: {stopped}")
                study.stop()
            return
        # Only training resets the counts: rejections and repeats between failures do not.
        if trial.user_attrs.get("trained") and trial.user_attrs.get("status") != "duplicate":
            failures_in_a_row, stale = 0, 0
            trained += 1
            if bar is not None:
                bar.update(run_done() - bar.n)
            if shared_from is None and trained >= target:
                study.stop()
            return
        stale += 1
        if stale >= STALE_AFTER and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            params = fresh_candidate(study, space, data, cfg, rng)
            if params is None:
                count = feasible_count(space, cfg.budget, data.in_channels, data.num_classes)
                if count is not None and count <= len(trained_keys(study)):
                    exhausted = all_trained(count)
                else:
                    stopped = (f"the sampler proposed nothing new in {stale} trials and {FRESH_ATTEMPTS} random "
                               "samples found no untrained architecture within the budget")
                log(f"stopping: {exhausted or stopped}")
                study.stop()
                return
            study.enqueue_trial(params, user_attrs={"fresh_after": stale})
            log(f"the sampler proposed nothing new in {stale} trials: queued an untried random architecture")
            stale = 0

    start = time.perf_counter()
    interrupted = False
    if target and not exhausted and not (shared_from is not None and shared_done(shared_from)):  # a late worker
        try:
            study.optimize(recording_failures(objective), n_trials=1000 + 100 * target, timeout=timeout,
                           callbacks=[after_trial], catch=(Exception,), gc_after_trial=False, show_progress_bar=False)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if bar is not None:
                bar.close()
    wall = time.perf_counter() - start
    this_run = study.get_trials(deepcopy=False)[first:]
    # A shared run's workers stop as the others take the last trials: the run as a whole is judged by its caller.
    if not interrupted and not stopped and not exhausted and trained < target and timeout is None \
            and shared_from is None:
        stopped = f"sampled {len(this_run)} trials without training {target} architectures"
    if target < n_trials and run_done() >= target and not exhausted:
        exhausted = all_trained(len(trained_keys(study)))
    return SearchSummary(study=study, storage_url=storage_url, resolution=cfg.resolution or space.resolution,
                         counts=trial_counts(study), wall_s=wall, interrupted=interrupted, asked=target,
                         trained=trained, failed=len(failed), last_failure=failed[-1] if failed else None,
                         untrained_s=untrained_seconds(this_run), stopped=stopped, exhausted=exhausted)


def _target(study: optuna.Study, space: Space, data: Dataset, cfg: SearchConfig, n_trials: int,
            log: Callable[[str], None]) -> tuple[int, str | None]:
    """How many architectures this run trains: n_trials, or fewer where the space has fewer left within the budget."""
    count = feasible_count(space, cfg.budget, data.in_channels, data.num_classes)
    if count is None:
        return n_trials, None
    left = count - len(trained_keys(study))
    if left <= 0:
        return 0, all_trained(count)
    if left < n_trials:
        log(f"only {count} architectures of space '{space.name}' fit the budget and {left} are untrained: "
            f"training those {left}")
        return left, None
    return n_trials, None


def trained_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that trained an architecture (complete or pruned after training), repeats left out."""
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return [t for t in finished if t.user_attrs.get("trained") and t.user_attrs.get("status") != "duplicate"]


def trained_trials_since(study: optuna.Study, first: int) -> list[FrozenTrial]:
    """The trials numbered `first` or later that trained an architecture (repeats left out)."""
    return [t for t in trained_trials(study) if t.number >= first]


def trained_keys(study: optuna.Study) -> set[str]:
    """Fingerprints of the architectures the study has trained."""
    return {k for t in trained_trials(study) if (k := trial_arch_key(t)) is not None}


def all_trained(count: int) -> str:
    return f"all {count} architectures of the space within the budget are trained"


def fresh_candidate(study: optuna.Study, space: Space, data: Dataset, cfg: SearchConfig,
                    rng: random.Random) -> dict[str, Any] | None:
    """The parameters of a random architecture within the budget (repaired) that the study has not trained."""
    known = trained_keys(study)
    feasible = feasible_params(space, cfg.budget, data.in_channels, data.num_classes)
    if feasible is not None:  # a small space: pick straight from the architectures that fit
        untried = [p for p in feasible if arch_key(build(space, p, data.in_channels, data.num_classes,
                                                         cfg.resolution)[0]) not in known]
        return rng.choice(untried) if untried else None
    for _ in range(FRESH_ATTEMPTS):
        recorder = random_recorder(rng)
        try:
            sample(space, recorder, data.in_channels, data.num_classes, cfg.resolution)
        except ArchSpecError:
            continue
        spec, params, _ = repair(space, recorder.used, cfg.budget, data.in_channels, data.num_classes)
        if arch_key(spec) not in known:
            return params
    return None


def untrained_seconds(trials: Sequence[optuna.trial.FrozenTrial]) -> float:
    """Time in finished trials that trained nothing: rejected, invalid or duplicate samples (and their repairs)."""
    total = 0.0
    for t in trials:
        if t.user_attrs.get("status") not in ("rejected", "invalid", "duplicate"):
            continue
        if t.datetime_start is not None and t.datetime_complete is not None:
            total += (t.datetime_complete - t.datetime_start).total_seconds()
    return total
