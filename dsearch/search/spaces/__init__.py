"""Search spaces: YAML files (the built-in ones ship beside this module) -> Space -> ArchSpec per Optuna trial.

Every value in a space file is either fixed or a list of choices. `sample(space, trial, ...)`
turns an Optuna trial into an ArchSpec with stable, readable parameter names (stage2.conv,
stage2.kernel, stage2.scc_overlap, ...); a conv knob is a parameter only where its stage uses
that conv kind.
"""
from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from ...checks import MAX_CHANNELS, MAX_EXPANSION, MAX_REPEATS, MAX_RESOLUTION, MAX_STAGES, is_int
from ...cost.count import net_counts, stage_counts
from ...errors import DsearchError, clip, shown
from ...model.archspec import ArchSpec, ConvSpec, HeadSpec, StageSpec, StemSpec, stage_blocks
from ...model.blocks import BLOCKS, conv_bn_cost, conv_units
from ...model.heads import CLASSIFIERS, DEFAULT_CLASSIFIER
from ...model.ops import CONV_TYPES, ConvConfigError, check_conv, resolve_knobs
from ...model.ops.activations import check_activation
from ...model.ops.registry import out_size
from ...paths import read_user_text

SPACES_DIR = Path(__file__).resolve().parent  # shipped inside the package (wheel and editable installs alike)

Choices = tuple[Any, ...]


class SpaceError(DsearchError):
    """A space file that breaks a rule; the message names the file, the key and the rule."""


class Suggester(Protocol):
    def suggest_categorical(self, name: str, choices: list[Any]) -> Any: ...


@dataclass(frozen=True)
class StageSpace:
    block: Choices
    width: Choices
    depth: Choices
    stride: int
    kernel: Choices
    expansion: Choices
    conv: Choices
    activation: str
    residual: bool


@dataclass(frozen=True)
class Space:
    name: str
    description: str
    resolution: int
    stem_width: Choices
    stem_kernel: int
    stem_stride: int
    stem_activation: str
    head_width: Choices
    head_activation: str
    head_dropout: float
    stages: tuple[StageSpace, ...]
    conv_knobs: tuple[tuple[str, tuple[tuple[str, Choices], ...]], ...]
    path: str = ""
    head_classifier: Choices = (DEFAULT_CLASSIFIER,)  # dsearch.model.heads.CLASSIFIERS

    def knob_choices(self, kind: str) -> dict[str, Choices]:
        return dict(dict(self.conv_knobs).get(kind, ()))


def available_spaces() -> dict[str, Path]:
    """Built-in spaces by name (the YAML files shipped in dsearch/search/spaces/)."""
    return {p.stem: p for p in sorted(SPACES_DIR.glob("*.yaml"))}


def load_space(name_or_path: str) -> Space:
    """A built-in space by name, or a YAML file by path; whatever the file holds, a problem is one SpaceError line."""
    builtin = available_spaces()
    path = builtin.get(name_or_path) or Path(name_or_path)
    if not path.is_file():
        raise SpaceError(
            f"space {name_or_path!r} not found: give a YAML file path or one of: {', '.join(builtin) or '(none)'}"
        )
    try:
        text = read_user_text(path, "a space file")
    except DsearchError as err:
        raise SpaceError(str(err)) from None
    return parse_space(load_yaml(text, str(path)), str(path))


# A space file holds a few hundred values (survey.yaml: under 400); far more, counting each alias as the values it
# stands for, is an alias bomb ("billion laughs") that would take gigabytes to build or print.
MAX_YAML_VALUES = 20_000


