"""Export an architecture as a standalone PyTorch module: model.py (imports only torch), arch.json, weights.pt and
a README.md that says how it was made, where its cost was counted and at which size to feed its weights.

model.py is assembled from dsearch.model.layers: the definitions the architecture needs are copied
verbatim (found by following names from the roots), then a generated `build_model()` wires
them up. Every name in the generated part comes from a fixed vocabulary (the layers' own
names, registry keys); every value is a Python literal written by `repr` from a checked type,
so nothing from a spec or a study can inject code. The export checks itself: it imports the
written model.py, loads the weights and compares its outputs with dsearch's own network.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import io
import json
import math
import os
import shutil
import sys
import tempfile
import textwrap
import time
import types
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checks import is_positive_int
from ..cost.count import spec_cost
from ..errors import DsearchError
from ..model import layers
from ..model.archspec import ArchSpec
from ..model.blocks import BLOCKS
from ..model.builder import build_model
from ..model.heads import CLASSIFIERS
from ..model.ops import CONV_TYPES
from ..model.programs import SizeRange, dynamic_shapes, export_sizes, write_onnx
from ..paths import write_bytes_atomic
from ..version import __version__

ROOTS = ("Net", "make_stage", "classifier_head", "conv_bn_act")
EXPORT_FILES = ("model.py", "arch.json", "weights.pt", "model.ts", "model.onnx", "model.pt2", "README.md")
ONNX_METADATA = ("resolution", "train_resolution", "in_channels", "num_classes", "mean", "std", "classes", "mflops",
                 "weights")
ALWAYS_IN_METADATA = ("train_resolution", "weights")  # null says "untrained", which is worth saying
HEADER_IMPORTS = """from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
"""


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    files: tuple[str, ...]
    max_abs_diff: float | None  # standalone vs dsearch outputs on a random batch (None: no weights to compare)
    notes: tuple[str, ...] = field(default_factory=tuple)
    warning: str | None = None  # the weights were not trained at the deployment resolution (resolution_warning)


def literal(value: Any) -> str:
    """A Python literal for a plain value; anything else is refused (no code from data)."""
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DsearchError(f"cannot export the non-finite number {value!r}")
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + "".join(literal(v) + ", " for v in value).rstrip(" ") + ")"
    raise DsearchError(f"cannot export a value of type {type(value).__name__}")


def _identifier(name: str) -> str:
    """A registry-provided name that must be a top-level definition of dsearch.model.layers."""
    if not name.isidentifier() or not hasattr(layers, name):
        raise DsearchError(f"{name!r} is not a dsearch.model.layers definition; this conv or block kind cannot be "
                           "exported")
    return name


@functools.cache  # layers.py does not change while dsearch runs; parse it once
def _layer_definitions() -> tuple[list[str], dict[str, str], dict[str, set[str]]]:
    """Top-level names of dsearch.model.layers in file order, their source, and the layer names each refers to."""
    path = Path(layers.__file__)
    text = path.read_text()
    tree = ast.parse(text)
    order: list[str] = []
    source: dict[str, str] = {}
    nodes: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names = [node.target.id]
        else:
            continue
        segment = ast.get_source_segment(text, node, padded=False)
        if segment is None:  # only for nodes without positions, which ast.parse never makes
            raise DsearchError(f"cannot read the source of {names[0]} in {path}")
        for name in names:
            order.append(name)
            source[name] = segment
            nodes[name] = node
    # Every name a definition mentions (annotations included) that is another top-level definition.
    refs = {name: ({n.id for n in ast.walk(node) if isinstance(n, ast.Name)} & set(source)) - {name}
            for name, node in nodes.items()}
    return order, source, refs


def needed_definitions(roots: list[str]) -> list[str]:
    """`roots` and every layers definition they use, transitively, in the file's order."""
    order, _, refs = _layer_definitions()
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(refs[name])
    return [name for name in order if name in seen]


def _conv_expr(spec_conv) -> str:
    ct = CONV_TYPES[spec_conv.kind]
    name = _identifier(ct.standalone)
    if not spec_conv.knobs:
        return name
    args = ", ".join(f"{_identifier_knob(k, ct)}={literal(v)}" for k, v in spec_conv.knobs)
    return f"partial({name}, {args})"


