"""Trained weights kept with a study, as Optuna artifacts in a folder next to the study's storage.

The folder is found from the storage's location (dsearch.paths.artifact_folder), never from a path
recorded on the study, so a copied study folder is self-contained.

A search keeps every trained proxy's state_dict (trial user attr `weights_artifact`);
`dsearch train STUDY --trial N` adds the fully trained weights (study user attr `trained.N`).
`dsearch export` takes the fully trained weights when there are some, else the proxy's.
"""
from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact

from ..errors import DsearchError
from ..paths import artifact_folder, local_storage_file

ARTIFACTS_ATTR = "dsearch_artifacts"


def recorded_artifact_dir(study: optuna.Study, storage_url: str) -> Path:
    """Where the study's artifacts are (or will be): found from a local storage's location, so a copied study
    folder reads and writes its own copy; for a database server, the folder recorded on the study."""
    return artifact_folder(study.study_name, storage_url, study.user_attrs.get(ARTIFACTS_ATTR))


def artifact_dir(study: optuna.Study, storage_url: str) -> Path:
    """The study's artifact folder, ready to write; a server's is recorded on the study, so every worker finds it."""
    path = recorded_artifact_dir(study, storage_url)
    if local_storage_file(storage_url) is None and ARTIFACTS_ATTR not in study.user_attrs:
        study.set_user_attr(ARTIFACTS_ATTR, str(path))
    path.mkdir(parents=True, exist_ok=True)
    return path


def upload_weights(folder: Path, state: dict[str, torch.Tensor], target: Any, file_name: str) -> str:
    # Optuna keeps the uploaded file's name with the artifact: optuna-dashboard offers it for download under it.
    tmp = Path(tempfile.mkdtemp(prefix=".upload-", dir=folder))
    try:
        path = tmp / file_name
        torch.save(state, path)
        return upload_artifact(artifact_store=FileSystemArtifactStore(str(folder)), file_path=str(path),
                               study_or_trial=target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_trial_weights(trial: optuna.Trial, state: dict[str, torch.Tensor], folder: Path) -> str:
    """Keep a trained proxy's weights with its trial."""
    artifact = upload_weights(folder, state, trial, f"trial-{trial.number}-proxy.pt")
    trial.set_user_attr("weights_artifact", artifact)
    return artifact


def save_full_weights(study: optuna.Study, number: int, state: dict[str, torch.Tensor], folder: Path,
                      facts: dict[str, Any]) -> str:
    """Keep fully trained weights for trial `number` (the newest replaces older ones for export)."""
    artifact = upload_weights(folder, state, study, f"trial-{number}-full.pt")
    keep_full_weights(study, number, artifact, facts)
    return artifact


def keep_full_weights(study: optuna.Study, number: int, artifact: str, facts: dict[str, Any]) -> None:
    """Make an uploaded artifact trial `number`'s fully trained weights, the ones export takes."""
    study.set_user_attr(f"trained.{number}", {**facts, "weights_artifact": artifact, "saved_at": time.time()})


def _download(folder: Path, artifact: str) -> dict[str, torch.Tensor]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.pt"
        try:
            download_artifact(artifact_store=FileSystemArtifactStore(str(folder)), file_path=str(path),
                              artifact_id=artifact)
        except Exception as err:  # noqa: BLE001 - a missing or unreadable artifact becomes one line
            raise DsearchError(f"weights {artifact} are missing from {folder}: "
                               f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        return load_state(path, f"weights {artifact} in {folder}", "retrain them with `dsearch train`")


def load_state(path: Path, what: str, fix: str) -> dict[str, torch.Tensor]:
    """A state_dict of tensors from `path`; anything else (damaged, or a pickle that would run code) is one line."""
    try:  # tensors only: a pickle payload is refused, never executed
        with warnings.catch_warnings():  # torch warns about a foreign pickle protocol before refusing it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling problem becomes one line
        raise DsearchError(f"{what} are damaged or not a state_dict of tensors ({type(err).__name__}; dsearch "
                           f"loads tensors only and never runs code from a weights file); {fix}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DsearchError(f"{what} are not a state_dict of tensors; {fix}")
    return state


def trial_weights(study: optuna.Study, number: int, storage_url: str) -> tuple[dict[str, torch.Tensor], str] | None:
    """The best weights kept for trial `number` and where they come from; None when none were kept."""
    full = study.user_attrs.get(f"trained.{number}")
    trial = study.get_trials(deepcopy=False)[number]
    proxy = trial.user_attrs.get("weights_artifact")
    artifact = full["weights_artifact"] if full is not None else proxy
    if artifact is None:
        return None
    store = recorded_artifact_dir(study, storage_url)  # reading: nothing to create or record
    if full is not None:
        what = (f"fully trained weights ({full.get('epochs')} epochs on {full.get('dataset')}, "
                f"test accuracy {full.get('test_acc', float('nan')):.4f})")
    else:
        what = f"proxy weights from the search ({trial.user_attrs.get('epochs')} epochs, not fully trained)"
    return _download(store, artifact), what
