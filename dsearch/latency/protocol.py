"""One measurement protocol for every latency dsearch reports, and the machine it was measured on.

A measurement warms the runner up, then times repeated runs and keeps the median with its spread (p90 and
the interquartile range). A spread that says the machine was busy (p90 more than `max_spread` above the
median) makes it measure again, up to `attempts` times; the quietest attempt is kept, and flagged `noisy`
when even that one was busy. Thread settings are the target's (dsearch.latency.targets), pinned while timing,
and timing waits for no dsearch training to run on the machine (dsearch.latency.cpu_lock).
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .cpu_lock import timing_exclusive


@dataclass(frozen=True)
class Protocol:
    """How one latency is measured: warm-up, timed repeats, the spread that counts as busy and the re-tries."""

    warmup_runs: int = 3
    warmup_s: float = 0.05  # and at least this long, so that caches and thread pools settle
    min_repeats: int = 10
    max_repeats: int = 200
    timed_s: float = 0.25  # repeats are chosen so that the timed runs take about this long
    max_spread: float = 0.25  # (p90 - median) / median above this: the machine was busy
    attempts: int = 3


@dataclass(frozen=True)
class Measurement:
    """Milliseconds of one run: median and spread over `repeats` timed runs (`noisy`: the spread stayed high)."""

    median_ms: float
    p90_ms: float
    iqr_ms: float
    repeats: int
    noisy: bool

    @property
    def spread(self) -> float:
        """(p90 - median) / median: how far the slow runs lie above the typical one."""
        return (self.p90_ms - self.median_ms) / self.median_ms if self.median_ms > 0 else 0.0

    def describe(self) -> str:
        flag = " (noisy: the machine was busy)" if self.noisy else ""
        return f"{self.median_ms:.3f} ms (p90 {self.p90_ms:.3f}, IQR {self.iqr_ms:.3f}, {self.repeats} runs){flag}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of an ascending list (numpy's default method)."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarise(seconds: list[float], max_spread: float) -> Measurement:
    """The Measurement of timed runs given in seconds."""
    ordered = sorted(seconds)
    median = statistics.median(ordered) * 1000
    p90 = _quantile(ordered, 0.9) * 1000
    iqr = (_quantile(ordered, 0.75) - _quantile(ordered, 0.25)) * 1000
    noisy = median > 0 and (p90 - median) / median > max_spread
    return Measurement(round(median, 5), round(p90, 5), round(iqr, 5), len(ordered), noisy)


def _attempt(run: Callable[[], None], protocol: Protocol, sync: Callable[[], None]) -> Measurement:
    start = time.perf_counter()
    runs = 0
    while runs < protocol.warmup_runs or time.perf_counter() - start < protocol.warmup_s:
        run()
        runs += 1
    sync()
    one = (time.perf_counter() - start) / runs
    repeats = min(protocol.max_repeats, max(protocol.min_repeats, int(protocol.timed_s / max(one, 1e-6))))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t)
    return summarise(times, protocol.max_spread)


DEFAULT_PROTOCOL = Protocol()


def measure_runner(run: Callable[[], None], protocol: Protocol = DEFAULT_PROTOCOL,
                   sync: Callable[[], None] = lambda: None) -> Measurement:
    """Time `run` (one inference) by `protocol`, with no dsearch training on the machine meanwhile.

    `sync` waits for asynchronous work (a CUDA stream) before a clock is read.
    """
    best: Measurement | None = None
    with timing_exclusive():
        for _ in range(protocol.attempts):
            m = _attempt(run, protocol, sync)
            if best is None or m.spread < best.spread:
                best = m
            if not m.noisy:
                break
    assert best is not None  # attempts >= 1 (checked by check_protocol)
    return best


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What a latency was measured on: CPU model, cores, OS and architecture, Python."""
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "system": platform.system(), "arch": platform.machine(),
            "python": platform.python_version()}
