"""A study's trials as dsearch reads them: statuses and their counts, the trials that trained an architecture,
and the seed of the study's validation split.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from .record import CONFIG_ATTR, STATUS, STATUSES, TRAINED, stored_settings, trial_arch_key


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
    return trial.user_attrs.get(STATUS, trial.state.name.lower())


def trial_counts(study: optuna.Study) -> dict[str, int]:
    return count_statuses((t.state.name, trial_status(t)) for t in study.get_trials(deepcopy=False))


def trained_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that trained an architecture (complete or pruned after training), repeats left out."""
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return [t for t in finished if t.user_attrs.get(TRAINED) and t.user_attrs.get(STATUS) != "duplicate"]


def trained_trials_since(study: optuna.Study, first: int) -> list[FrozenTrial]:
    """The trials numbered `first` or later that trained an architecture (repeats left out)."""
    return [t for t in trained_trials(study) if t.number >= first]


def trained_keys(study: optuna.Study) -> set[str]:
    """Fingerprints of the architectures the study has trained."""
    return {k for t in trained_trials(study) if (k := trial_arch_key(t)) is not None}


def untrained_seconds(trials: Sequence[optuna.trial.FrozenTrial]) -> float:
    """Time in finished trials that trained nothing: rejected, invalid or duplicate samples (and their repairs)."""
    total = 0.0
    for t in trials:
        if t.user_attrs.get(STATUS) not in ("rejected", "invalid", "duplicate"):
            continue
        if t.datetime_start is not None and t.datetime_complete is not None:
            total += (t.datetime_complete - t.datetime_start).total_seconds()
    return total


def study_split_seed(study: optuna.Study, default: int) -> int:
    """The seed of the study's validation split: that of the run that made it (its recorded settings)."""
    seed = stored_settings(study, CONFIG_ATTR).get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else default
