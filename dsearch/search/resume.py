"""What a study is bound to, so that a resume never mixes trials trained differently.

A study records the settings that make its trials comparable (its identity): the space's
content (a SHA-256 of the parsed space, so an edited YAML file at the same path is noticed),
the dataset, both resolutions, the budgets, the objective and every proxy-training setting
except the seed (each worker has its own). A resume or a new worker with any other value is
refused with one line naming the differences, unless the user allows it explicitly: then the
change is recorded on the study (user attribute `dsearch_changes`) and the new settings bind.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from typing import Any

import optuna

from ..errors import DsearchError
from ..model.heads import DEFAULT_CLASSIFIER
from .record import CHANGES_ATTR, CONFIG_ATTR, IDENTITY_ATTR, stored_settings
from .spaces import Space

IDENTITY_VERSION = 2
# Written before identities had a version: these keys kept their meaning; "space" (the argument) and
# "resolution" (None for the space's own) did not, so an older study is checked on these and then upgraded.
V1_KEYS = ("dataset", "budget_mflops", "budget_mparams", "objective")
PER_WORKER = ("seed",)  # proxy settings each worker may choose for itself


def space_digest(space: Space) -> str:
    """SHA-256 of the parsed space (not of its file, and not of where the file is)."""
    content = {k: v for k, v in asdict(space).items() if k != "path"}
    if content["head_classifier"] == (DEFAULT_CLASSIFIER,):  # spaces from before the classifier keep their digest
        del content["head_classifier"]
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def plain(value: Any) -> Any:
    """`value` as it reads back from a study's user attributes (JSON)."""
    return json.loads(json.dumps(value))


def identity_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Key -> (old, new) for every bound setting that differs."""
    keys = V1_KEYS if old.get("version") is None else sorted(set(old) | set(new))
    new = plain(new)
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    def show(key: str, value: Any) -> str:
        return f"{value[:12]}..." if key == "space_sha256" and isinstance(value, str) else repr(value)

    labels = {"space_sha256": "space content sha256"}  # the file was edited (or another file with its name)
    return ", ".join(f"{labels.get(k, k)}={show(k, old)} (now {show(k, new)})" for k, (old, new) in changes.items())


def check_resume(study_name: str, existing: optuna.Study | None, identity: dict[str, Any],
                 allow_changes: bool) -> dict[str, tuple[Any, Any]]:
    """The differences between an existing study's settings and these; refused unless `allow_changes`."""
    old = stored_settings(existing, IDENTITY_ATTR) if existing is not None else None
    if not old:
        return {}
    changes = identity_changes(old, identity)
    if changes and not allow_changes:
        raise DsearchError(f"study '{study_name}' was created with {describe_changes(changes)}; rerun with the same "
                           "settings to resume it, pick a new --study-name, or pass --allow-changed-settings to "
                           "record the change on the study and go on")
    return changes


def bind(study: optuna.Study, identity: dict[str, Any], config: dict[str, Any], created: bool,
         changes: dict[str, tuple[Any, Any]]) -> None:
    """Record the settings on a new study; on an allowed change, log it and bind the new settings."""
    old = stored_settings(study, IDENTITY_ATTR)
    if created or not old:
        study.set_user_attr(IDENTITY_ATTR, plain(identity))
        study.set_user_attr(CONFIG_ATTR, plain(config))
        return
    if changes:
        log = list(study.user_attrs.get(CHANGES_ATTR, []))
        log.append({"at": time.time(), "from_trial": len(study.get_trials(deepcopy=False)),
                    "changes": {k: [o, n] for k, (o, n) in changes.items()}})
        study.set_user_attr(CHANGES_ATTR, plain(log))
        study.set_user_attr(CONFIG_ATTR, plain(config))
    if changes or old.get("version") != identity.get("version"):
        study.set_user_attr(IDENTITY_ATTR, plain(identity))