def load_yaml(text: str, source: str) -> Any:
    """The YAML document in `text`, read safely: a recursive alias, aliases that expand past MAX_YAML_VALUES
    values, nesting too deep to read or a value YAML cannot build (a date like 2024-02-30) is one SpaceError line
    naming `source`, found on the node graph before any value is built."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_node_graph(root, source)
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = clip(str(err).splitlines()[0], 160) if str(err) else "syntax error"
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise SpaceError(f"{source}: invalid YAML{where}: {first}") from None
    except RecursionError:
        raise SpaceError(f"{source}: invalid YAML: nested too deeply to read (a space file nests three or four "
                         "levels)") from None
    except (ValueError, OverflowError) as err:  # PyYAML building a date, or an integer of over 4300 digits
        raise SpaceError(f"{source}: invalid YAML: a value cannot be read ({clip(str(err))})") from None


def _check_node_graph(root: yaml.Node | None, source: str) -> None:
    """Refuse a node graph whose aliases make it recursive or expand it past MAX_YAML_VALUES values.

    Walks the graph as the constructor would build it (an alias counts again each time it is used), without
    recursion, and stops at the first value past the limit: a bomb is found in a few milliseconds.
    """
    count = 0
    open_nodes: set[int] = set()  # the nodes being walked: meeting one again is a recursive alias
    stack: list[tuple[yaml.Node, bool]] = [(root, False)] if root is not None else []
    while stack:
        node, leaving = stack.pop()
        if leaving:
            open_nodes.discard(id(node))
            continue
        if id(node) in open_nodes:
            raise SpaceError(f"{source}: invalid YAML (line {node.start_mark.line + 1}): an alias refers to a "
                             "value that contains it (a recursive alias); a space file needs no recursion")
        count += 1
        if count > MAX_YAML_VALUES:
            raise SpaceError(f"{source}: invalid YAML: its aliases expand to more than {MAX_YAML_VALUES} values "
                             "(an alias bomb?); a space file needs a few hundred")
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            continue
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(children))


# Limits on a space's size that keep loading it (every choice of every stage is weighed once) under a second or so;
# the shipped spaces are far inside them (survey.yaml: 6 stages, 67 conv settings per stage, about 30,000 weighings).
MAX_CHOICES = 100  # values in one list of choices
MAX_KNOB_SETTINGS = 4096  # combinations of one conv kind's knob values
MAX_WEIGHINGS = 200_000  # stage choices times the widths each can receive, over all stages


def parse_space(data: Any, source: str = "<space>") -> Space:
    reader = _Reader(source)
    top = reader.mapping(data, "", {"name", "description", "resolution", "stem", "head", "stage_defaults",
                                    "stages", "conv_knobs"}, required={"name", "resolution", "stem", "stages"})
    stem = reader.mapping(top["stem"], "stem", {"width", "kernel", "stride", "activation"}, required={"width"})
    head = reader.mapping(top.get("head", {}), "head", {"width", "activation", "dropout", "classifier"})
    classifiers = reader.choices(head.get("classifier", DEFAULT_CLASSIFIER), "head.classifier")
    for c in classifiers:
        if c not in CLASSIFIERS:
            reader.fail("head.classifier", f"unknown classifier {c!r}; valid: {', '.join(CLASSIFIERS)}")
    defaults = reader.mapping(top.get("stage_defaults", {}), "stage_defaults", STAGE_KEYS)
    stages_raw = top["stages"]
    if not isinstance(stages_raw, list) or not stages_raw:
        reader.fail("stages", "must be a non-empty list of stages")
    if len(stages_raw) > MAX_STAGES:
        reader.fail("stages", f"{len(stages_raw)} stages; at most {MAX_STAGES}")
    knobs_raw = reader.mapping(top.get("conv_knobs", {}), "conv_knobs", set(CONV_TYPES))
    conv_knobs = []
    for kind, knobs in sorted(knobs_raw.items()):
        knobs = reader.mapping(knobs, f"conv_knobs.{kind}", set(CONV_TYPES[kind].knob_names))
        choices = tuple(sorted((k, reader.choices(v, f"conv_knobs.{kind}.{k}")) for k, v in knobs.items()))
        settings = math.prod(len(c) for _, c in choices)
        if settings > MAX_KNOB_SETTINGS:
            reader.fail(f"conv_knobs.{kind}", f"its choices make {settings} knob settings; at most "
                                              f"{MAX_KNOB_SETTINGS}")
        for combo in itertools.product(*(c for _, c in choices)):
            try:
                resolve_knobs(kind, dict(zip((k for k, _ in choices), combo, strict=True)))
            except ConvConfigError as err:
                reader.fail(f"conv_knobs.{kind}", clip(str(err), 200))
        conv_knobs.append((kind, choices))
    stages = tuple(reader.stage({**defaults, **reader.mapping(s, f"stages[{i}]", STAGE_KEYS)}, f"stages[{i}]")
                   for i, s in enumerate(stages_raw))
    description = top.get("description", "")
    if not isinstance(description, str):
        reader.fail("description", f"must be a string, got {shown(description)}")
    stem_kernel = reader.int_(stem.get("kernel", 3), "stem.kernel")
    if stem_kernel not in (1, 3, 5, 7):
        reader.fail("stem.kernel", f"kernel {shown(stem_kernel)} is not one of 1, 3, 5, 7")
    stem_stride = reader.int_(stem.get("stride", 1), "stem.stride")
    if stem_stride not in (1, 2):
        reader.fail("stem.stride", "must be 1 or 2")
    space = Space(
        name=reader.string(top["name"], "name"),
        description=description,
        resolution=reader.int_(top["resolution"], "resolution", 8, MAX_RESOLUTION),
        stem_width=reader.choices(stem["width"], "stem.width", int, maximum=MAX_CHANNELS),
        stem_kernel=stem_kernel,
        stem_stride=stem_stride,
        stem_activation=reader.activation(stem.get("activation", "relu"), "stem.activation"),
        head_width=reader.choices(head.get("width", 0), "head.width", int, minimum=0, maximum=MAX_CHANNELS),
        head_activation=reader.activation(head.get("activation", "relu"), "head.activation"),
        head_dropout=reader.fraction(head.get("dropout", 0.0), "head.dropout"),
        stages=stages,
        conv_knobs=tuple(conv_knobs),
        path=source,
        head_classifier=classifiers,
    )
    weighings = _weighings(space)
    if weighings > MAX_WEIGHINGS:
        reader.fail("stages", f"its choices make {weighings} stage choices to weigh (each stage's choices times the "
                              f"widths it can receive); at most {MAX_WEIGHINGS}: offer fewer choices")
    check_some_valid(space)
    return space


STAGE_KEYS = {"block", "width", "depth", "stride", "kernel", "expansion", "conv", "activation", "residual"}


class _Reader:
    """Checks space-file values; every error names the file, the key and the rule."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, rule: str) -> None:
        raise SpaceError(f"{self.source}: {key or 'top level'}: {rule}")

    def mapping(self, value: Any, key: str, allowed: set[str],
                required: frozenset[str] | set[str] = frozenset()) -> dict:
        if not isinstance(value, Mapping):
            self.fail(key, "must be a mapping of keys to values")
        unknown = sorted((k for k in value if k not in allowed), key=str)  # keys of any type: 1, null, a date
        if unknown:
            self.fail(key, f"unknown key(s) {clip(', '.join(map(str, unknown)))}; valid: {', '.join(sorted(allowed))}")
        missing = sorted(required - set(value))
        if missing:
            self.fail(key, f"missing required key(s) {', '.join(missing)}")
        return dict(value)

    def choices(self, value: Any, key: str, kind: type | None = None, minimum: int = 1,
                maximum: int | None = None) -> Choices:
        values = tuple(value) if isinstance(value, list) else (value,)
        if not values:
            self.fail(key, "an empty list of choices; give at least one value")
        if len(values) > MAX_CHOICES:
            self.fail(key, f"{len(values)} choices; at most {MAX_CHOICES} (a search tries a few dozen architectures)")
        for v in values:  # a choice is one value (a number, a string, true/false), never a list or a mapping
            if isinstance(v, (list, dict)) or (v is not None and not isinstance(v, (int, float, str))):
                self.fail(key, f"each choice must be a single value (a number or a name), got {shown(v)}; write "
                               "the choices as one flat list, e.g. [16, 24, 32]")
        if len(set(values)) != len(values):
            self.fail(key, "lists a choice twice")
        if kind is int:
            for v in values:
                if not is_int(v, minimum, maximum):
                    rule = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
                    self.fail(key, f"choices must be integers {rule}, got {shown(v)}")
        return values

    def int_(self, value: Any, key: str, minimum: int = 1, maximum: int | None = None) -> int:
        if not is_int(value, minimum, maximum):
            rule = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            self.fail(key, f"must be an integer {rule}, got {shown(value)}")
        return value

    def fraction(self, value: Any, key: str) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
            self.fail(key, f"must be a number >= 0 and < 1, got {shown(value)}")
        return float(value)

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip() or not value.isprintable():
            self.fail(key, f"must be a non-empty string on one line, got {shown(value)}")
        return value

    def activation(self, value: Any, key: str) -> str:
        problem = check_activation(value)
        if problem:
            self.fail(key, problem)
        return value

    def stage(self, raw: dict, key: str) -> StageSpace:
        for required in ("width", "stride"):
            if required not in raw:
                self.fail(key, f"missing required key {required!r}")
        blocks = self.choices(raw.get("block", "inverted_residual"), f"{key}.block")
        for b in blocks:
            if b not in BLOCKS:
                self.fail(f"{key}.block", f"unknown block {shown(b)}; valid: {', '.join(sorted(BLOCKS))}")
        convs = self.choices(raw.get("conv", "dsc"), f"{key}.conv")
        for c in convs:
            if c not in CONV_TYPES:
                self.fail(f"{key}.conv", f"unknown conv type {shown(c)}; valid: {', '.join(sorted(CONV_TYPES))}")
        kernels = self.choices(raw.get("kernel", 3), f"{key}.kernel", int)
        for k in kernels:
            if k not in (1, 3, 5, 7):
                self.fail(f"{key}.kernel", f"kernel {shown(k)} is not one of 1, 3, 5, 7")
        expansions = self.choices(raw.get("expansion", 1), f"{key}.expansion")
        for e in expansions:
            if not isinstance(e, (int, float)) or isinstance(e, bool) or not 0 < e <= MAX_EXPANSION:
                self.fail(f"{key}.expansion", f"choices must be numbers > 0 and <= {MAX_EXPANSION}, got {shown(e)}")
        stride = self.int_(raw["stride"], f"{key}.stride")
        if stride not in (1, 2):
            self.fail(f"{key}.stride", "must be 1 or 2")
        residual = raw.get("residual", True)
        if not isinstance(residual, bool):
            self.fail(f"{key}.residual", "must be true or false")
        return StageSpace(
            block=blocks, width=self.choices(raw["width"], f"{key}.width", int, maximum=MAX_CHANNELS),
            depth=self.choices(raw.get("depth", 1), f"{key}.depth", int, maximum=MAX_REPEATS), stride=stride,
            kernel=kernels,
            expansion=expansions, conv=convs, activation=self.activation(raw.get("activation", "relu"),
                                                                         f"{key}.activation"),
            residual=residual,
        )


