"""dsearch's own CPU kernels (dsearch/training/csrc/cpu_kernels.c), compiled for this machine on first use.

The proxy trainer's CPU time goes mostly to memory-bound batch norm, its ReLU6, and depthwise convs
on small maps, where PyTorch's kernels run far below the machine's bandwidth, and to SCC's
sliding-channel map, which PyTorch can only run as a dense masked product (g times its MACs). The C
file holds fp32 channels_last forms of them; `library()` compiles it once per machine and source
(`cc -O3 -march=native -fopenmp`, about a second) into a cache folder and loads it with ctypes.
The kernels share PyTorch's OpenMP runtime (the same `libgomp.so.1`), so torch.set_num_threads
applies to them too.

Where there is no C compiler, or DSEARCH_NATIVE=0, `library()` returns None and dsearch trains
with PyTorch's kernels: the same function, only slower. `status()` says which, for trial records.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from functools import cache
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

SOURCE = "cpu_kernels.c"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
ENV_SWITCH = "DSEARCH_NATIVE"  # "0" turns the kernels off
ENV_CACHE = "DSEARCH_NATIVE_CACHE"  # where compiled kernels are kept (default: the user's cache folder)

_I64, _PTR, _F64, _INT = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double, ctypes.c_int
_SIGNATURES = {
    "bn_act_forward": [_PTR, _PTR, _PTR, _PTR, _I64, _I64, _F64, _INT, _PTR, _PTR, _PTR, _PTR, _F64],
    "bn_act_backward": [_PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _I64, _I64, _INT, _PTR, _PTR],
    "dw_forward": [_PTR, _PTR, _PTR] + [_I64] * 9,
    "dw_backward_input": [_PTR, _PTR, _PTR] + [_I64] * 9,
    "dw_backward_weight": [_PTR, _PTR, _PTR] + [_I64] * 9,
    "scc_forward": [_PTR] * 5 + [_I64] * 4,
    "scc_backward": [_PTR] * 7 + [_I64] * 4,
}


def _cpu_id() -> str:
    """The CPU model and its flags: -march=native code is only valid on the CPU it was built for."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = [line for line in text.splitlines() if line.startswith(("model name", "flags", "model\t"))]
    return "\n".join(sorted(set(lines)))


def cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dsearch" / "native"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(compiler: str, source: bytes, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, out = Path(tmp) / SOURCE, Path(tmp) / target.name
        src.write_bytes(source)
        done = subprocess.run([compiler, *FLAGS, "-o", str(out), str(src), "-lm"], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "compiler failed")
        os.replace(out, target)  # atomic: a concurrent worker sees the whole library or none


@cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (no C compiler, a failed build, not Linux, or DSEARCH_NATIVE=0)."""
    if os.environ.get(ENV_SWITCH, "1") == "0" or platform.system() != "Linux":
        return None
    compiler = _compiler()
    if compiler is None:
        return None
    source = resources.files(__package__).joinpath("csrc", SOURCE).read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), compiler.encode(), _cpu_id().encode(),
                                     torch.__version__.encode()])).hexdigest()[:16]
    target = cache_dir() / f"cpu_kernels-{key}.so"
    try:
        if not target.exists():
            _build(compiler, source, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        warnings.warn(f"dsearch's CPU kernels could not be built ({err}); training uses PyTorch's kernels "
                      f"(slower, same results). Set {ENV_SWITCH}=0 to silence this.", RuntimeWarning, stacklevel=2)
        return None
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, None
    return lib


def status() -> str:
    """'native' when the kernels are in use, else 'torch' (recorded with each CPU trial)."""
    return "native" if library() is not None else "torch"


def nhwc_ok(x: Tensor) -> bool:
    """Whether `x` suits the kernels: an fp32 CPU tensor, channels_last contiguous, 4-d."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 \
        and x.is_contiguous(memory_format=torch.channels_last)


def _nhwc_empty(n: int, c: int, h: int, w: int) -> Tensor:
    return torch.empty((n, c, h, w), memory_format=torch.channels_last)