def _identifier_knob(knob: str, ct) -> str:
    if knob not in ct.knob_names:
        raise DsearchError(f"{ct.name}: unknown knob {knob!r}")
    return _keyword(knob)


def _keyword(name: str) -> str:
    if not name.isidentifier():
        raise DsearchError(f"{name!r} cannot be a keyword argument")
    return name


def build_function_source(spec: ArchSpec) -> tuple[str, list[str]]:
    """The generated `build_model()` and the layers names it calls."""
    used = set(ROOTS) | {"init_weights"}
    n = literal(spec.num_classes)
    lines = [
        f"def build_model(num_classes: int = {n}, weights: str | None = None) -> nn.Module:",
        '    """The exported architecture, freshly initialised; `weights` (e.g. "weights.pt") loads the trained one.',
        "",
        f"    A num_classes other than {n} (the classes it was trained for) replaces the classifier (the last",
        '    layer) by a new, freshly initialised one (after loading `weights`), ready for fine-tuning on another',
        '    label set.',
        '    """',
        "    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:",
        '        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")',
        f"    stem = conv_bn_act({literal(spec.in_channels)}, {literal(spec.stem.out_channels)}, "
        f"{literal(spec.stem.kernel)}, {literal(spec.stem.stride)}, {literal(spec.stem.activation)})",
        "    stages = nn.Sequential(",
    ]
    channels = spec.stem.out_channels
    for i, st in enumerate(spec.stages, start=1):
        block = BLOCKS[st.block]
        module = _identifier(block.module.__name__)
        conv = _conv_expr(st.conv)
        used.update({module, CONV_TYPES[st.conv.kind].standalone})
        extra = ", ".join(f"{_keyword(f)}={literal(getattr(st, f))}" for f in block.fields)
        lines.append(f"        # stage {i}: {literal(st.repeats)} x {block.name}, {CONV_TYPES[st.conv.kind].name}")
        lines.append(f"        make_stage({module}, {literal(channels)}, {literal(st.out_channels)}, "
                     f"repeats={literal(st.repeats)}, stride={literal(st.stride)}, kernel={literal(st.kernel)},")
        lines.append(f"                   conv={conv},")
        lines.append(f"                   {extra}),")
        channels = st.out_channels
    classifier = CLASSIFIERS[spec.head.classifier].standalone  # empty: torch's nn.Linear
    if classifier:
        used.add(_identifier(classifier))
    lines += [
        "    )",
        f"    head = classifier_head({literal(channels)}, {literal(spec.head.channels)}, "
        f"{literal(spec.head.activation)}, {literal(spec.head.dropout)}, {n}"
        + (f", {classifier})" if classifier else ")"),
        "    net = Net(stem, stages, head)",
        "    if weights is not None:",
        '        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))',
        f"    if num_classes != {n}:",
        f"        net.head[-1] = {classifier or 'nn.Linear'}(net.head[-1].in_features, num_classes)",
        "        init_weights(net.head[-1])",
        "    return net",
    ]
    return "\n".join(lines) + "\n", sorted(used)


def weights_size(info: dict[str, Any] | None) -> int | None:
    """The size the exported weights were trained at (info["train_resolution"]); None when unknown or untrained."""
    value = (info or {}).get("train_resolution")
    if value is None:
        return None
    if not is_positive_int(value):
        raise DsearchError(f"train_resolution must be a positive number of pixels, got {value!r}; fix metrics.json "
                           "or retrain with `dsearch train`")
    return value


def feed_size(spec: ArchSpec, info: dict[str, Any] | None) -> int:
    """The input size model.py's example feeds: where the weights were trained, else the deployment resolution."""
    return weights_size(info) or spec.resolution