def _pick(trial: Suggester, name: str, choices: Choices) -> Any:
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, list(choices))


def sample(space: Space, trial: Suggester, in_channels: int, num_classes: int,
           resolution: int | None = None) -> ArchSpec:
    """The ArchSpec an Optuna trial (or any object with suggest_categorical) picks from `space`."""
    stages = []
    for i, st in enumerate(space.stages, start=1):
        p = f"stage{i}"
        kind = _pick(trial, f"{p}.conv", st.conv)
        knobs = {k: _pick(trial, f"{p}.{kind}_{k}", c) for k, c in space.knob_choices(kind).items()}
        stages.append(StageSpec(
            block=_pick(trial, f"{p}.block", st.block), out_channels=_pick(trial, f"{p}.width", st.width),
            repeats=_pick(trial, f"{p}.depth", st.depth), stride=st.stride,
            kernel=_pick(trial, f"{p}.kernel", st.kernel),
            expansion=float(_pick(trial, f"{p}.expansion", st.expansion)), conv=ConvSpec.of(kind, **knobs),
            activation=st.activation, residual=st.residual,
        ))
    return ArchSpec(
        in_channels=in_channels, num_classes=num_classes, resolution=resolution or space.resolution,
        stem=StemSpec(_pick(trial, "stem.width", space.stem_width), space.stem_kernel, space.stem_stride,
                      space.stem_activation),
        stages=tuple(stages),
        head=HeadSpec(_pick(trial, "head.width", space.head_width), space.head_activation, space.head_dropout,
                      _pick(trial, "head.classifier", space.head_classifier)),
        name=space.name,
    )


