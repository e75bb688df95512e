"""ArchSpec: one frozen, JSON-serialisable description of an architecture.

Everything downstream (builder, cost, study, export) takes an ArchSpec; a trial stores it as
JSON so that any trial can be rebuilt exactly. Schema (version 1):

    ArchSpec(in_channels, num_classes, resolution, stem, stages, head, name)
      stem:   StemSpec(out_channels, kernel, stride, activation)        a regular conv + BN + act
      stages: StageSpec(block, out_channels, repeats, stride, kernel, expansion, conv,
                        activation, residual)                            `repeats` blocks, the first strided
      conv:   ConvSpec(kind, knobs)                                      the block's spatial conv unit
      head:   HeadSpec(channels, activation, dropout, classifier)        [1x1 conv] -> avg pool -> classifier
                                                                         (dense linear, or ChannelNets'
                                                                         channel-wise one: dsearch.model.heads)

`resolution` is the deployment input size, where budgets are counted (docs/concepts.md, "The two
resolutions"); training may run at another size.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..checks import MAX_CHANNELS, MAX_CLASSES, MAX_EXPANSION, MAX_REPEATS, MAX_RESOLUTION, MAX_STAGES, is_int
from ..errors import DsearchError, clip, shown
from .blocks import BLOCKS, conv_units
from .heads import DEFAULT_CLASSIFIER, classifier_problem
from .ops import ConvConfigError, check_conv, resolve_knobs
from .ops.activations import check_activation
from .ops.registry import conv_type, out_size, stored_knobs

SCHEMA = "dsearch.archspec/1"


class ArchSpecError(DsearchError, ValueError):
    """An ArchSpec that breaks a rule; the message names the field."""


KnobValue = bool | int | float | str | None


@dataclass(frozen=True)
class ConvSpec:
    """A conv kind with all its knobs (defaults filled in, so a spec never changes meaning)."""

    kind: str = "regular"
    knobs: tuple[tuple[str, KnobValue], ...] = ()

    def __post_init__(self) -> None:
        resolved = stored_knobs(self.kind, resolve_knobs(self.kind, dict(self.knobs)))
        object.__setattr__(self, "knobs", tuple(sorted(resolved.items())))

    @classmethod
    def of(cls, kind: str, **knobs: KnobValue) -> ConvSpec:
        return cls(kind, tuple(knobs.items()))

    @property
    def knob_dict(self) -> dict[str, KnobValue]:
        return dict(self.knobs)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.knob_dict}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str = "conv") -> ConvSpec:
        if not isinstance(data, Mapping):
            raise ArchSpecError(f"{path}: must be an object like {{\"kind\": \"dsc\"}}, got {shown(data)}")
        data = dict(data)
        kind = data.pop("kind", None)
        if not isinstance(kind, str):
            raise ArchSpecError(f"{path}.kind: required, a conv kind name")
        try:
            return cls(kind, tuple(data.items()))
        except ConvConfigError as err:
            raise ArchSpecError(f"{path}: {err}") from None


@dataclass(frozen=True)
class StemSpec:
    out_channels: int = 32
    kernel: int = 3
    stride: int = 2
    activation: str = "relu"


@dataclass(frozen=True)
class StageSpec:
    """`repeats` blocks of one type; the first carries `stride` and changes the width."""

    block: str
    out_channels: int
    repeats: int = 1
    stride: int = 1
    kernel: int = 3
    expansion: float = 1.0
    conv: ConvSpec = field(default_factory=ConvSpec)
    activation: str = "relu"
    residual: bool = True


# A field left out of the JSON while at its default, so that specs written before it existed keep their exact JSON
# and fingerprint (arch key), and read back the same.
IMPLICIT = {"implicit": True}


@dataclass(frozen=True)
class HeadSpec:
    channels: int = 0  # 1x1 conv width before pooling; 0 = none
    activation: str = "relu"
    dropout: float = 0.0
    classifier: str = field(default=DEFAULT_CLASSIFIER, metadata=IMPLICIT)  # dsearch.model.heads.CLASSIFIERS


@dataclass(frozen=True)
class ArchSpec:
    in_channels: int
    num_classes: int
    stem: StemSpec
    stages: tuple[StageSpec, ...]
    head: HeadSpec = field(default_factory=HeadSpec)
    resolution: int = 224
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **_to_plain(self)}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchSpec:
        if not isinstance(data, Mapping):
            raise ArchSpecError("ArchSpec JSON must be an object")
        data = dict(data)
        schema = data.pop("schema", SCHEMA)
        if schema != SCHEMA:
            raise ArchSpecError(f"schema: {shown(schema)} is not supported; this dsearch reads {SCHEMA!r}")
        return _from_plain(cls, data, "")

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ArchSpecError(f"not valid JSON: {err}") from None
        except (ValueError, RecursionError) as err:  # an integer of over 4300 digits; nesting Python cannot follow
            what = "nested too deeply" if isinstance(err, RecursionError) else str(err).split(";")[0]
            raise ArchSpecError(f"not valid JSON: {what}") from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> ArchSpec:
        return dataclasses.replace(self, **changes)

    def summary(self) -> str:
        """A compact one-line description, e.g. `s32 | ir16x1/1 dsc k3 e1 | ... | h1280`."""
        parts = [f"s{self.stem.out_channels}"]
        for st in self.stages:
            kind = st.conv.kind
            extra = _knob_summary(st.conv)
            exp = f" e{st.expansion:g}" if st.block == "inverted_residual" else ""
            block = f"{BLOCKS[st.block].short}{st.out_channels}x{st.repeats}/{st.stride}"
            parts.append(f"{block} {kind}{extra} k{st.kernel}{exp}")
        if self.head.channels:
            parts.append(f"h{self.head.channels}")
        if self.head.classifier != DEFAULT_CLASSIFIER:
            parts.append(f"{self.head.classifier} classifier")
        return " | ".join(parts)

    @property
    def features(self) -> int:
        """The channels the classifier reads: the head's 1x1 conv width, else the last stage's."""
        return self.head.channels or self.stages[-1].out_channels


def _knob_summary(conv: ConvSpec) -> str:
    """The kind's knobs that have a summary abbreviation, e.g. `(g2,o0.5)` (implicit ones only away from default)."""
    kn = conv.knob_dict
    pairs = [(k.short, kn[k.name]) for k in conv_type(conv.kind).knobs if k.short and k.name in kn]
    parts = [f"{short}{value:.2g}" if isinstance(value, float) else f"{short}{value}" for short, value in pairs]
    return f"({','.join(parts)})" if parts else ""


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, ConvSpec):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("implicit") and getattr(obj, f.name) == f.default)}
    if isinstance(obj, tuple):
        return [_to_plain(v) for v in obj]
    return obj