def resolution_warning(spec: ArchSpec, info: dict[str, Any] | None, trained: bool, retrain: str | None) -> str | None:
    """One line when trained weights do not belong to the deployment resolution (or their size is unknown)."""
    r, t = spec.resolution, weights_size(info)
    if not trained or t == r:
        return None
    how = f"`{retrain}`" if retrain else f"`dsearch train ... --train-resolution {r}`"
    if t is None:
        return (f"the size these weights were trained at is unknown, so model.py assumes the deployment resolution "
                f"{r}x{r}; train weights for it with {how} to be sure")
    return (f"these weights were trained at {t}x{t}, not at the deployment resolution {r}x{r} where the cost is "
            f"counted: feed {t}x{t} inputs (INFO[\"train_resolution\"]; at {r}x{r} they are not expected to work), "
            f"or get weights for {r}x{r} with {how} (the data resized to {r}x{r} on the device)")


def _usage_lines(spec: ArchSpec, info: dict[str, Any], trained: bool, indent: str) -> list[str]:
    """The lines that build the network and feed it as it was trained (only numbers from checked types)."""
    size, c = feed_size(spec, info), spec.in_channels
    normalise = "mean" in info and "std" in info
    weights = 'weights="weights.pt"' if trained else ""
    lines = [f"model = build_model({weights}).eval()  # build_model(num_classes=5, ...) for another label set",
             f"# images: N x {c} x H x W, pixel values scaled to [0, 1]"]
    if normalise:
        lines += ['mean = torch.tensor(INFO["mean"]).view(1, -1, 1, 1)',
                  'std = torch.tensor(INFO["std"]).view(1, -1, 1, 1)',
                  "x = (images - mean) / std"]
    else:
        lines += ["x = images  # normalised as the training data was" if trained else
                  "x = images  # normalised as your training data will be"]
    where = 'INFO["train_resolution"]' if weights_size(info) else 'INFO["resolution"]'
    lines += [f"x = F.interpolate(x, size=({size}, {size}), mode=\"bilinear\", align_corners=False)  # {where}",
              "with torch.no_grad():",
              "    logits = model(x)" + ("  # classes: INFO[\"classes\"]" if "classes" in info else "")]
    return [indent + line for line in lines]


def _resolution_text(spec: ArchSpec, info: dict[str, Any], trained: bool) -> str:
    """Where the cost was counted and where the weights were trained, in sentences."""
    r, t = spec.resolution, weights_size(info)
    cost = spec_cost(spec)
    counted = (f"The cost, {cost.mflops:.2f} MFLOPs@{r}x{r} (millions of multiply-accumulates, fvcore) and "
               f"{cost.params:,} parameters, was counted at the deployment resolution {r}x{r} "
               '(INFO["resolution"]).')
    if not trained:
        return (f"{counted} No trained weights were exported (INFO[\"weights\"] is None): build_model() gives a "
                "freshly initialised network, to be trained before use.")
    if t is None:
        return (f"{counted} The size the weights were trained at is unknown (INFO[\"train_resolution\"] is None); "
                f"the example assumes {r}x{r}.")
    text = f"{counted} The weights were trained at {t}x{t} (INFO[\"train_resolution\"]): feed {t}x{t} inputs."
    if t != r:
        text += (f" They were not trained at {r}x{r} and are not expected to work there; `dsearch train ... "
                 f"--train-resolution {r}` trains weights for {r}x{r} (README.md names the command).")
    return text


