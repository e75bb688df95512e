"""A study's trial as a ready module: `load_trial`, the library's way to what `dsearch export` writes out."""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from ..errors import DsearchError
from ..model.builder import build_model

if TYPE_CHECKING:
    import optuna


def load_trial(study: str | optuna.Study, trial: int | str = "best", storage: str | None = None) -> nn.Module:
    """A study's trial as a module in eval mode with its kept weights (fully trained ones if any, else the proxy's).

    `study` is a study name (storage: `storage`, default sqlite:///studies/<name>/study.db) or an optuna.Study;
    `trial` is 'best' or a trial number: 'best' is the pick of the study's verdict when its finals have run (with
    its fully trained weights), else the trained trial within the budget with the best proxy validation accuracy.
    """
    # Here, not at the top: `import dsearch` stays free of Optuna and pandas until a study is read.
    import optuna

    from ..analysis.pareto import arch_of
    from ..analysis.pick import pick_trial
    from ..search.storage import open_study, storage_url_of
    from ..search.weights import trial_weights

    if storage is not None and not isinstance(storage, str):
        raise DsearchError(f"storage must be a storage URL or journal file path, got {type(storage).__name__}")
    if isinstance(study, str):
        opened, url = open_study(study, storage, read_only=True)  # reading only: works on read-only media
    elif isinstance(study, optuna.Study):
        opened, url = study, storage or storage_url_of(study)
    else:
        raise DsearchError(f"study must be a study name or an optuna.Study, got {type(study).__name__}")
    number = pick_trial(opened, trial)
    spec = arch_of(opened, number)
    found = trial_weights(opened, number, url)
    if found is None:
        raise DsearchError(f"trial {number} of study '{opened.study_name}' has no kept weights; `dsearch train "
                           f"{opened.study_name} --trial {number}` trains it, or create_model() builds it untrained")
    model = build_model(spec)
    model.load_state_dict(found[0])
    return model.eval()