def space_size(space: Space) -> int:
    """Number of distinct architectures in the space."""
    total = len(space.stem_width) * len(space.head_width) * len(space.head_classifier)
    for st in space.stages:
        per_kind = sum(math.prod(len(c) for c in space.knob_choices(kind).values()) for kind in st.conv)
        total *= len(st.block) * len(st.width) * len(st.depth) * len(st.kernel) * len(st.expansion) * per_kind
    return total


class _Fixed:
    """A Suggester that answers from a dict of parameter values."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = params

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        return self.params[name]


@functools.lru_cache(maxsize=200_000)
def stage_problem(st: StageSpec, in_channels: int) -> str | None:
    """Why a stage on `in_channels` cannot be built (a conv unit breaks its rule, e.g. SCC groups that do not divide
    the channels), or None where it can."""
    try:
        for channels, stride, _, _ in stage_blocks(in_channels, st.out_channels, st.repeats, st.stride):
            for _, m, n, s in conv_units(st.block, channels, st.out_channels, st.expansion, stride):
                check_conv(st.conv.kind, m, n, st.kernel, s, st.conv.knob_dict)
    except ConvConfigError as err:
        return str(err)
    return None


@functools.lru_cache(maxsize=200_000)
def valid_stage_counts(st: StageSpec, in_channels: int, size: int) -> tuple[int, int, int] | None:
    """`stage_counts` (MACs, params, output size), or None where the stage cannot be built (`stage_problem`)."""
    return None if stage_problem(st, in_channels) else stage_counts(st, in_channels, size)


@dataclass(frozen=True)
class _Option:
    """One choice of everything a stage picks: its parameters and the StageSpec they make."""

    params: tuple[tuple[str, Any], ...]
    stage: StageSpec


@functools.lru_cache(maxsize=64)
def _stage_options(space: Space, index: int) -> tuple[_Option, ...]:
    """Every choice of stage `index` that can be the cheapest or the dearest of the space.

    Depths are limited to the smallest and the largest: blocks after a stage's first all map its width to its
    width, so a depth >= 2 is valid exactly when depth 2 is, and cost grows with depth.
    """
    st, p = space.stages[index], f"stage{index + 1}"
    depths = sorted({min(st.depth), max(st.depth)})
    options = []
    for kind in st.conv:
        knob_choices = space.knob_choices(kind)
        for combo in itertools.product(*knob_choices.values()):
            knobs = dict(zip(knob_choices, combo, strict=True))
            conv = ConvSpec.of(kind, **knobs)
            conv_params = ((f"{p}.conv", kind), *((f"{p}.{kind}_{k}", v) for k, v in knobs.items()))
            for block, width, depth, kernel, expansion in itertools.product(st.block, st.width, depths, st.kernel,
                                                                           st.expansion):
                stage = StageSpec(block=block, out_channels=width, repeats=depth, stride=st.stride, kernel=kernel,
                                  expansion=float(expansion), conv=conv, activation=st.activation,
                                  residual=st.residual)
                params = ((f"{p}.block", block), (f"{p}.width", width), (f"{p}.depth", depth),
                          (f"{p}.kernel", kernel), (f"{p}.expansion", expansion), *conv_params)
                options.append(_Option(params, stage))
    return tuple(options)


def _weighings(space: Space) -> int:
    """How many (stage choice, width received) pairs `check_some_valid` and `extreme_params` may weigh."""
    total, incoming = 0, len(space.stem_width)
    for st in space.stages:
        settings = sum(math.prod(len(c) for c in space.knob_choices(kind).values()) for kind in st.conv)
        depths = len({min(st.depth), max(st.depth)})
        total += incoming * len(st.block) * len(st.width) * depths * len(st.kernel) * len(st.expansion) * settings
        incoming = len(st.width)
    return total


def check_some_valid(space: Space) -> None:
    """Refuse a space none of whose architectures can be built; one where some can is fine (the others become
    `invalid` trials). Names the first stage that no choice of the stage (on any width the stages before it can
    give) makes valid, and the rule its choices break."""
    channels = set(space.stem_width)  # the widths that valid choices of the stages so far can end on
    for i in range(len(space.stages)):
        reached: set[int] = set()
        problem: tuple[str, str] | None = None
        for option in _stage_options(space, i):
            if option.stage.out_channels in reached:
                continue
            for c in sorted(channels):
                found = stage_problem(option.stage, c)
                if found is None:
                    reached.add(option.stage.out_channels)
                    break
                problem = problem or (found, option.stage.conv.kind)
        if not reached:
            assert problem is not None  # a stage always has at least one option
            found, kind = problem
            key = f"stages[{i}]" + (f" with conv_knobs.{kind}" if space.knob_choices(kind) else "")
            raise SpaceError(
                f"{space.path}: {key}: no architecture of the space can be built: every choice of this stage "
                f"breaks a conv rule, e.g. {clip(found, 200)}; give the knob a value that fits the widths (or "
                "widths and expansions that fit it), or offer another conv kind")
        channels = reached


def extreme_spec(space: Space, in_channels: int, num_classes: int, resolution: int | None = None,
                 cheapest: bool = True, by_params: bool = False) -> ArchSpec:
    """The cheapest (or dearest) valid architecture of the space by MACs (or params; see `extreme_params`)."""
    return sample(space, _Fixed(extreme_params(space, in_channels, num_classes, resolution, cheapest, by_params)),
                  in_channels, num_classes, resolution)


def extreme_params(space: Space, in_channels: int, num_classes: int, resolution: int | None = None,
                   cheapest: bool = True, by_params: bool = False) -> dict[str, Any]:
    """The parameter values of the cheapest (or dearest) valid architecture of the space by MACs, ties broken by
    params (`by_params`: by params, ties broken by MACs).

    Exact, by dynamic programming over the stages: cost adds up stage by stage, and a stage's cost and validity
    depend on the choices before it only through the width it receives. So for each width a stage can end on,
    only the cheapest (dearest) valid way there is kept. Invalid choices (e.g. SCC groups that do not divide a
    width) are never picked; `check_some_valid` has refused spaces where nothing is valid.
    """
    better = (lambda a, b: a < b) if cheapest else (lambda a, b: a > b)
    size = resolution or space.resolution

    def key(macs: int, params: int) -> tuple[int, int]:
        return (params, macs) if by_params else (macs, params)

    # Per width a stage ends on: (cost so far, the width the stage received, the stage's choice).
    stem: dict[int, tuple[tuple[int, int], int, _Option | None]] = {}
    for w in space.stem_width:
        stem[w] = (key(*conv_bn_cost(in_channels, w, space.stem_kernel, space.stem_stride, size)), 0, None)
    size = out_size(size, space.stem_kernel, space.stem_stride)
    tables = [stem]
    for i in range(len(space.stages)):
        table: dict[int, tuple[tuple[int, int], int, _Option | None]] = {}
        out = size
        for c, (cost, _, _) in tables[-1].items():
            for option in _stage_options(space, i):
                counts = valid_stage_counts(option.stage, c, size)
                if counts is None:
                    continue
                step = key(counts[0], counts[1])
                total = (cost[0] + step[0], cost[1] + step[1])
                width, out = option.stage.out_channels, counts[2]
                if width not in table or better(total, table[width][0]):
                    table[width] = (total, c, option)
        if not table:
            check_some_valid(space)  # names the stage and the rule
            raise SpaceError(f"{space.path}: stages[{i}]: no architecture of the space can be built")
        tables.append(table)
        size = out

    def path(width: int) -> tuple[int, list[_Option]]:
        """The stem width and the stages' choices of the best way to end the stages on `width`."""
        options = []
        for table in reversed(tables[1:]):
            _, width, option = table[width]
            assert option is not None
            options.append(option)
        return width, options[::-1]

    best: tuple[tuple[int, int], dict[str, Any]] | None = None
    for width in tables[-1]:
        stem_width, options = path(width)
        stem_spec = StemSpec(stem_width, space.stem_kernel, space.stem_stride, space.stem_activation)
        # The head's cost depends only on the last width: counted whole here, with each classifier kind.
        for head, classifier in itertools.product(space.head_width, space.head_classifier):
            net = net_counts(in_channels, num_classes, stem_spec, [o.stage for o in options], head,
                             resolution or space.resolution, stage=valid_stage_counts, classifier=classifier)
            if net is None:  # every stage on the path is valid: the classifier cannot map these channels
                continue
            if best is None or better(key(*net), best[0]):
                params = {"stem.width": stem_width, "head.width": head, "head.classifier": classifier}
                for option in options:
                    params.update(option.params)
                best = (key(*net), params)
    if best is None:
        raise SpaceError(f"{space.path}: head.classifier: no classifier kind of {list(space.head_classifier)} maps "
                         f"the head's channels to {num_classes} classes; offer dense")
    return best[1]
