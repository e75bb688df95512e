"""Latency targets: what is timed (the runtime, its threads, the batch and the input resolution).

A target is written `RUNTIME[:key=value,...]`, e.g. `ort-cpu`, `ort-cpu:threads=4`, `torch-cpu:batch=8,resolution=160`
(keys: threads, default 1; batch, default 1; resolution, default the architecture's deployment resolution).
A runtime turns a network (or one of its blocks) into a runner that performs one inference; runtimes plug in
through `register_runtime`:

- `ort-cpu`: ONNX Runtime's CPU execution provider on the ONNX program `dsearch export --onnx` writes for a whole
  network (dsearch.model.programs.write_onnx); a part alone is exported the same way at a fixed input shape. All graph
  optimisations on, sequential execution, `threads` intra-op threads and one inter-op thread.
- `torch-cpu`: PyTorch eager on the CPU in eval and inference mode, the default memory format (what model.py runs),
  `torch.set_num_threads(threads)`.
- `torch-cuda`: PyTorch eager on the first CUDA device in eval and inference mode; every run is synchronised.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checks import is_positive_int
from ..errors import DsearchError
from ..model.programs import SizeRange, write_onnx

Runner = Callable[[], None]


@dataclass(frozen=True)
class Runtime:
    """One way to run a network: `prepare(module, example, threads, whole)` -> (one inference, wait for it)."""

    name: str
    prepare: Callable[[nn.Module, torch.Tensor, int, SizeRange | None], contextlib.AbstractContextManager]
    versions: Callable[[], dict[str, str]]
    missing: Callable[[], str | None]  # why it cannot run here (one line naming the fix), None when it can
    doc: str = ""


RUNTIMES: dict[str, Runtime] = {}


def register_runtime(runtime: Runtime) -> Runtime:
    if runtime.name in RUNTIMES:
        raise ValueError(f"runtime {runtime.name!r} is already registered")
    RUNTIMES[runtime.name] = runtime
    return runtime


@dataclass(frozen=True)
class Target:
    """What a latency is measured on: a runtime, its threads, a batch size and an input resolution (None: the
    architecture's deployment resolution)."""

    runtime: str = "ort-cpu"
    threads: int = 1
    batch: int = 1
    resolution: int | None = None

    @property
    def name(self) -> str:
        """The canonical spelling, e.g. `ort-cpu:threads=1,batch=1`."""
        keys = f"threads={self.threads},batch={self.batch}"
        if self.resolution is not None:
            keys += f",resolution={self.resolution}"
        return f"{self.runtime}:{keys}"

    @property
    def short(self) -> str:
        """The name as a user writes it: the runtime, with the keys that differ from the defaults."""
        keys = [f"{k}={v}" for k, v, d in (("threads", self.threads, 1), ("batch", self.batch, 1),
                                            ("resolution", self.resolution, None)) if v != d]
        return self.runtime + (":" + ",".join(keys) if keys else "")

    def size(self, deployment_resolution: int) -> int:
        return self.resolution or deployment_resolution

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "threads": self.threads, "batch": self.batch, "resolution": self.resolution}


