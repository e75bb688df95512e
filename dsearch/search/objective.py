"""The Optuna objective: one sampled architecture, its cost and budget check, then proxy training.

An architecture over budget is recorded as rejected and its repair enqueued; one the study has trained
already is recorded as a duplicate with the original's result (see dsearch.search.driver), and one that another
trial holds (dsearch.search.claims: a worker is training it, or a lower-numbered trial sampled it at the same
moment) is recorded as a duplicate of that trial, not trained. A trial still training when the command's time
limit passes is stopped and kept as failed, with the reason.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from ..cost.count import spec_cost
from ..data import Dataset
from ..errors import Deadline, TimedOut
from ..model.archspec import ArchSpecError
from ..training import native
from ..training.advice import chance_advice, chance_causes
from ..training.failures import check_finite_state
from ..training.proxy import DeviceData, TrainingDiverged, chance_note, fit_batch, peak_lr, steps_per_epoch, train_proxy
from ..version import __version__
from .budget import MFLOPS, MPARAMS, repair
from .claims import CLAIM_AT, ArchClaims, ClaimRefresher
from .config import SearchConfig
from .latency import latency_repair, search_latency_model
from .record import (
    ARCH_KEY,
    AT_CHANCE,
    CHANCE_CAUSE,
    DUPLICATE_OF,
    LATENCY_CONSTRAINT,
    LATENCY_MEASURED,
    LATENCY_MS,
    LATENCY_P90,
    LATENCY_TARGET,
    REASON,
    REPAIR_OF,
    STATUS,
    TRAINED,
    arch_attrs,
    arch_key,
    set_constraints,
)
from .spaces import Space, sample
from .weights import NOT_KEPT_ATTR, WeightsNotKept, save_trial_weights


def warn_stderr(msg: str) -> None:
    """A warning the user must see whatever --quiet says (e.g. weights that could not be kept)."""
    print(msg, file=sys.stderr, flush=True)


TIMED_OUT = "timed_out"  # trial user attr: True on a trial the command's time limit stopped


class Objective:
    """Optuna objective: one sampled architecture, checked against the budget, then trained."""

    def __init__(self, cfg: SearchConfig, space: Space, data: Dataset, device_data: DeviceData,
                 log: Callable[[str], None], progress: Callable[[int, int], None] | None = None,
                 weights_dir: Path | None = None, worker: int | None = None, claims: ArchClaims | None = None,
                 deadline: Deadline | None = None, warn: Callable[[str], None] = warn_stderr) -> None:
        self.cfg, self.space, self.data, self.device_data = cfg, space, data, device_data
        self.worker = worker  # which worker of a parallel run trains here (None: a standalone run)
        self.claims = claims  # None: this worker alone decides (a study no other process works on, as in tests)
        self.deadline = deadline
        self.weights_dir = weights_dir
        self.resolution = cfg.resolution or space.resolution
        self.train_resolution = device_data.size
        self.log, self.progress, self.warn = log, progress, warn
        # Predicts each candidate's latency on the study's cost target, and times trained ones (--measure-latency).
        self.latency = search_latency_model(cfg, device_data.device, log)
        self.target = cfg.cost_target

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        try:
            spec = sample(self.space, trial, self.data.in_channels, self.data.num_classes, self.resolution)
        except ArchSpecError as err:
            self._constraints(trial, invalid=1.0)
            self._finish(trial, "invalid", f"invalid architecture: {err}")
            raise optuna.TrialPruned(f"invalid architecture: {err}") from None
        cost = spec_cost(spec)
        key = arch_key(spec)
        # Posting the key (with the claim's time) is this trial's claim on the architecture (dsearch.search.claims).
        for name, value in {**arch_attrs(spec), ARCH_KEY: key, CLAIM_AT: time.time()}.items():
            trial.set_user_attr(name, value)
        trial.set_user_attr("mflops", cost.mflops)
        trial.set_user_attr("mparams", cost.mparams)
        trial.set_user_attr("resolution", self.resolution)
        budget = self.cfg.budget
        costs: dict[str, float] = {MFLOPS: cost.mflops, MPARAMS: cost.mparams}
        where = f"{cost.mflops:.1f} MFLOPs at {self.resolution}x{self.resolution}, {cost.mparams:.2f} M params"
        if self.target is not None:  # predicted before any training, from the target's table (dsearch.latency)
            assert self.latency is not None
            costs[LATENCY_MS] = self.latency.predict_ms(spec)
            trial.set_user_attr(LATENCY_MS, costs[LATENCY_MS])
            trial.set_user_attr(LATENCY_TARGET, self.target.short)
            where += f", {costs[LATENCY_MS]:.3f} ms on {self.target.short} (predicted)"
        excess = budget.excess(costs)
        # No limit of a kind: -1, satisfied, so that every trial holds the same constraint keys.
        over_flops, over_params = excess.get(MFLOPS, -1.0), excess.get(MPARAMS, -1.0)
        self._constraints(trial, over_flops, over_params, over_ms=excess.get(LATENCY_MS, -1.0))
        limits = budget.exceeded(excess)
        if limits:
            reason = f"over budget: {where} ({', '.join(limits)})"
            self._finish(trial, "rejected", reason)
            if budget.ms is not None:
                assert self.latency is not None
                fixed, params, steps = latency_repair(self.space, trial.params, replace(budget, ms=None),
                                                      budget.ms, self.latency, self.data.in_channels,
                                                      self.data.num_classes)
                made = f"{spec_cost(fixed).mflops:.1f} MFLOPs, {self.latency.predict_ms(fixed):.3f} ms predicted"
            else:
                fixed, params, steps = repair(self.space, trial.params, budget, self.data.in_channels,
                                              self.data.num_classes)
                made = f"{spec_cost(fixed).mflops:.1f} MFLOPs"
            trial.study.enqueue_trial(params, user_attrs={REPAIR_OF: trial.number, "repair_changes": steps})
            self.log(f"trial {trial.number}: rejected, {reason}; queued its repair ({made}, {steps} change(s))")
            raise optuna.TrialPruned(reason)
        try:
            original = (self.claims or ArchClaims(trial.study)).claim(trial, key, self.deadline)
        except TimedOut as err:
            self._finish(trial, "failed", str(err))
            trial.set_user_attr(TIMED_OUT, True)
            raise
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
        # What the result depends on besides the study's settings: the same values give the same numbers.
        trial.set_user_attr("train_seed", self.cfg.proxy.seed)
        # How it is trained, as the trainer does it: the batch used (clamped to the split) and the lr it sets.
        n_train = len(self.device_data.train_x)
        used = fit_batch(self.cfg.proxy, n_train)
        trial.set_user_attr("batch_size", used.batch_size)
        trial.set_user_attr("lr", peak_lr(used))
        trial.set_user_attr("steps_per_epoch", steps_per_epoch(used, n_train))
        trial.set_user_attr("versions", {"dsearch": __version__, "torch": torch.__version__})
        if self.cfg.measure_latency:  # the whole network on the target, before training (never alongside it)
            assert self.latency is not None
            measured = self.latency.measure(spec)
            trial.set_user_attr(LATENCY_MEASURED, measured.median_ms)
            trial.set_user_attr(LATENCY_P90, measured.p90_ms)
            trial.set_user_attr(LATENCY_TARGET, self.latency.target.short)
        single = self.cfg.objective == "accuracy"
        refresh = ClaimRefresher(trial)

        def on_step(step: int, total: int) -> None:
            refresh()
            if self.progress is not None:
                self.progress(step, total)

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
                    trial.set_user_attr(TRAINED, True)
                    self.log(f"trial {trial.number}: {reason}")
                    raise optuna.TrialPruned()
            if single:
                trial.report(acc, epoch)
                if trial.should_prune():
                    self._finish(trial, "pruned", f"pruned by {self.cfg.pruner} after epoch {epoch + 1} "
                                                  f"(val acc {acc:.4f})")
                    trial.set_user_attr(TRAINED, True)
                    raise optuna.TrialPruned()

        try:
            result = train_proxy(spec, self.device_data, self.cfg.proxy, on_epoch, on_step, self.deadline)
            check_finite_state(result.state)  # a finite loss can hide inf batch-norm statistics
        except TrainingDiverged as err:  # a failure, not a trained trial (run_search logs it)
            self._finish(trial, "failed", f"training diverged: {err}")
            raise
        except TimedOut as err:  # cut short: its per-epoch history stays; its unfinished schedule is no result
            self._finish(trial, "failed", str(err))
            trial.set_user_attr(TIMED_OUT, True)
            raise
        for key, value in (("val_acc", result.val_acc), ("test_acc", result.test_acc),
                           ("train_time_s", round(result.train_time_s, 2)), ("device", result.device),
                           ("images_per_s", round(result.images_per_s, 1)), ("epochs", result.epochs),
                           ("train_loss", result.train_loss), ("peak_loss", result.peak_loss)):
            trial.set_user_attr(key, value)
        trial.set_user_attr(TRAINED, True)
        chance = chance_note(result.val_acc, len(self.device_data.val_y), self.data.num_classes)
        if chance is not None:  # a result that says nothing: kept, but marked and said so wherever it is shown
            advice = chance_advice(chance_causes(result, self.cfg.proxy, self.data.num_classes))
            trial.set_user_attr(AT_CHANCE, chance)
            trial.set_user_attr(CHANCE_CAUSE, advice)
            self.log(f"trial {trial.number}: warning: validation {chance}; {advice}")
        if self.weights_dir is not None and result.state is not None:
            try:
                save_trial_weights(trial, result.state, self.weights_dir)
            except WeightsNotKept as err:  # the accuracy is the result; `dsearch train` can train them again
                self.warn(f"warning: trial {trial.number}: {err}; its result is kept without weights (`dsearch "
                          f"train {trial.study.study_name} --trial {trial.number}` trains it again and keeps them)")
                trial.set_user_attr(NOT_KEPT_ATTR, str(err))  # said first: the storage may share the full disk
        self._finish(trial, "complete", None)
        self.log(f"trial {trial.number}: val acc {result.val_acc:.4f} (test {result.test_acc:.4f}), {where} "
                 f"[{train_cost.mflops:.2f} MFLOPs at {self.train_resolution}x{self.train_resolution} trained], "
                 f"{result.train_time_s:.0f} s, {spec.summary()}")
        return result.val_acc if single else (result.val_acc, costs[LATENCY_MS] if self.target else cost.mflops)

    def _duplicate(self, trial: optuna.Trial, original: optuna.trial.FrozenTrial) -> float | tuple[float, float]:
        """Record a repeat of an architecture another trial holds: with the original's result once it has one."""
        trial.set_user_attr(DUPLICATE_OF, original.number)
        if original.state in (TrialState.RUNNING, TrialState.WAITING):
            doing = ("is being trained (or sampled it first)" if original.state == TrialState.RUNNING
                     else "is queued to be trained")
            reason = f"same architecture as trial {original.number}, which {doing}; not trained here"
            self._finish(trial, "duplicate", reason)
            self.log(f"trial {trial.number}: duplicate of trial {original.number}, which {doing}; moving on")
            raise optuna.TrialPruned(reason)
        reason = f"same architecture as trial {original.number}, which holds its result; not trained again"
        self._finish(trial, "duplicate", reason)
        self.log(f"trial {trial.number}: duplicate of trial {original.number}, not trained again")
        if original.state != TrialState.COMPLETE:
            raise optuna.TrialPruned(reason)
        values = original.values  # a complete trial holds one value per objective: (val acc[, MFLOPs])
        return (values[0], values[1]) if self.cfg.objective == "multi" else values[0]

    def _constraints(self, trial: optuna.Trial, over_flops: float = -1.0, over_params: float = -1.0,
                     invalid: float = 0.0, over_ms: float = -1.0) -> None:
        # The same keys on every trial: the samplers compare constraint vectors across trials.
        values = {"mflops_over_budget": over_flops, "mparams_over_budget": over_params, "invalid": invalid}
        if self.cfg.budget_ms is not None:
            values[LATENCY_CONSTRAINT] = over_ms
        set_constraints(trial, values)

    @staticmethod
    def _finish(trial: optuna.Trial, status: str, reason: str | None) -> None:
        trial.set_user_attr(STATUS, status)
        if reason:
            trial.set_user_attr(REASON, reason)


def outpaced_by(study: optuna.Study, mflops: float, epoch: int, acc: float,
                margin: float) -> optuna.trial.FrozenTrial | None:
    """A Pareto-front trial costing at most `mflops` whose val acc after `epoch` beat `acc` by more than `margin`."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get(STATUS) == "complete" and "val_acc" in t.user_attrs]
    front = [t for t in done if not any(
        o.user_attrs["val_acc"] >= t.user_attrs["val_acc"] and o.user_attrs["mflops"] <= t.user_attrs["mflops"]
        and (o.user_attrs["val_acc"], -o.user_attrs["mflops"]) != (t.user_attrs["val_acc"], -t.user_attrs["mflops"])
        for o in done)]
    for t in sorted(front, key=lambda t: t.number):
        history = t.user_attrs.get("history", [])
        if t.user_attrs["mflops"] <= mflops and len(history) > epoch and history[epoch] > acc + margin:
            return t
    return None
