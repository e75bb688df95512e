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


def _gib(n: float) -> str:
    """Bytes as people read them: GiB, or MiB below one GiB (a small net's image is a fraction of a MiB)."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_fits_memory(spec: ArchSpec, resolution: int, batch: int, device: torch.device, flag: str,
                      training: bool = False, *, free: int | None = None, train_images: int | None = None,
                      train_bytes: int = 0, other_bytes: int = 0, can_subset: bool = True) -> None:
    """Refuse a size and batch whose activations, with the data held on `device`, exceed the memory free there.

    The error names what is too large and the setting that fixes it: the size (`flag`, e.g. --train-resolution)
    when one image's activations alone do not fit, --train-subset when the training images held on the device
    are what leaves too little, else --batch-size with a batch that fits. `train_images`: how many training
    images a step can draw from (a batch never holds more); `train_bytes`, `other_bytes`: the training images and
    the validation and test images kept on the device (0 where they live in host memory anyway); `can_subset`:
    whether the command has --train-subset. `free`: bytes free on `device` (default: `free_memory`).
    """
    used = batch if train_images is None else max(1, min(batch, train_images))
    per_image = activation_bytes(spec, resolution, 1) * (TRAINING_ACTIVATION_FACTOR if training else 1)
    free = free_memory(device) if free is None else free
    data = train_bytes + other_bytes
    if per_image * used + data <= free:
        return
    name = spec.name or "the architecture"
    what = "training" if training else "one forward pass"
    r = f"{resolution}x{resolution}"
    if per_image > free or not training:
        raise DsearchError(
            f"{flag} {resolution} needs about {_gib(per_image)} for {what} of {name} on one {r} image, but {device} "
            f"has {_gib(free)} free; use a smaller {flag}")
    if 2 * per_image > free:  # --batch-size is at least 2
        raise DsearchError(
            f"{flag} {resolution} needs about {_gib(2 * per_image)} for {what} of {name} at the smallest batch (2) "
            f"of {r} images, but {device} has {_gib(free)} free; use a smaller {flag}")
    if other_bytes + 2 * per_image > free:
        raise DsearchError(
            f"the validation and test images held on {device} ({_gib(other_bytes)}) leave too little of its "
            f"{_gib(free)} free for {what} of {name} at {r} ({_gib(2 * per_image)} at the smallest batch, 2); "
            "use --device cpu or a smaller --train-resolution")
    held = f" besides the {_gib(data)} of images held there" if data else ""
    fits = int((free - data) // per_image)
    fits = 1 << (fits.bit_length() - 1) if fits >= 1 else 0  # a power of two
    smaller_batch = f"--batch-size {fits} (about {_gib(per_image * fits)})"
    subset = 0  # how many training images could stay on the device beside this batch (a subset holds a batch)
    if train_bytes and train_images and can_subset and used == batch:
        subset = int((free - per_image * batch - other_bytes) // (train_bytes / train_images))
    if subset >= batch:
        raise DsearchError(
            f"the {train_images} training images held on {device} ({_gib(train_bytes)}) leave too little of its "
            f"{_gib(free)} free for {what} of {name} at batch {batch} ({_gib(per_image * batch)} at {r}); use "
            f"--train-subset {subset} or fewer" + (f", or {smaller_batch}" if fits >= 2 else ""))
    if fits < 2:  # the smallest batch fits beside the validation and test images: the training images do not
        fix = "a smaller --train-subset and --batch-size" if can_subset else "--device cpu"
        raise DsearchError(
            f"the {train_images} training images held on {device} ({_gib(train_bytes)}) leave too little of its "
            f"{_gib(free)} free for {what} of {name} at the smallest batch (2: {_gib(2 * per_image)} at {r}); "
            f"use {fix}")
    whole = f" (a step takes at most the {train_images} training images)" if used < batch else ""
    raise DsearchError(
        f"--batch-size {batch} is too large: {what} of {name} at batch {used}{whole} needs about "
        f"{_gib(per_image * used)} at {r} ({_gib(per_image)} per image){held}, but {device} has {_gib(free)} free; "
        f"use {smaller_batch} or a smaller {flag}")
