"""Export an architecture as a standalone PyTorch module: model.py (imports only torch), arch.json, weights.pt.

model.py is assembled from dsearch.layers: the definitions the architecture needs are copied
verbatim (found by following names from the roots), then a generated `build_model()` wires
them up. Every name in the generated part comes from a fixed vocabulary (the layers' own
names, registry keys); every value is a Python literal written by `repr` from a checked type,
so nothing from a spec or a study can inject code. The export checks itself: it imports the
written model.py, loads the weights and compares its outputs with dsearch's own network.
"""
from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import io
import json
import math
import os
import shutil
import sys
import tempfile
import types
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import layers
from .archspec import ArchSpec
from .blocks import BLOCKS
from .builder import build_model
from .cost import spec_cost
from .errors import DsearchError
from .ops import CONV_TYPES

ROOTS = ("Net", "make_stage", "classifier_head", "conv_bn_act")
EXPORT_FILES = ("model.py", "arch.json", "weights.pt", "model.ts", "model.onnx", "model.pt2")
ONNX_METADATA = ("resolution", "train_resolution", "in_channels", "num_classes", "mean", "std", "classes", "mflops")
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
    """A registry-provided name that must be a top-level definition of dsearch.layers."""
    if not name.isidentifier() or not hasattr(layers, name):
        raise DsearchError(f"{name!r} is not a dsearch.layers definition; this conv or block kind cannot be exported")
    return name


@functools.cache  # layers.py does not change while dsearch runs; parse it once
def _layer_definitions() -> tuple[list[str], dict[str, str], dict[str, set[str]]]:
    """Top-level names of dsearch.layers in file order, their source, and the layer names each refers to."""
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
        f"    A num_classes other than {n} (the classes it was trained for) replaces the final linear layer by a new,",
        '    freshly initialised one (after loading `weights`), ready for fine-tuning on another label set.',
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
    lines += [
        "    )",
        f"    head = classifier_head({literal(channels)}, {literal(spec.head.channels)}, "
        f"{literal(spec.head.activation)}, {literal(spec.head.dropout)}, {n})",
        "    net = Net(stem, stages, head)",
        "    if weights is not None:",
        '        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))',
        f"    if num_classes != {n}:",
        "        net.head[-1] = nn.Linear(net.head[-1].in_features, num_classes)",
        "        init_weights(net.head[-1])",
        "    return net",
    ]
    return "\n".join(lines) + "\n", sorted(used)


def model_source(spec: ArchSpec, info: dict[str, Any] | None = None) -> str:
    """The text of a standalone model.py for `spec`; `info` holds plain facts kept as INFO (escaped literals)."""
    cost = spec_cost(spec)
    build, used = build_function_source(spec)
    _, source, _ = _layer_definitions()
    definitions = "\n\n\n".join(source[name] for name in needed_definitions(used))
    facts = {"in_channels": spec.in_channels, "num_classes": spec.num_classes, "resolution": spec.resolution,
             "mflops": round(cost.mflops, 4), "params": cost.params, **(info or {})}
    info_lines = "\n".join(f"    {literal(str(k))}: {literal(v)}," for k, v in facts.items())
    r, c = spec.resolution, spec.in_channels
    doc = f'''"""A standalone PyTorch network exported by dsearch (imports only torch and the standard library).

    model = build_model(weights="weights.pt").eval()  # build_model(num_classes=5, weights=...) to fine-tune
    with torch.no_grad():
        logits = model(x)  # x: N x {c} x H x W, normalised with INFO["mean"] / INFO["std"] when present

The budget was counted at {r}x{r} (INFO["resolution"]); INFO["train_resolution"], when present, is the size the
weights were trained at. The network is fully convolutional up to a global average pool, so both sizes run.

{cost.mflops:.2f} MFLOPs (millions of multiply-accumulates, fvcore) at {r}x{r}, {cost.params:,} parameters.
arch.json next to this file holds the same architecture as a dsearch ArchSpec.
"""'''
    main = '''if __name__ == "__main__":
    net = build_model().eval()
    x = torch.zeros(1, INFO["in_channels"], INFO["resolution"], INFO["resolution"])
    with torch.no_grad():
        print(f"output {tuple(net(x).shape)}, {sum(p.numel() for p in net.parameters()):,} parameters")
'''
    parts = [doc, HEADER_IMPORTS, "INFO = {\n" + info_lines + "\n}", definitions, build, main]
    text = "\n\n\n".join(p.strip("\n") for p in parts) + "\n"
    ast.parse(text)  # a generated file that does not parse is a dsearch bug: fail here, not in the user's hands
    return text


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
                torch_export: bool = False) -> ExportResult:
    """Write model.py, arch.json and (when `state` is given) weights.pt [+ model.onnx, model.ts, model.pt2].

    Everything is written into a temporary folder and checked first; `out_dir` only receives complete files.
    """
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
        (staging / "model.py").write_text(model_source(spec, info))
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
            torch.save(state, staging / "weights.pt")
        else:
            notes.append("no trained weights: weights.pt not written (model.py builds the untrained network)")
        example = torch.zeros(1, spec.in_channels, spec.resolution, spec.resolution)
        if torchscript:
            with warnings.catch_warnings():  # torch.jit is deprecated upstream but still what TorchScript users load
                warnings.simplefilter("ignore", FutureWarning)
                # Scripted, not traced: a trace would freeze SCC's counting form instead of its fast one.
                scripted = torch.jit.script(standalone.eval())
            scripted.save(str(staging / "model.ts"))
        if onnx:
            facts = {"in_channels": spec.in_channels, "num_classes": spec.num_classes, "resolution": spec.resolution,
                     "mflops": round(spec_cost(spec).mflops, 4), **(info or {})}
            notes.append(_export_onnx(standalone.eval(), example, staging / "model.onnx", facts))
        if torch_export:
            notes.append(_export_pt2(standalone.eval(), example, staging / "model.pt2"))
        files = tuple(sorted(p.name for p in staging.iterdir() if p.is_file()))
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.replace(staging / name, out_dir / name)
        for name in set(EXPORT_FILES) - set(files):  # e.g. a weights.pt of an earlier export to this folder
            (out_dir / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out_dir=out_dir, files=files, max_abs_diff=diff, notes=tuple(notes))


