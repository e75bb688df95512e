"""The trial record: what dsearch keeps on Optuna trials and studies, and the conversions to and from it.

One definition for every writer (study) and reader (pareto, dashboard, export, weights, CLI):

- user attrs of a trial: `arch` (the ArchSpec as a JSON object; studies made by earlier versions
  hold it as a JSON string, still read), `arch_summary` (one readable line), `status` (one of
  STATUSES), `reason`, cost and training facts (`mflops`, `mparams`, `resolution`, `val_acc`, ...),
  `arch_key` (a fingerprint of the ArchSpec), `repair_of` (on a repaired candidate: the rejected
  trial it was made from) and `duplicate_of` (on a repeat: the trial that trained it).
- constraints: CONSTRAINT_KEYS through `trial.set_constraint` (what Optuna 5's samplers read) and
  the same values as one list under the trial system attr `constraints` (what optuna-dashboard
  shows). Both forms hold the same numbers, so a trial is feasible in one exactly when in the other.
  Optuna 5 reads both, so `trial.constraints` lists each value twice (by name and as '0', '1', '2'):
  samplers' sums of violations double, which changes no feasibility and no ordering between trials.
  Read them by name with `named_constraints`.
- study metric names (`study.set_metric_names`): what Optuna's plots and optuna-dashboard label
  the objectives with.
- user attrs of a study: every key is a constant below (the settings `IDENTITY_ATTR` and `CONFIG_ATTR`, the data
  facts, the finals' plan, rung records and verdict, the baselines, the audit, kept weights). The stored settings
  are read back only through `stored_settings` (and `study_budget`, the budget inside the identity; the data facts
  through `study_data_facts`, a trial's full training through `full_training`), which check their shape: a
  damaged record reads as one DsearchError naming the study, the record and what to do.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from typing import Any

import optuna

from ..errors import DsearchError
from ..model.archspec import ArchSpec
from ..version import __version__
from .budget import Budget

# Trial user attrs.
ARCH = "arch"
ARCH_SUMMARY = "arch_summary"
ARCH_KEY = "arch_key"
STATUS = "status"
REASON = "reason"
TRAINED = "trained"  # True once the trial trained an architecture (even when pruned after it)
DUPLICATE_OF = "duplicate_of"
REPAIR_OF = "repair_of"
AT_CHANCE = "at_chance"
CHANCE_CAUSE = "chance_cause"  # the likely cause of a trial at chance, as a hint with its fix
# The trial facts the objective records and readers take as they are (a column each in pareto.trials_frame).
FACT_KEYS = ("val_acc", "test_acc", "mflops", "mparams", "latency_ms", "resolution", "mflops_train",
             "train_resolution", "train_time_s", "epochs", "batch_size", "lr", "device", "latency_target",
             "latency_measured_ms", "latency_p90_ms")
# Study user attrs.
IDENTITY_ATTR = "dsearch_identity"  # the settings a study is bound to (dsearch.search.resume)
CONFIG_ATTR = "dsearch_config"  # the SearchConfig of the run that made it, as a dict
CHANGES_ATTR = "dsearch_changes"  # allowed changes of the bound settings
DATA_ATTR = "dsearch_data"  # the dataset's facts an export needs (dsearch.data.data_facts)
ARTIFACTS_ATTR = "dsearch_artifacts"  # where kept weights live when the storage is not a local file
PLAN_ATTR = "dsearch_finals"  # the finals' plan
VERDICT_ATTR = "dsearch_verdict"  # the finals' verdict
RUNG_PREFIX = "dsearch_rung"  # + "<rung>.<target>.s<seed>": one training of the finals
FINALS_CLAIM_PREFIX = "dsearch_claim."  # + a rung record's key: which worker trains it
AUDIT_ATTR = "dsearch_audit"
AUDIT_CLAIM_PREFIX = "dsearch_audit_claim."  # + trial number: which worker is training it for an audit
BASELINE_PREFIX = "baseline."  # + label: one hand-designed reference net and its trainings
TRAINED_PREFIX = "trained."  # + trial number: the facts of its full training and its kept weights
STATUSES = ("complete", "rejected", "invalid", "duplicate", "pruned", "failed", "running", "waiting")
CONSTRAINT_KEYS = ("mflops_over_budget", "mparams_over_budget", "invalid")
LATENCY_CONSTRAINT = "ms_over_budget"  # a fourth, on every trial of a study with a latency budget (and only there)
# Latency facts of a trial: `latency_ms` is its latency on the study's latency target as the search saw it
# (predicted from the target's table, dsearch.latency), `latency_target` the target; with --measure-latency,
# `latency_measured_ms` and `latency_p90_ms` are the whole network measured end to end on it.
LATENCY_MS, LATENCY_TARGET = "latency_ms", "latency_target"
LATENCY_MEASURED, LATENCY_P90 = "latency_measured_ms", "latency_p90_ms"
DASHBOARD_CONSTRAINTS = "constraints"  # optuna-dashboard reads a trial's constraints as this one list


def arch_attrs(spec: ArchSpec) -> dict[str, Any]:
    """The user attrs that describe an architecture: the ArchSpec as structured JSON and a one-line summary."""
    return {ARCH: spec.to_dict(), ARCH_SUMMARY: spec.summary()}


def arch_from_attr(value: Any) -> ArchSpec:
    """The ArchSpec of an `arch` attr, in either form (a JSON object, or a JSON string in older studies)."""
    if isinstance(value, str):
        return ArchSpec.from_json(value)
    if isinstance(value, Mapping):
        return ArchSpec.from_dict(value)
    raise DsearchError(f"the trial's architecture record has an unknown form ({type(value).__name__})")


def trial_arch(attrs: Mapping[str, Any]) -> ArchSpec | None:
    """The ArchSpec kept in a trial's user attrs; None when the trial sampled none."""
    return arch_from_attr(attrs[ARCH]) if ARCH in attrs else None


