"""One-call models in the torchvision/timm style.

    create_model("mobilenet_v2", num_classes=10, in_channels=1, width=0.5)  # a preset, untrained
    create_model("exports/x/arch.json")                                     # an ArchSpec JSON file
    load_trial("default", trial="best")                                     # a study's trial with its weights
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from .archspec import ArchSpec
from .builder import build_model
from .errors import DsearchError
from .presets import PRESETS, preset, with_conv

if TYPE_CHECKING:
    import optuna


def _positive_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DsearchError(f"{name} must be a positive integer, got {value!r}")
    return value


def resolve_arch(arch: str | Path | ArchSpec, *, num_classes: int | None = None, in_channels: int | None = None,
                 width: float | None = None, conv: str | None = None) -> ArchSpec:
    """The ArchSpec named by a preset name, the path of an ArchSpec JSON file, or an ArchSpec, with overrides."""
    num_classes = _positive_int(num_classes, "num_classes")
    in_channels = _positive_int(in_channels, "in_channels")
    if width is not None and (isinstance(width, bool) or not isinstance(width, (int, float))
                              or not math.isfinite(width) or width <= 0):
        raise DsearchError(f"width must be a positive number, got {width!r}")
    overrides = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels)) if v is not None}
    if isinstance(arch, ArchSpec) or (isinstance(arch, (str, Path)) and str(arch) not in PRESETS):
        if width is not None:
            raise DsearchError("width applies to presets only; edit the widths of the ArchSpec (JSON) instead")
    if isinstance(arch, ArchSpec):
        spec = arch
    elif isinstance(arch, str) and arch in PRESETS:
        spec = preset(arch, **overrides, **({"width": width} if width is not None else {}))
        overrides = {}
    elif isinstance(arch, (str, Path)):
        path = Path(arch)
        if not path.is_file():
            raise DsearchError(f"{str(arch)!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor an ArchSpec "
                               "JSON file")
        try:
            spec = ArchSpec.from_json(path.read_text())
        except DsearchError as err:
            raise DsearchError(f"{path}: {err}") from None
    else:
        raise DsearchError(f"expected a preset name, an ArchSpec JSON path or an ArchSpec, got {type(arch).__name__}")
    if overrides:
        spec = spec.replace(**overrides)
    return with_conv(spec, conv) if conv else spec


def create_model(arch: str | Path | ArchSpec, *, num_classes: int | None = None, in_channels: int | None = None,
                 width: float | None = None, conv: str | None = None) -> nn.Module:
    """The untrained network for a preset name, an ArchSpec JSON file or an ArchSpec (see `resolve_arch`)."""
    return build_model(resolve_arch(arch, num_classes=num_classes, in_channels=in_channels, width=width, conv=conv))


def trial_number(study: optuna.Study, trial: int | str) -> int:
    """'best' (the most accurate trained trial within the study's budget) or a trial number, checked."""
    from .pareto import best_within_budget, study_budget, trials_frame

    if trial == "best":
        return int(best_within_budget(trials_frame(study), study_budget(study))["trial"])
    if isinstance(trial, str) and trial.isdigit():
        trial = int(trial)
    if isinstance(trial, bool) or not isinstance(trial, int):
        raise DsearchError(f"trial must be 'best' or a trial number, got {trial!r}")
    count = len(study.get_trials(deepcopy=False))
    if not 0 <= trial < count:
        raise DsearchError(f"study '{study.study_name}' has no trial {trial} (trials 0..{count - 1})")
    return trial


def load_trial(study: str | optuna.Study, trial: int | str = "best", storage: str | None = None) -> nn.Module:
    """A study's trial as a module in eval mode with its kept weights (fully trained ones if any, else the proxy's).

    `study` is a study name (storage: `storage`, default sqlite:///studies/<name>/study.db) or an optuna.Study.
    """
    import optuna

    from .pareto import arch_of
    from .study import open_study, storage_url_of
    from .weights import trial_weights

    if storage is not None and not isinstance(storage, str):
        raise DsearchError(f"storage must be a storage URL or journal file path, got {type(storage).__name__}")
    if isinstance(study, str):
        opened, url = open_study(study, storage)
    elif isinstance(study, optuna.Study):
        opened, url = study, storage or storage_url_of(study)
    else:
        raise DsearchError(f"study must be a study name or an optuna.Study, got {type(study).__name__}")
    number = trial_number(opened, trial)
    spec = arch_of(opened, number)
    found = trial_weights(opened, number, url)
    if found is None:
        raise DsearchError(f"trial {number} of study '{opened.study_name}' has no kept weights; `dsearch train "
                           f"{opened.study_name} --trial {number}` trains it, or create_model() builds it untrained")
    model = build_model(spec)
    model.load_state_dict(found[0])
    return model.eval()
