"""The conv-type registry: each kind's factory, knobs, analytic params and MACs."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ...checks import is_positive_int
from ...errors import DsearchError, clip, shown


class ConvConfigError(DsearchError, ValueError):
    """A conv kind or knob value that does not fit the definition."""


KnobCheck = Callable[[Any], str | None]


@dataclass(frozen=True)
class Knob:
    """One tunable setting of a conv kind; `check` returns an error text or None."""

    name: str
    default: Any
    check: KnobCheck
    doc: str
    short: str = ""  # abbreviation in ArchSpec.summary (empty: not shown there)
    # Left out of a ConvSpec while at its default, so that specs written before the knob existed keep their JSON
    # and fingerprint (e.g. `dilation`, added to existing kinds later).
    implicit: bool = False


@dataclass(frozen=True)
class Regularizer:
    """A conv kind's term in the training loss: `loss(modules, weight)` over the model's `module` instances.

    `weight` names the training setting that weighs it (a field of dsearch.training.proxy.ProxyConfig, e.g.
    `bsconv_alpha`). The trainer finds the modules once per training, for every registered kind that has one.
    """

    module: type[nn.Module]
    loss: Callable[[list[Any], float], Tensor]
    weight: str


@dataclass(frozen=True)
class ConvType:
    """Everything dsearch knows about one conv kind.

    `build(M, N, k, stride, **knobs)` returns the linear operator; `params(M, N, k, knobs)`
    and `macs(M, N, k, stride, (H, W), knobs)` are the analytic costs from docs/concepts.md (conv
    weights only: an optional inner batch-norm is not part of the formula);
    `check(M, N, k, stride, knobs)` returns an error text for channel-dependent rules.
    `inner_bn(M, N, knobs)` gives the channels of the optional batch-norm between the two parts
    (0: none) and whether it sits after the strided part (so at the output size) or before it.
    `standalone` names the torch-only builder in dsearch.model.layers that `dsearch export` writes
    into model.py: same arguments, same parameters and state_dict keys as `build` (empty: the
    kind cannot be exported). `label` is the name figures and tables show (the papers' spelling);
    `baseline`: MobileNetV2 with this kind swapped in is one of `dsearch baselines`' reference nets.
    `regularizer`: the kind's term in the training loss, if it has one.
    """

    name: str
    build: Callable[..., nn.Module]
    params: Callable[[int, int, int, Mapping[str, Any]], int]
    macs: Callable[[int, int, int, int, tuple[int, int], Mapping[str, Any]], int]
    knobs: tuple[Knob, ...] = ()
    check: Callable[[int, int, int, int, Mapping[str, Any]], str | None] | None = None
    doc: str = ""
    standalone: str = ""
    inner_bn: Callable[[int, int, Mapping[str, Any]], tuple[int, bool]] = lambda m, n, kn: (0, False)
    label: str = ""
    baseline: bool = True
    regularizer: Regularizer | None = None
    knob_names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "knob_names", frozenset(k.name for k in self.knobs))

    @property
    def display(self) -> str:
        """The kind as figures and tables write it."""
        return self.label or self.name


CONV_TYPES: dict[str, ConvType] = {}


def register_conv(conv_type: ConvType) -> ConvType:
    """Add a conv kind; its name becomes valid everywhere (specs, spaces, CLI)."""
    if conv_type.name in CONV_TYPES:
        raise ValueError(f"conv kind {conv_type.name!r} is already registered")
    CONV_TYPES[conv_type.name] = conv_type
    return conv_type


def conv_type(kind: str) -> ConvType:
    try:
        return CONV_TYPES[kind]
    except KeyError:
        valid = ", ".join(sorted(CONV_TYPES))
        raise ConvConfigError(f"unknown conv kind {shown(kind)}; valid kinds: {valid}") from None


def resolve_knobs(kind: str, knobs: Mapping[str, Any]) -> dict[str, Any]:
    """Fill defaults and check each knob on its own (no channel counts needed)."""
    ct = conv_type(kind)
    unknown = sorted(str(k) for k in knobs if k not in ct.knob_names)
    if unknown:
        valid = ", ".join(sorted(ct.knob_names)) or "none"
        raise ConvConfigError(f"{kind}: unknown knob(s) {clip(', '.join(unknown))}; valid knobs: {valid}")
    resolved = {}
    for knob in ct.knobs:
        value = knobs.get(knob.name, knob.default)
        problem = knob.check(value)
        if problem:
            raise ConvConfigError(f"{kind}.{knob.name}={shown(value)}: {problem}")
        resolved[knob.name] = value
    return resolved


def check_conv(
    kind: str, in_channels: int, out_channels: int, kernel_size: int, stride: int, knobs: Mapping[str, Any]
) -> dict[str, Any]:
    """Validate a full conv configuration; returns the resolved knobs or raises ConvConfigError."""
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not is_positive_int(value):
            raise ConvConfigError(f"{kind}: {name} must be a positive integer, got {value!r}")
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ConvConfigError(f"{kind}: kernel_size must be an odd positive integer (1, 3, 5, 7), got {kernel_size!r}")
    if stride not in (1, 2):
        raise ConvConfigError(f"{kind}: stride must be 1 or 2, got {stride!r}")
    resolved = resolve_knobs(kind, knobs)
    ct = CONV_TYPES[kind]
    if ct.check is not None:
        problem = ct.check(in_channels, out_channels, kernel_size, stride, resolved)
        if problem:
            raise ConvConfigError(f"{kind}: {problem}")
    return resolved


def make_conv(
    kind: str, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, **knobs: Any
) -> nn.Module:
    """Build the linear operator of conv kind `kind` ("same" padding k//2, no bias)."""
    resolved = check_conv(kind, in_channels, out_channels, kernel_size, stride, knobs)
    return CONV_TYPES[kind].build(in_channels, out_channels, kernel_size, stride, **resolved)


def out_size(size: int, kernel_size: int, stride: int) -> int:
    """Spatial size after a conv with "same" padding k//2."""
    return (size + 2 * (kernel_size // 2) - kernel_size) // stride + 1


def conv_params(kind: str, in_channels: int, out_channels: int, kernel_size: int, **knobs: Any) -> int:
    """Analytic parameter count of the conv weights (docs/concepts.md's table)."""
    resolved = resolve_knobs(kind, knobs)
    return CONV_TYPES[kind].params(in_channels, out_channels, kernel_size, resolved)


def conv_macs(
    kind: str, in_channels: int, out_channels: int, kernel_size: int, stride: int,
    hw: tuple[int, int], **knobs: Any,
) -> int:
    """Analytic MACs of one forward pass at batch 1 on an H x W input (docs/concepts.md's table)."""
    resolved = resolve_knobs(kind, knobs)
    return CONV_TYPES[kind].macs(in_channels, out_channels, kernel_size, stride, hw, resolved)


def stored_knobs(kind: str, resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The knobs a ConvSpec keeps: all resolved ones except implicit knobs at their default."""
    implicit = {k.name: k.default for k in conv_type(kind).knobs if k.implicit}
    return {k: v for k, v in resolved.items()
            if not (k in implicit and type(v) is type(implicit[k]) and v == implicit[k])}