def model_source(spec: ArchSpec, info: dict[str, Any] | None = None, trained: bool = True) -> str:
    """The text of a standalone model.py for `spec`; `info` holds plain facts kept as INFO (escaped literals).

    `trained`: whether weights.pt goes with it (the example then loads it and feeds the size it was trained at).
    """
    info = dict(info or {})
    if not trained:
        info.update(train_resolution=None, weights=None)
    cost = spec_cost(spec)
    build, used = build_function_source(spec)
    _, source, _ = _layer_definitions()
    definitions = "\n\n\n".join(source[name] for name in needed_definitions(used))
    r = spec.resolution
    facts = {"in_channels": spec.in_channels, "num_classes": spec.num_classes, "resolution": r,
             "train_resolution": weights_size(info), "mflops": round(cost.mflops, 4), "params": cost.params, **info}
    comments = {"resolution": f"deployment size: the cost (MFLOPs@{r}x{r}) is counted here",
                "train_resolution": "the size the weights were trained at: feed inputs of this size" if trained
                else "no trained weights", "mflops": f"MFLOPs@{r}x{r}, millions of multiply-accumulates (fvcore)"}
    info_lines = "\n".join(f"    {literal(str(k))}: {literal(v)}," + (f"  # {comments[k]}" if k in comments else "")
                            for k, v in facts.items())
    usage = "\n".join(_usage_lines(spec, info, trained, "    "))
    paragraph = "\n".join(textwrap.wrap(_resolution_text(spec, info, trained), 116, break_on_hyphens=False,
                                         break_long_words=False))
    doc = f'''"""A standalone PyTorch network exported by dsearch (imports only torch and the standard library).

{usage}

{paragraph}
The network is fully convolutional up to a global average pool, so other sizes run too.
arch.json next to this file holds the same architecture as a dsearch ArchSpec.
"""'''
    main = '''if __name__ == "__main__":
    net = build_model().eval()
    size = INFO["train_resolution"] or INFO["resolution"]
    x = torch.zeros(1, INFO["in_channels"], size, size)
    with torch.no_grad():
        print(f"output {tuple(net(x).shape)} at {size}x{size}, {sum(p.numel() for p in net.parameters()):,} parameters")
'''
    parts = [doc, HEADER_IMPORTS, "INFO = {\n" + info_lines + "\n}", definitions, build, main]
    text = "\n\n\n".join(p.strip("\n") for p in parts) + "\n"
    ast.parse(text)  # a generated file that does not parse is a dsearch bug: fail here, not in the user's hands
    return text


FILE_ROLES = {
    "model.py": "the network in PyTorch source (imports only torch): `build_model()`, and `INFO` with the facts above",
    "arch.json": "the same architecture as a dsearch ArchSpec (`dsearch cost arch.json`, `dsearch train arch.json`)",
    "weights.pt": "the trained state_dict (`torch.load(..., weights_only=True)`)",
    "model.ts": "scripted TorchScript (`torch.jit.load`)",
    "model.onnx": "ONNX, any batch size and {sizes} (exported and checked over that range); its metadata_props "
                  "hold `dsearch.resolution`, `dsearch.train_resolution` and the other facts as JSON",
    "model.pt2": "a torch.export program (`torch.export.load`): any batch size and {sizes}; it refuses other sizes",
    "README.md": "this file",
}


def _plain(value: Any) -> str:
    """A fact as one line of Markdown text (names from a study may hold anything)."""
    return " ".join(str(value).split()).replace("|", "/")


