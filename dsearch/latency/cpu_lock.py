"""Timing and training never share the machine: a readers-writer lock between processes, on two lock files.

Trainings hold the lock shared (any number at once); a latency measurement holds it exclusively, so it starts
only once every running training step has ended and no training starts until it is done. A measurement that
waits closes a gate first, so that trainings starting one after another cannot keep it waiting for ever
(writer preference). The lock files live in the temporary folder (DSEARCH_LOCK_DIR overrides it), one pair per
user, so every dsearch process of the machine takes part, whichever study it works on.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

_held = threading.local()  # per thread: how deeply this thread holds the exclusive lock (it is re-entrant)


def lock_paths() -> tuple[Path, Path]:
    """(gate, lock) files of this machine's user."""
    folder = Path(os.environ.get("DSEARCH_LOCK_DIR") or tempfile.gettempdir())
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return folder / f"dsearch-{uid}-cpu-gate.lock", folder / f"dsearch-{uid}-cpu.lock"


@contextlib.contextmanager
def _locked(path: Path, mode: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def timing_exclusive() -> Iterator[None]:
    """Hold the machine for a measurement: wait for running trainings, keep new ones waiting."""
    depth = getattr(_held, "depth", 0)
    if depth:
        _held.depth = depth + 1
        try:
            yield
        finally:
            _held.depth = depth
        return
    gate, lock = lock_paths()
    with _locked(gate, fcntl.LOCK_EX), _locked(lock, fcntl.LOCK_EX):
        _held.depth = 1
        try:
            yield
        finally:
            _held.depth = 0


@contextlib.contextmanager
def training_shared() -> Iterator[None]:
    """Hold the machine for training alongside other trainings; waits while a measurement runs or waits."""
    if getattr(_held, "depth", 0):  # this thread is timing: it cannot train meanwhile, but must not deadlock
        yield
        return
    gate, lock = lock_paths()
    with _locked(gate, fcntl.LOCK_SH):
        pass  # passes once no measurement holds or waits for the gate
    with _locked(lock, fcntl.LOCK_SH):
        yield
