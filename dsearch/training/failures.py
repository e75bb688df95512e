"""How a trial fails: its reason is kept on the trial, and a diverged one never counts as trained.

Optuna 5 stores no reason for a failed trial (only its logger prints the traceback), so every
failure's one-line reason is kept as the trial's `reason` user attribute, with `status` "failed".
A proxy whose loss stayed finite can still have diverged: a batch-norm running variance or a
weight that overflowed to inf/NaN. Such weights are checked after training and fail the trial.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial

from ..errors import Terminated
from .proxy import TrainingDiverged

LOGGER = "dsearch"  # `dsearch --debug` sets it to DEBUG: Optuna's own tracebacks of failed trials show again


def check_finite_state(state: Mapping[str, torch.Tensor] | None) -> None:
    """Raise TrainingDiverged naming the first trained tensor (weight or batch-norm statistic) that is not finite."""
    for name, tensor in (state or {}).items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = tensor[~torch.isfinite(tensor)].flatten()[0].item()
            raise TrainingDiverged(f"{name} holds {bad} after training")


def recording_failures(objective: Callable[[optuna.Trial], Any]) -> Callable[[optuna.Trial], Any]:
    """`objective` that keeps the reason of any failure (crash, divergence, Ctrl-C) on the trial before it fails."""

    def run(trial: optuna.Trial) -> Any:
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except (Exception, KeyboardInterrupt) as err:
            if trial.user_attrs.get("status") != "failed":  # the objective may have said it already
                reason = (str(err) if isinstance(err, Terminated) else "interrupted (Ctrl-C)"
                          if isinstance(err, KeyboardInterrupt) else one_line(err))
                trial.set_user_attr("status", "failed")
                trial.set_user_attr("reason", reason)
            raise

    return run


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1]}" if text else type(err).__name__


def failure_reason(trial: FrozenTrial) -> str:
    """Why a FAIL trial failed: its kept reason, or what a trial with none must have met."""
    status, reason = trial.user_attrs.get("status"), trial.user_attrs.get("reason")
    if status == "failed" and reason:
        return reason
    if status in (None, "training"):  # nothing after the objective ran: its process ended mid-trial
        return "its worker was killed or lost while the trial ran"
    return f"Optuna refused its result (status {status})"


def optuna_log_level() -> int:
    """WARNING (Optuna prints each failed trial's traceback) under `--debug`, else ERROR: dsearch says why itself."""
    return logging.WARNING if logging.getLogger(LOGGER).isEnabledFor(logging.DEBUG) else logging.ERROR