def parse_target(text: str, flag: str = "--latency-target") -> Target:
    """The Target `text` names (`RUNTIME[:key=value,...]`); one-line errors name the flag and the valid values."""
    if not isinstance(text, str) or not text.strip():
        raise DsearchError(f"{flag} must name a runtime ({', '.join(RUNTIMES)}), e.g. ort-cpu or ort-cpu:threads=2")
    runtime, _, rest = text.strip().partition(":")
    if runtime not in RUNTIMES:
        raise DsearchError(f"{flag}: unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    values: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if key not in ("threads", "batch", "resolution") or not eq:
            raise DsearchError(f"{flag}: {item!r} is not one of threads=N, batch=N, resolution=N (in {text!r})")
        try:
            number = int(value)
        except ValueError:
            number = 0
        if not is_positive_int(number) or number > (4096 if key == "resolution" else 1024):
            raise DsearchError(f"{flag}: {key} must be a positive integer, got {value!r} (in {text!r})")
        values[key] = number
    return Target(runtime, values.get("threads", 1), values.get("batch", 1), values.get("resolution"))


def check_available(target: Target) -> None:
    """Raise the runtime's one-line reason when it cannot run on this machine."""
    problem = RUNTIMES[target.runtime].missing()
    if problem:
        raise DsearchError(problem)


def runtime_versions(target: Target) -> dict[str, str]:
    return {"torch": torch.__version__, **RUNTIMES[target.runtime].versions()}


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _torch_cpu(module: nn.Module, example: torch.Tensor, threads: int,
               _sizes: SizeRange | None) -> Iterator[tuple[Runner, Runner]]:
    module = module.eval()
    with _torch_threads(threads), torch.inference_mode():
        yield (lambda: module(example)), (lambda: None)


@contextlib.contextmanager
def _torch_cuda(module: nn.Module, example: torch.Tensor, _threads: int,
                _sizes: SizeRange | None) -> Iterator[tuple[Runner, Runner]]:
    device = torch.device("cuda")
    module, x = module.eval().to(device), example.to(device)
    with torch.inference_mode():
        yield (lambda: module(x)), (lambda: torch.cuda.synchronize(device))


def _export_fixed(module: nn.Module, example: torch.Tensor) -> bytes:
    """A part alone as ONNX at a fixed input shape, by the exporter `dsearch export` uses (the TorchScript one,
    though 30x faster, writes SCC's gather form, 2-7x slower in ONNX Runtime than the dense one)."""
    with tempfile.TemporaryDirectory(prefix="dsearch-latency-") as tmp:
        path = Path(tmp) / "part.onnx"
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter prints and warns about its progress
            torch.onnx.export(module, (example,), str(path), input_names=["input"], external_data=False)
        return path.read_bytes()


@contextlib.contextmanager
def _ort_cpu(module: nn.Module, example: torch.Tensor, threads: int,
             sizes: SizeRange | None) -> Iterator[tuple[Runner, Runner]]:
    import onnxruntime

    module = module.eval()
    if sizes is None:
        program: bytes = _export_fixed(module, example)
    else:  # a whole network: the program `dsearch export --onnx` writes
        with tempfile.TemporaryDirectory(prefix="dsearch-latency-") as tmp:
            path = Path(tmp) / "model.onnx"
            write_onnx(module, example[:1], path, sizes)
            program = path.read_bytes()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(program, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: example.numpy()}
    yield (lambda: session.run(None, feed)), (lambda: None)


def _version_of(package: str) -> dict[str, str]:
    try:
        return {package: importlib.metadata.version(package)}
    except importlib.metadata.PackageNotFoundError:
        return {}


def _ort_missing() -> str | None:
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        return ("the ort-cpu latency target needs ONNX Runtime: pip install 'dsearch[onnx]' "
                "(or pick --latency-target torch-cpu)")
    return None


def _cuda_missing() -> str | None:
    if not torch.cuda.is_available():
        return "the torch-cuda latency target needs a CUDA GPU, and torch sees none here; pick ort-cpu or torch-cpu"
    return None


register_runtime(Runtime("ort-cpu", _ort_cpu, lambda: {**_version_of("onnxruntime"), **_version_of("onnx")},
                         _ort_missing, doc="ONNX Runtime, CPU execution provider"))
register_runtime(Runtime("torch-cpu", _torch_cpu, dict, lambda: None, doc="PyTorch eager on the CPU"))


def _cuda_versions() -> dict[str, str]:
    return {"cuda": str(torch.version.cuda), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""}


register_runtime(Runtime("torch-cuda", _torch_cuda, _cuda_versions, _cuda_missing,
                         doc="PyTorch eager on the first CUDA GPU"))
