"""Measured inference latency: batch 1, eval mode, at the deployment resolution, on a chosen device.

Wall-clock numbers depend on the machine and its load (unlike MFLOPs), so they are opt-in
(`dsearch run --measure-latency`) and stored with the device they were measured on.
"""
from __future__ import annotations

import statistics
import time

import torch

from ..model.archspec import ArchSpec
from ..model.builder import build_model


@torch.inference_mode()
def measure_latency(spec: ArchSpec, device: torch.device | str = "cpu", repeats: int = 20, warmup: int = 3,
                    resolution: int | None = None) -> float:
    """Median milliseconds of one forward pass at batch 1 (channels_last, fp32; weights don't matter)."""
    device = torch.device(device)
    size = resolution or spec.resolution
    model = build_model(spec).eval().to(device).to(memory_format=torch.channels_last)  # torch's stubs: no 2-key .to
    x = torch.randn(1, spec.in_channels, size, size, device=device).contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)