def arch_key(spec: ArchSpec) -> str:
    """A short fingerprint of an architecture: equal ArchSpecs, equal keys."""
    return hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def trial_arch_key(trial: optuna.trial.FrozenTrial) -> str | None:
    """The trial's architecture fingerprint (computed from its stored ArchSpec for studies made before keys)."""
    key = trial.user_attrs.get(ARCH_KEY)
    if key is None:
        try:
            spec = trial_arch(trial.user_attrs)
        except DsearchError:
            return None
        key = arch_key(spec) if spec is not None else None
    return key


def set_constraints(trial: optuna.Trial, values: Mapping[str, float]) -> None:
    """Every CONSTRAINT_KEYS value (<= 0: satisfied), and LATENCY_CONSTRAINT where given, in the form Optuna 5 reads
    and the one optuna-dashboard reads."""
    keys = [*CONSTRAINT_KEYS, *([LATENCY_CONSTRAINT] if LATENCY_CONSTRAINT in values else [])]
    ordered = [float(values[key]) for key in keys]
    for key, value in zip(keys, ordered, strict=True):
        trial.set_constraint(key, value)
    trial.storage.set_trial_system_attr(trial._trial_id, DASHBOARD_CONSTRAINTS, ordered)


def named_constraints(trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    """The trial's constraint values by CONSTRAINT_KEYS name (Optuna also lists the dashboard list as '0', '1', ...)."""
    values = trial.constraints
    return {key: values[key] for key in (*CONSTRAINT_KEYS, LATENCY_CONSTRAINT) if key in values}


def metric_names(objective: str, resolution: int, latency_target: str | None = None) -> list[str]:
    """The objectives' names: validation accuracy, and for 'multi' MFLOPs at the deployment resolution, or the
    latency in ms on `latency_target` when the study has one."""
    names = ["val_acc"]
    if objective == "multi":
        names.append(f"latency_ms@{latency_target}" if latency_target else f"mflops@{resolution}x{resolution}")
    return names


def name_metrics(study: optuna.Study, objective: str, resolution: int, latency_target: str | None = None) -> None:
    """Name the study's objectives once (kept as they are when already named)."""
    if study.metric_names is None:
        with warnings.catch_warnings():  # set_metric_names is "experimental" in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names(objective, resolution, latency_target))


def made_by() -> str:
    """How and when a stored result was made: dsearch's version and the UTC time."""
    from datetime import UTC, datetime

    return f"dsearch {__version__}, {datetime.now(UTC).isoformat(timespec='seconds')}"


class UnreadableJSON(str):
    """A study user attr whose stored text is not JSON (an edited database), kept as that text so that its reader
    says which record is damaged while every other record still reads (see dsearch.search.storage.open_study)."""


def kind_of(value: Any) -> str:
    """What a stored value is, for an error: "text that is not valid JSON", "a list", "a str", ..."""
    return "text that is not valid JSON" if isinstance(value, UnreadableJSON) else f"a {type(value).__name__}"


SETTINGS = (IDENTITY_ATTR, CONFIG_ATTR)
SETTINGS_FIX = ("restore the study's storage from a copy, or search again under a new --study-name (a study made by "
                "`dsearch run` holds them)")


def damaged(study: optuna.Study, key: str, what: str, fix: str) -> DsearchError:
    """The one-line error for a study record that cannot be read: the study, the record, what is wrong, the fix."""
    return DsearchError(f"study '{study.study_name}': its stored {key} record {what}; {fix}")


def stored_settings(study: optuna.Study, key: str) -> dict[str, Any]:
    """The study's stored settings `key` (IDENTITY_ATTR or CONFIG_ATTR) as a dict; {} when it holds none.

    The one read-back of them: a record that is not a JSON object, or whose proxy settings are not one, raises a
    one-line DsearchError (see `damaged`).
    """
    if key not in SETTINGS:
        raise ValueError(f"{key!r} is not a stored settings record; valid: {', '.join(SETTINGS)}")
    value = study.user_attrs.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise damaged(study, key, f"is not a JSON object (it holds {kind_of(value)})", SETTINGS_FIX)
    if key == CONFIG_ATTR and not isinstance(value.get("proxy") or {}, Mapping):
        raise damaged(study, key, "has proxy settings that are not a JSON object", SETTINGS_FIX)
    return dict(value)


def study_budget(study: optuna.Study) -> Budget:
    """The budget the study was created with, counted at its deployment resolution (no limit: None)."""
    identity = stored_settings(study, IDENTITY_ATTR)
    try:
        return Budget.from_stored(identity, f"study '{study.study_name}'")
    except DsearchError as err:
        raise DsearchError(f"{err} (record {IDENTITY_ATTR}); {SETTINGS_FIX}") from None



def _numbers(value: Any) -> bool:
    """True for a non-empty list of finite numbers (a bool is not one)."""
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and v == v and abs(v) != float("inf") for v in value)


