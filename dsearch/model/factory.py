"""One-call models in the torchvision/timm style.

    create_model("mobilenet_v2", num_classes=10, in_channels=1, width=0.5)  # a preset, untrained
    create_model("exports/x/arch.json")                                     # an ArchSpec JSON file

A study's trial with its weights is `dsearch.load_trial` (dsearch.export.load): it reads studies.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import nn

from ..checks import is_positive_int
from ..errors import DsearchError
from ..paths import read_user_text
from .archspec import ArchSpec
from .builder import build_model
from .presets import PRESETS, preset, with_conv


def _positive_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if not is_positive_int(value):
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
        text = read_user_text(path, "an ArchSpec JSON file")
        try:
            spec = ArchSpec.from_json(text)
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
