"""Latency on the runtime a model ships with: targets, one measurement protocol, per-part lookup tables on disk
and the predictor built on them (docs/latency.md)."""
from .predictor import LatencyModel, Prediction
from .protocol import Measurement, Protocol, machine, measure_runner
from .table import LatencyTable, default_folder
from .targets import RUNTIMES, Runtime, Target, check_available, parse_target, register_runtime

__all__ = [
    "RUNTIMES", "LatencyModel", "LatencyTable", "Measurement", "Prediction", "Protocol", "Runtime", "Target",
    "check_available", "default_folder", "machine", "measure_runner", "parse_target", "register_runtime",
]