def _dynamic_shapes() -> tuple[dict[int, Any]]:
    """Batch, height and width free: weights trained at the data's size run at any size."""
    return ({0: torch.export.Dim("batch", min=1), 2: torch.export.Dim("height", min=8),
             3: torch.export.Dim("width", min=8)},)


def _check_input(example: torch.Tensor) -> torch.Tensor:
    """Another batch and image size than the traced example, so that both axes are checked to be free."""
    return torch.randn(3, example.shape[1], example.shape[2] // 2 + 3, example.shape[3] // 2 + 3,
                       generator=torch.Generator().manual_seed(0))


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, facts: dict[str, Any]) -> str:
    """model.onnx in one file with dsearch's facts as metadata; checked against torch with onnxruntime if installed."""
    import onnx

    # Under no_grad SCC layers run from their dense eval weight, so the graph holds dense weights and no scatter.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter prints and warns about its progress
        torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_shapes=_dynamic_shapes(), external_data=False)
    proto = onnx.load(str(path))
    for key in ONNX_METADATA:
        if facts.get(key) is not None:
            entry = proto.metadata_props.add()
            entry.key, entry.value = f"dsearch.{key}", json.dumps(facts[key])
    onnx.save(proto, str(path))
    if importlib.util.find_spec("onnxruntime") is None:
        return "model.onnx written; install onnxruntime to have its outputs checked"
    import onnxruntime

    x = _check_input(example)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        diff = float((torch.from_numpy(logits) - model(x)).abs().max())
    if not diff <= 1e-3:
        raise DsearchError(f"ONNX self-check failed: onnxruntime differs from torch by {diff:.3g}")
    return f"model.onnx checked with onnxruntime: max |diff| {diff:.2g} against torch"


def _export_pt2(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    """model.pt2 (torch.export, any batch and image size), loaded back and checked against the module."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # A batch of 2: torch.export specialises a size-1 dimension, which would fix the batch at 1.
        program = torch.export.export(model, (example.repeat(2, 1, 1, 1),), dynamic_shapes=_dynamic_shapes())
    torch.export.save(program, str(path))
    x = _check_input(example)
    with torch.no_grad():
        diff = float((torch.export.load(str(path)).module()(x) - model(x)).abs().max())
    if not diff <= 1e-4:
        raise DsearchError(f"torch.export self-check failed: model.pt2 differs from torch by {diff:.3g}")
    return f"model.pt2 loaded back with torch.export.load: max |diff| {diff:.2g} against the module"


def _require(module: str, message: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise DsearchError(message)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict saved by dsearch (safe loading: tensors only)."""
    from .weights import load_state

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
