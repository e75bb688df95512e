"""Trained weights kept with a study, as Optuna artifacts in a folder next to the study's storage.

The folder is found from the storage's location (dsearch.paths.artifact_folder), never from a path
recorded on the study, so a copied study folder is self-contained.

A search keeps every trained proxy's state_dict (trial user attr `weights_artifact`);
`dsearch train STUDY --trial N` adds the fully trained weights (study user attr `trained.N`).
`dsearch export` takes the fully trained weights when there are some, else the proxy's.

Each weights file is written whole or not at all (serialized in memory, written to a temporary file in the
artifact folder, fsynced, renamed into place), and registered on its trial or study only once it is there: a
full disk leaves neither a partial file nor an artifact that points at one.
"""
from __future__ import annotations

import io
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact

from ..errors import DsearchError, write_problem
from ..paths import artifact_folder, local_storage_file, write_bytes_atomic
from .record import ARTIFACTS_ATTR, TRAINED_FIX, TRAINED_PREFIX, damaged, full_training

NOT_KEPT_ATTR = "weights_not_kept"  # trial user attr: why its trained weights could not be written


class WeightsNotKept(DsearchError):
    """Trained weights that the disk refused (full, over quota, read-only); nothing of them was left or registered."""


class _WholeFileStore(FileSystemArtifactStore):
    """Optuna's file-system artifact store, writing each artifact whole or not at all (Optuna's own writes it in
    place, so a full disk leaves a truncated file under the artifact's name)."""

    def __init__(self, base_path: Path) -> None:
        super().__init__(base_path)
        self.folder = base_path
        self.written: list[str] = []

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        write_bytes_atomic(self.folder / artifact_id, content_body.read())
        self.written.append(artifact_id)


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
    """Keep `state` as an artifact of `target` (a trial or a study) in `folder`; its id.

    Raises WeightsNotKept when the disk refuses the weights; an error of the storage while registering them is
    raised as it is, and the written file removed (an unregistered file would only take space).
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    store = _WholeFileStore(folder)
    try:
        # Optuna reads an upload from a file and offers it for download under that file's name.
        tmp = Path(tempfile.mkdtemp(prefix=".upload-", dir=folder))
        try:
            path = tmp / file_name
            write_bytes_atomic(path, buffer.getvalue())
            return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception as err:
        for artifact in store.written:  # written, but the storage could not register it
            (folder / artifact).unlink(missing_ok=True)
        problem = write_problem(err) if not store.written else None
        if problem is None:
            raise
        raise WeightsNotKept(f"the weights {file_name} could not be written to {folder}: {problem}") from None


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
    study.set_user_attr(f"{TRAINED_PREFIX}{number}", {**facts, "weights_artifact": artifact, "saved_at": time.time()})


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
    full = full_training(study, number)
    trial = study.get_trials(deepcopy=False)[number]
    proxy = trial.user_attrs.get("weights_artifact")
    artifact = full.get("weights_artifact") if full is not None else proxy
    if full is not None and not isinstance(artifact, str):
        raise damaged(study, f"{TRAINED_PREFIX}{number}", "names no weights artifact",
                      TRAINED_FIX.format(study=study.study_name, number=number))
    if artifact is None:
        return None
    store = recorded_artifact_dir(study, storage_url)  # reading: nothing to create or record
    if full is not None:
        what = (f"fully trained weights ({full.get('epochs')} epochs on {full.get('dataset')}, "
                f"test accuracy {full.get('test_acc', float('nan')):.4f})")
    else:
        what = f"proxy weights from the search ({trial.user_attrs.get('epochs')} epochs, not fully trained)"
    return _download(store, artifact), what