def readme_text(spec: ArchSpec, info: dict[str, Any], trained: bool, files: list[str], warning: str | None) -> str:
    """The export folder's README.md: what the network is, how it was made, at which sizes, and how to feed it."""
    r, t, size = spec.resolution, weights_size(info), feed_size(spec, info)
    cost = spec_cost(spec)
    if "study" in info and "trial" in info:
        title = f"Trial {_plain(info['trial'])} of study '{_plain(info['study'])}'"
    else:
        title = _plain(spec.name or "Exported architecture")
    rows = [("architecture", f"`{_plain(spec.summary().replace(' | ', ', '))}`"),
            ("cost", f"{cost.mflops:.2f} MFLOPs@{r}x{r} (millions of multiply-accumulates, fvcore), "
                     f"{cost.params:,} parameters, counted at the deployment resolution {r}x{r} (`resolution`)")]
    if not trained:
        rows.append(("weights", "none: untrained (no weights.pt); `build_model()` gives a freshly initialised network"))
    else:
        dataset = _plain(info["dataset"]) if "dataset" in info else None
        rows += [("weights", _plain(info.get("weights") or "given with the export")),
                 ("trained at", (f"{t}x{t} (`train_resolution`)" if t else "an unknown size")
                  + (f", on {dataset}" if dataset else ""))]
        acc = info.get("test_acc")
        if isinstance(acc, float) and math.isfinite(acc):
            split = f"the test split of {dataset}" if dataset else "the test split"
            rows.append(("test accuracy", f"{acc:.4f} on {split}, fed at {size}x{size} as below"))
    normalised = ", normalised with `INFO[\"mean\"]`, `INFO[\"std\"]`" if "mean" in info and "std" in info else ""
    rows.append(("input", f"N x {spec.in_channels} x {size} x {size}{normalised}"))
    made = f"exported by dsearch {__version__} on {time.strftime('%Y-%m-%d')}"
    lines = [f"# {title}", "", f"A standalone PyTorch network, {made}.", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    if warning:
        lines += ["", f"**Warning:** {warning}."]
    lines += ["", "## Use", "", "```python", "import torch", "import torch.nn.functional as F", "",
              "from model import INFO, build_model  # from this folder; dsearch is not needed", "",
              *_usage_lines(spec, info, trained, ""), "```", "",
              *([f"Normalising, then resizing to {size}x{size} (bilinear) as above is how dsearch fed the data while "
                 "training these weights and measuring their test accuracy.", ""] if trained else []),
              "## Files", ""]
    sizes = export_sizes(spec, size).describe()
    lines += [f"- `{name}`: {FILE_ROLES[name].format(sizes=sizes)}" for name in files if name in FILE_ROLES]
    return "\n".join(lines) + "\n"


def import_model_file(path: Path) -> types.ModuleType:
    """Import a model.py from `path` as a fresh module (not added to sys.modules)."""
    name = f"_dsearch_export_{uuid.uuid4().hex}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise DsearchError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclass/annotation machinery looks modules up while executing
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def compare_outputs(spec: ArchSpec, standalone: nn.Module, state: dict[str, torch.Tensor]) -> float:
    """Max |difference| of the logits of dsearch's network and the standalone one on a random batch."""
    reference = build_model(spec).eval()
    reference.load_state_dict(state)
    standalone.load_state_dict(state)
    standalone.eval()
    x = torch.randn(2, spec.in_channels, spec.resolution, spec.resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = reference(x), standalone(x)
    return float((a - b).abs().max())


def export_spec(spec: ArchSpec, out_dir: Path, state: dict[str, torch.Tensor] | None = None,
                info: dict[str, Any] | None = None, onnx: bool = False, torchscript: bool = False,
                torch_export: bool = False, retrain: str | None = None) -> ExportResult:
    """Write model.py, arch.json, README.md and (when `state` is given) weights.pt [+ model.onnx, model.ts, model.pt2].

    `info["train_resolution"]` is the size the weights were trained at; `retrain` the command that trains weights at
    the deployment resolution, named when the two differ. Everything is written into a temporary folder and checked
    first; `out_dir` only receives complete files.
    """
    trained = state is not None
    info = dict(info or {})
    if not trained:
        info.update(train_resolution=None, weights=None)
    warning = resolution_warning(spec, info, trained, retrain)  # also checks train_resolution before writing
    if onnx:
        _require("onnx", "--onnx needs the onnx and onnxscript packages: pip install onnx onnxscript")
        _require("onnxscript", "--onnx needs the onnx and onnxscript packages: pip install onnx onnxscript")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DsearchError(f"--out {out_dir} is a file; give a folder")
    notes: list[str] = []
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    try:
        (staging / "model.py").write_text(model_source(spec, info, trained))
        (staging / "arch.json").write_text(spec.to_json() + "\n")
        module = import_model_file(staging / "model.py")
        standalone = module.build_model()
        diff = None
        if state is not None:
            state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
            diff = compare_outputs(spec, standalone, state)
            if not diff <= 1e-3:
                raise DsearchError(f"export self-check failed: the standalone model differs by {diff:.3g}; "
                                   "please report this as a dsearch bug")
            buffer = io.BytesIO()  # serialized in memory: torch.save into a file on a full disk may not raise
            torch.save(state, buffer)
            write_bytes_atomic(staging / "weights.pt", buffer.getvalue())
        else:
            notes.append("no trained weights: weights.pt not written (model.py builds the untrained network)")
        # Traced where the weights are fed: the ONNX and .pt2 programs take the sizes around it (export_sizes).
        size = feed_size(spec, info)
        example = torch.zeros(1, spec.in_channels, size, size)
        if torchscript:
            with warnings.catch_warnings():  # torch.jit is deprecated upstream but still what TorchScript users load
                warnings.simplefilter("ignore", FutureWarning)
                # Scripted, not traced: a trace would freeze SCC's counting form instead of its fast one.
                scripted = torch.jit.script(standalone.eval())
            scripted.save(str(staging / "model.ts"))
        if onnx:
            facts = {"in_channels": spec.in_channels, "num_classes": spec.num_classes, "resolution": spec.resolution,
                     "mflops": round(spec_cost(spec).mflops, 4), **info}
            notes.append(_export_onnx(standalone.eval(), example, staging / "model.onnx", facts,
                                      export_sizes(spec, size)))
        if torch_export:
            notes.append(_export_pt2(standalone.eval(), example, staging / "model.pt2", export_sizes(spec, size)))
        written = sorted(p.name for p in staging.iterdir() if p.is_file())
        (staging / "README.md").write_text(readme_text(spec, info, trained, [*written, "README.md"], warning))
        files = tuple(sorted(p.name for p in staging.iterdir() if p.is_file()))
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.replace(staging / name, out_dir / name)
        for name in set(EXPORT_FILES) - set(files):  # e.g. a weights.pt of an earlier export to this folder
            (out_dir / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out_dir=out_dir, files=files, max_abs_diff=diff, notes=tuple(notes), warning=warning)


def _check_input(example: torch.Tensor, sizes: SizeRange) -> torch.Tensor:
    """Another batch and image size than the traced example (within `sizes`), so that the axes are checked free."""
    size = example.shape[2]
    others = [h for h in (sizes.lo, size // 2 + 3, size + 5, sizes.hi or size) if h in sizes and h != size]
    height, width = (others[0], others[-1]) if others else (size, size)
    return torch.randn(3, example.shape[1], height, width, generator=torch.Generator().manual_seed(0))


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, facts: dict[str, Any], sizes: SizeRange) -> str:
    """model.onnx in one file with dsearch's facts as metadata; checked against torch with onnxruntime if installed."""
    import onnx

    write_onnx(model, example, path, sizes)
    proto = onnx.load(str(path))
    for key in ONNX_METADATA:
        if facts.get(key) is not None or (key in ALWAYS_IN_METADATA and key in facts):
            entry = proto.metadata_props.add()
            entry.key, entry.value = f"dsearch.{key}", json.dumps(facts[key])
    onnx.save(proto, str(path))
    if importlib.util.find_spec("onnxruntime") is None:
        return f"model.onnx written ({sizes.describe()}); install onnxruntime to have its outputs checked"
    import onnxruntime

    x = _check_input(example, sizes)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        diff = float((torch.from_numpy(logits) - model(x)).abs().max())
    if not diff <= 1e-3:
        raise DsearchError(f"ONNX self-check failed: onnxruntime differs from torch by {diff:.3g}")
    return f"model.onnx checked with onnxruntime: max |diff| {diff:.2g} against torch ({sizes.describe()})"


def _export_pt2(model: nn.Module, example: torch.Tensor, path: Path, sizes: SizeRange) -> str:
    """model.pt2 (torch.export, any batch, image sizes in `sizes`), loaded back and checked against the module."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # A batch of 2: torch.export specialises a size-1 dimension, which would fix the batch at 1.
        program = torch.export.export(model, (example.repeat(2, 1, 1, 1),), dynamic_shapes=dynamic_shapes(sizes))
    torch.export.save(program, str(path))
    x = _check_input(example, sizes)
    with torch.no_grad():
        diff = float((torch.export.load(str(path)).module()(x) - model(x)).abs().max())
    if not diff <= 1e-4:
        raise DsearchError(f"torch.export self-check failed: model.pt2 differs from torch by {diff:.3g}")
    return (f"model.pt2 loaded back with torch.export.load: max |diff| {diff:.2g} against the module; it takes any "
            f"batch size and {sizes.describe()}")


def _require(module: str, message: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise DsearchError(message)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict saved by dsearch (safe loading: tensors only)."""
    from ..search.weights import load_state

    return load_state(path, f"weights {path}", "give the weights.pt that dsearch train or export wrote")


def check_weights_fit(spec: ArchSpec, state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights that do not belong to `spec` (wrong keys or shapes), naming the first mismatch."""
    expected = build_model(spec).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise DsearchError(f"{source} does not fit this architecture ({what}); use the weights trained for it")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise DsearchError(f"{source} does not fit this architecture ({key} has shape "
                               f"{tuple(state[key].shape)}, expected {tuple(tensor.shape)})")
