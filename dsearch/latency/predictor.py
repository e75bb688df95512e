"""Predicted and measured latency of architectures on a target.

The prediction is FBNet's and MnasNet's lookup table: the sum of the stem's, every block's and the head's
latency, each measured alone at its exact shape (dsearch.latency.parts), plus an overhead fitted on the networks
measured whole on the same table. Timed alone, a part pays costs a whole network pays once or hides (the
runtime's cost of one call, cold caches for its input and weights), in proportion to its own size as measured:
on ONNX Runtime the sum of the parts lies 8-18% above the whole network, steadily across networks. So the
overhead is a factor, fitted as the median over the measured networks of measured / sum of parts (usually
below 1), and the prediction is that factor times the sum. Until a table holds `calibration` whole networks,
the first networks predicted are measured whole as well.

A measurement (`measure`) times the whole network as a user runs it: for ort-cpu, the ONNX program
`dsearch export --onnx` writes.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DsearchError, check_interrupted
from ..model.archspec import ArchSpec, fingerprint
from ..model.builder import build_model
from ..model.programs import SizeRange, export_sizes
from .parts import Part, network_parts
from .protocol import DEFAULT_PROTOCOL, Measurement, Protocol, measure_runner
from .table import LatencyTable
from .targets import RUNTIMES, Target, check_available

CALIBRATION = 3  # whole networks measured on a table before its overhead is trusted


@dataclass(frozen=True)
class Prediction:
    """A predicted latency: `ms` = sum of the parts + the fitted overhead ((factor - 1) x the sum), and how many
    parts were measured now."""

    ms: float
    parts_ms: float
    overhead_ms: float
    measured_now: int


def time_module(module: torch.nn.Module, target: Target, channels: int, size: int, protocol: Protocol,
                sizes: SizeRange | None = None) -> Measurement:
    """One module on `target` at a (batch, channels, size, size) input; `sizes`: a whole network, timed as the
    program exported for those image sizes."""
    check_interrupted()
    example = torch.randn(target.batch, channels, size, size, generator=torch.Generator().manual_seed(0))
    with RUNTIMES[target.runtime].prepare(module, example, target.threads, sizes) as (run, sync):
        return measure_runner(run, protocol, sync)


class LatencyModel:
    """Predicts and measures latencies of architectures on one table's target."""

    def __init__(self, table: LatencyTable, protocol: Protocol = DEFAULT_PROTOCOL, calibration: int = CALIBRATION,
                 log: Callable[[str], None] | None = None) -> None:
        self.table, self.protocol, self.calibration, self.log = table, protocol, calibration, log
        self.target = table.target
        self._local = table.local()

    @classmethod
    def for_target(cls, target: Target, folder: Path | None = None, table: Path | None = None,
                   protocol: Protocol = DEFAULT_PROTOCOL, calibration: int = CALIBRATION,
                   log: Callable[[str], None] | None = None) -> LatencyModel:
        """The model of `target` on this machine's table in `folder`, or on the table file `table` (copied)."""
        if table is not None:
            opened = LatencyTable.open(table)
            if opened.target.name != target.name:
                raise DsearchError(f"latency table {table} is for {opened.target.short}, not {target.short}; pass "
                                   f"--latency-target {opened.target.short} or a table of {target.short}")
            return cls(opened, protocol, calibration, log)
        check_available(target)
        return cls(LatencyTable.for_target(target, folder, protocol), protocol, calibration, log)

    @property
    def local(self) -> bool:
        """Whether missing parts and whole networks can be measured here (the table is this machine's)."""
        return self._local

    def size(self, spec: ArchSpec) -> int:
        return self.target.size(spec.resolution)

    def parts(self, spec: ArchSpec) -> list[Part]:
        return network_parts(spec, self.size(spec))

    def missing(self, spec: ArchSpec) -> list[Part]:
        self.table.refresh()
        return [p for p in self.parts(spec) if p.key not in self.table.parts]

    def _measure_parts(self, parts: list[Part]) -> None:
        if not parts:
            return
        if not self._local:
            raise DsearchError(
                f"the latency table {self.table.path} ({self.table.describe()}) lacks {len(parts)} part(s) of this "
                "architecture and was made on another machine or library versions; run `dsearch latency table` "
                "with this space on that machine and copy the table again")
        seen: set[str] = set()
        for part in parts:
            if part.key in seen:
                continue
            seen.add(part.key)
            module = part.build()
            self.table.add_part(part.key, time_module(module, self.target, part.channels, part.size, self.protocol))

    def parts_ms(self, spec: ArchSpec) -> tuple[float, int]:
        """Sum of the parts' table latencies (measuring the missing ones), and how many were measured now."""
        missing = self.missing(spec)
        self._measure_parts(missing)
        return sum(self.table.parts[p.key].median_ms for p in self.parts(spec)), len({p.key for p in missing})

    def scale(self, leave_out: str | None = None) -> float:
        """The fitted factor from the sum of parts to the whole network: the median over the table's whole
        networks (whose parts it holds, but `leave_out`) of measured / sum of parts; 1 before any was measured."""
        ratios = []
        for key, (arch, size, m) in self.table.networks.items():
            if key == leave_out:
                continue
            parts = network_parts(ArchSpec.from_dict(arch), size)
            if all(p.key in self.table.parts for p in parts):
                total = sum(self.table.parts[p.key].median_ms for p in parts)
                if total > 0:
                    ratios.append(m.median_ms / total)
        return statistics.median(ratios) if ratios else 1.0

    def network_key(self, spec: ArchSpec) -> str:
        """The table's key of `spec` measured whole at the target's size."""
        return f"{fingerprint(spec)}@{self.size(spec)}"

    def predict(self, spec: ArchSpec, leave_out: bool = False) -> Prediction:
        """The predicted latency of `spec` on the target (measuring parts the table lacks); `leave_out`: fit the
        overhead without this network's own whole measurement, so that comparing the two is a fair test."""
        total, measured = self.parts_ms(spec)
        if self._local and len(self.table.networks) < self.calibration:
            m = self.measure(spec)  # the first networks fit the overhead
            if self.log is not None:
                self.log(f"latency: measured {spec.summary()} whole on {self.target.short} for the predictor's fit "
                         f"({len(self.table.networks)} of {self.calibration}): {m.describe()}")
        overhead = (self.scale(self.network_key(spec) if leave_out else None) - 1) * total
        return Prediction(round(total + overhead, 4), round(total, 4), round(overhead, 4), measured)

    def predict_ms(self, spec: ArchSpec) -> float:
        return self.predict(spec).ms

    def measure(self, spec: ArchSpec, again: bool = False) -> Measurement:
        """The whole network `spec` measured end to end on the target (the table's figure unless `again`)."""
        key = self.network_key(spec)
        self.table.refresh()
        if key in self.table.networks and not again:
            return self.table.networks[key][2]
        if not self._local:
            raise DsearchError(f"{spec.summary()} was not measured whole on the table's machine "
                               f"({self.table.describe()}); measure it there with `dsearch latency`")
        size = self.size(spec)
        m = time_module(build_model(spec, standalone=True), self.target, spec.in_channels, size, self.protocol,
                        export_sizes(spec, size))
        self.table.add_network(key, spec.to_dict(), size, m)
        return m