def study_data_facts(study: optuna.Study) -> dict[str, Any]:
    """The dataset's facts the study's run stored (DATA_ATTR: mean, std, classes, image size); {} without them.

    An export copies them into model.py, so a damaged record raises a one-line DsearchError instead."""
    facts = study.user_attrs.get(DATA_ATTR)
    if facts is None:
        return {}
    fix = "delete the record or restore the study's storage from a copy (`dsearch run` on the study writes it again)"
    if not isinstance(facts, Mapping):
        raise damaged(study, DATA_ATTR, f"is {kind_of(facts)}, not a JSON object", fix)
    classes = facts.get("classes", [])
    if not (_numbers(facts.get("mean", [0])) and _numbers(facts.get("std", [1])) and isinstance(classes, list)
            and all(isinstance(c, str) for c in classes)):
        raise damaged(study, DATA_ATTR, "has a mean, std or class list that is not one", fix)
    return dict(facts)


TRAINED_FIX = "train it again with `dsearch train {study} --trial {number}` (it replaces the record)"


def full_training(study: optuna.Study, number: int) -> dict[str, Any] | None:
    """The facts of trial `number`'s full training kept on the study (TRAINED_PREFIX), None without one.

    A damaged record raises a one-line DsearchError that says to train the trial again (TRAINED_FIX)."""
    key = f"{TRAINED_PREFIX}{number}"
    facts = study.user_attrs.get(key)
    if facts is None:
        return None
    fix = TRAINED_FIX.format(study=study.study_name, number=number)
    if not isinstance(facts, Mapping):
        raise damaged(study, key, f"is {kind_of(facts)}, not a JSON object", fix)
    for name in ("test_acc", "val_acc", "epochs", "train_resolution"):
        value = facts.get(name)
        if value is not None and not _numbers([value]):
            raise damaged(study, key, f"has a {name} that is not a number ({value!r})", fix)
    return dict(facts)
