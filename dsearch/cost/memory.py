"""Whether a resolution fits in memory, checked before anything is allocated or written.

The activations of an architecture are measured on PyTorch's "meta" device (shapes only,
nothing allocated) and compared with the memory free on the device that would hold them.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import DsearchError
from ..model.archspec import ArchSpec

FLOAT_BYTES = 4  # fp32 activations (bf16 autocast on CUDA only makes them smaller)
# Training holds every activation for the backward pass and briefly its gradient: about twice the forward's.
TRAINING_ACTIVATION_FACTOR = 2


def activation_bytes(spec: ArchSpec, resolution: int, batch: int = 1) -> int:
    """Bytes of the input and every layer's output in one forward pass, found on the meta device (no allocation)."""
    from ..model.builder import build_model

    with torch.device("meta"):
        model = build_model(spec).eval()
    total = [0]

    def count(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            total[0] += output.numel()

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.empty(batch, spec.in_channels, resolution, resolution, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return (total[0] + batch * spec.in_channels * resolution * resolution) * FLOAT_BYTES


def free_memory(device: torch.device) -> int:
    """Bytes free on `device`: the GPU's free memory, else the host's available memory."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**63  # unknown: do not refuse


def check_fits_memory(spec: ArchSpec, resolution: int, batch: int, device: torch.device, flag: str,
                      training: bool = False) -> None:
    """Refuse a resolution whose estimated activations exceed the memory free on `device`."""
    need = activation_bytes(spec, resolution, batch) * (TRAINING_ACTIVATION_FACTOR if training else 1)
    free = free_memory(device)
    if need > free:
        what = f"training at batch {batch}" if training else "one forward pass at batch 1"
        raise DsearchError(
            f"{flag} {resolution} needs about {need / 2**30:.1f} GiB for {what} of {spec.name or 'the architecture'} "
            f"({resolution}x{resolution}), but {device} has {free / 2**30:.1f} GiB free; use a smaller {flag}")