class BatchNormAct(torch.autograd.Function):
    """Training-mode batch norm over the batch's statistics, then ReLU6 when `act`.

    `bn` is the BatchNorm2d whose running statistics (and num_batches_tracked) the kernel updates in
    place, as BatchNorm2d.forward does; its weight and bias are the `weight` and `bias` arguments.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, bn: torch.nn.BatchNorm2d, act: bool) -> Tensor:
        lib = library()
        assert lib is not None and bn.running_mean is not None and bn.running_var is not None \
            and bn.num_batches_tracked is not None
        n, c, h, w = x.shape
        y = _nhwc_empty(n, c, h, w)
        stats = torch.empty(2, c)  # mean, invstd
        lib.bn_act_forward(x.data_ptr(), y.data_ptr(), weight.data_ptr(), bias.data_ptr(), n * h * w, c, bn.eps,
                           int(act), stats.data_ptr(), bn.running_mean.data_ptr(), bn.running_var.data_ptr(),
                           bn.num_batches_tracked.data_ptr(), -1.0 if bn.momentum is None else bn.momentum)
        ctx.save_for_backward(x, weight, bias, stats)
        ctx.act = act
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        lib = library()
        assert lib is not None
        x, weight, bias, stats = ctx.saved_tensors
        n, c, h, w = x.shape
        grad = grad.contiguous(memory_format=torch.channels_last)
        dx, dparams = _nhwc_empty(n, c, h, w), torch.empty(2, c)
        mean, dweight_ptr = stats.data_ptr(), dparams.data_ptr()  # rows: mean, invstd / dweight, dbias
        lib.bn_act_backward(x.data_ptr(), grad.data_ptr(), dx.data_ptr(), weight.data_ptr(), bias.data_ptr(),
                            mean, mean + 4 * c, n * h * w, c, int(ctx.act), dweight_ptr, dweight_ptr + 4 * c)
        dweight, dbias = dparams.unbind()
        return dx, dweight, dbias, None, None


def _dw_geometry(x: Tensor, k: int, stride: int, padding: int) -> tuple[int, ...]:
    n, c, h, w = x.shape
    return n, h, w, c, k, stride, padding, (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1


class DepthwiseConv(torch.autograd.Function):
    """A depthwise conv (C x 1 x K x K weight, no bias, zero padding) on a channels_last fp32 CPU tensor."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
        lib = library()
        assert lib is not None
        taps = weight.detach()[:, 0].permute(1, 2, 0).contiguous()  # K x K x C: channels innermost, like x
        geometry = _dw_geometry(x, weight.shape[-1], stride, padding)
        n, _, _, c, _, _, _, ho, wo = geometry
        y = _nhwc_empty(n, c, ho, wo)
        lib.dw_forward(x.data_ptr(), taps.data_ptr(), y.data_ptr(), *geometry)
        ctx.save_for_backward(x, taps)
        ctx.geometry = geometry
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        lib = library()
        assert lib is not None
        x, taps = ctx.saved_tensors
        geometry = ctx.geometry
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.empty_like(x)
            lib.dw_backward_input(grad.data_ptr(), taps.data_ptr(), grad_x.data_ptr(), *geometry)
        if ctx.needs_input_grad[1]:
            grad_taps = torch.empty_like(taps)
            lib.dw_backward_weight(grad.data_ptr(), x.data_ptr(), grad_taps.data_ptr(), *geometry)
            grad_w = grad_taps.permute(2, 0, 1).unsqueeze(1).contiguous()
        return grad_x, grad_w, None, None


class SlidingChannelMap(torch.autograd.Function):
    """SCC's sliding-channel pointwise map on a channels_last fp32 CPU tensor, doing only its N x K MACs.

    `starts` (N) holds each output's window start and `order` (N) the outputs sorted by start (int64,
    from dsearch.model.layers.scc_window_starts); `weight` is the layer's N x K weight.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, starts: Tensor, order: Tensor) -> Tensor:
        lib = library()
        assert lib is not None
        n, m, h, w = x.shape
        out, k = weight.shape
        weight = weight.detach().contiguous()
        y = _nhwc_empty(n, out, h, w)
        lib.scc_forward(x.data_ptr(), weight.data_ptr(), starts.data_ptr(), order.data_ptr(), y.data_ptr(),
                        n * h * w, m, out, k)
        ctx.save_for_backward(x, weight, starts, order)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        lib = library()
        assert lib is not None
        x, weight, starts, order = ctx.saved_tensors
        n, m, h, w = x.shape
        out, k = weight.shape
        grad = grad.contiguous(memory_format=torch.channels_last)
        dx = _nhwc_empty(n, m, h, w) if ctx.needs_input_grad[0] else None
        dw = torch.empty(out, k) if ctx.needs_input_grad[1] else None
        lib.scc_backward(grad.data_ptr(), x.data_ptr(), weight.data_ptr(), starts.data_ptr(), order.data_ptr(),
                         dx.data_ptr() if dx is not None else None, dw.data_ptr() if dw is not None else None,
                         n * h * w, m, out, k)
        return dx, dw, None, None