def _from_plain(cls: type, data: Any, path: str) -> Any:
    """Build dataclass `cls` from JSON data, checking keys and types; errors name the field."""
    where = path or "ArchSpec"
    if not isinstance(data, Mapping):
        raise ArchSpecError(f"{where}: must be an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ArchSpecError(f"{where}: unknown field(s) {clip(', '.join(unknown))}; valid: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ArchSpecError(f"{sub}: required field is missing")
            continue
        kwargs[name] = _convert(hints[name], data[name], sub)
    try:
        return cls(**kwargs)
    except ConvConfigError as err:
        raise ArchSpecError(f"{where}: {err}") from None


def _convert(hint: Any, value: Any, path: str) -> Any:
    if hint is ConvSpec:
        return ConvSpec.from_dict(value, path)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _from_plain(hint, value, path)
    if typing.get_origin(hint) is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if not isinstance(value, list):
            raise ArchSpecError(f"{path}: must be a list")
        return tuple(_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    name = {int: "an integer", str: "a string", bool: "true or false", float: "a number"}.get(hint, str(hint))
    raise ArchSpecError(f"{path}: must be {name}, got {shown(value)}")


def _require(ok: bool, path: str, rule: str) -> None:
    if not ok:
        raise ArchSpecError(f"{path}: {rule}")


def _validate(spec: ArchSpec) -> None:
    channels = f"must be an integer from 1 to {MAX_CHANNELS}"
    _require(is_int(spec.in_channels, 1, MAX_CHANNELS), "in_channels", channels)
    _require(is_int(spec.num_classes, 2, MAX_CLASSES), "num_classes", f"must be an integer >= 2 and <= {MAX_CLASSES}")
    _require(is_int(spec.resolution, 1, MAX_RESOLUTION), "resolution",
             f"must be an integer from 1 to {MAX_RESOLUTION} (the deployment input size)")
    _require(is_int(spec.stem.out_channels, 1, MAX_CHANNELS), "stem.out_channels", channels)
    _require(spec.stem.kernel in (1, 3, 5, 7), "stem.kernel", "must be 1, 3, 5 or 7")
    _require(spec.stem.stride in (1, 2), "stem.stride", "must be 1 or 2")
    _check_activation(spec.stem.activation, "stem.activation")
    _require(1 <= len(spec.stages) <= MAX_STAGES, "stages", f"needs from 1 to {MAX_STAGES} stages")
    for i, st in enumerate(spec.stages):
        p = f"stages[{i}]"
        _require(st.block in BLOCKS, f"{p}.block",
                 f"unknown block {shown(st.block)}; valid: {', '.join(sorted(BLOCKS))}")
        _require(is_int(st.out_channels, 1, MAX_CHANNELS), f"{p}.out_channels", channels)
        _require(is_int(st.repeats, 1, MAX_REPEATS), f"{p}.repeats", f"must be an integer from 1 to {MAX_REPEATS}")
        _require(st.stride in (1, 2), f"{p}.stride", "must be 1 or 2")
        _require(st.kernel in (1, 3, 5, 7), f"{p}.kernel", "must be 1, 3, 5 or 7")
        _require(isinstance(st.expansion, (int, float)) and 0 < st.expansion <= MAX_EXPANSION, f"{p}.expansion",
                 f"must be > 0 and <= {MAX_EXPANSION}")
        _check_activation(st.activation, f"{p}.activation")
        _require(isinstance(st.residual, bool), f"{p}.residual", "must be true or false")
    _require(is_int(spec.head.channels, 0, MAX_CHANNELS), "head.channels",
             f"must be an integer from 0 to {MAX_CHANNELS} (0: no 1x1 conv before pooling)")
    _check_activation(spec.head.activation, "head.activation")
    _require(isinstance(spec.head.dropout, (int, float)) and 0 <= spec.head.dropout < 1, "head.dropout",
             "must be in [0, 1)")
    problem = classifier_problem(spec.head.classifier, spec.features, spec.num_classes)
    _require(problem is None, "head.classifier", str(problem))
    for path, conv, m, n, k, s in iter_conv_units(spec):
        try:
            check_conv(conv.kind, m, n, k, s, conv.knob_dict)
        except ConvConfigError as err:
            raise ArchSpecError(f"{path}: {err}") from None


def _check_activation(name: Any, path: str) -> None:
    problem = check_activation(name)
    if problem:
        raise ArchSpecError(f"{path}: {problem}")


def stage_blocks(in_channels: int, out_channels: int, repeats: int, stride: int,
                 size: int = 1) -> Iterator[tuple[int, int, int, int]]:
    """(in_channels, stride, input size, output size) of each of a stage's `repeats` blocks.

    The one walk over a stage's blocks: the first takes the stage's input (`in_channels`, `size` x `size`) and
    carries its `stride`, the others take its width (`out_channels`) at stride 1. Every block keeps "same"
    padding with odd kernels, so its output size depends on the stride alone.
    """
    for r in range(repeats):
        s = stride if r == 0 else 1
        out = out_size(size, 1, s)
        yield in_channels, s, size, out
        in_channels, size = out_channels, out


def iter_conv_units(spec: ArchSpec) -> Iterator[tuple[str, ConvSpec, int, int, int, int]]:
    """(path, conv, in_channels, out_channels, kernel, stride) of every searchable conv unit."""
    channels = spec.stem.out_channels
    for i, st in enumerate(spec.stages):
        for r, (m_in, stride, _, _) in enumerate(stage_blocks(channels, st.out_channels, st.repeats, st.stride)):
            for unit, m, n, s in conv_units(st.block, m_in, st.out_channels, st.expansion, stride):
                yield f"stages[{i}].blocks[{r}].{unit}", st.conv, m, n, st.kernel, s
        channels = st.out_channels


def cumulative_strides(spec: ArchSpec) -> tuple[int, ...]:
    """The distinct total strides of the network's feature maps, the input's (1) first, ascending.

    Every layer keeps "same" padding with an odd kernel, so on an axis of H pixels the maps at total
    stride S are ceil(H / S) pixels: 1 pixel exactly when H <= S.
    """
    strides, total = [1], 1
    for stride in (spec.stem.stride, *(st.stride for st in spec.stages)):
        total *= stride
        if total != strides[-1]:
            strides.append(total)
    return tuple(strides)


def fingerprint(spec: ArchSpec) -> str:
    """A short fingerprint of an architecture: equal ArchSpecs, equal fingerprints (a study's `arch_key`)."""
    return hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
