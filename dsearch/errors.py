"""The error type the CLI turns into one clear line and a non-zero exit, SIGTERM as an interrupt, a run's time
limit (`--timeout`) as a deadline that stops the training in progress, and what a failed write says about the
disk it failed on."""

import errno
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


class DsearchError(Exception):
    """Bad input or configuration; the message says what was wrong and what to do."""


# What a write failed on, by errno and by SQLite's own codes (SQLite reports through its driver, not errno):
# SQLITE_FULL is a full disk; SQLITE_IOERR_SHMSIZE is a WAL database's -shm file that could not grow, which SQLite
# documents as a sign of a full disk, and what opening a WAL database on a full disk meets first.
_WRITE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "read-only media"}
_SQLITE_CODES = {"SQLITE_FULL": "no space left on device", "SQLITE_IOERR_SHMSIZE": "no space left on device",
                 "SQLITE_READONLY": "read-only media"}
_SQLITE_WORDS = {"database or disk is full": "no space left on device",  # e.g. wrapped by SQLAlchemy: its text only
                 "attempt to write a readonly database": "read-only media"}


def write_problem(err: BaseException | None) -> str | None:
    """'no space left on device', 'disk quota exceeded' or 'read-only media' when `err` or an exception it was
    raised from or during (Optuna wraps SQLAlchemy, which wraps sqlite3) is a write the disk refused; else None."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _WRITE_ERRNOS:
            return _WRITE_ERRNOS[err.errno]
        code = getattr(err, "sqlite_errorname", None)  # sqlite3's error, which SQLAlchemy's is raised from
        if code in _SQLITE_CODES:
            return _SQLITE_CODES[code]
        text = str(err).lower()
        for words, problem in _SQLITE_WORDS.items():
            if words in text:
                return problem
        err = err.__cause__ or err.__context__
    return None


def clip(text: str, limit: int = 80) -> str:
    """`text` on one line and at most `limit` characters: error lines quote what a user's file holds, which may be
    a megabyte of anything."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def shown(value: Any) -> str:
    """`repr(value)` for an error line: one line, at most 80 characters."""
    return clip(repr(value))


class Terminated(KeyboardInterrupt):
    """SIGTERM (sent by `timeout`, `kill`, systemd, batch schedulers), handled like Ctrl-C: the running trial is
    marked failed with this reason, every finished one is kept, and the command exits 143 (128 + SIGTERM)."""

    def __str__(self) -> str:
        return "terminated (SIGTERM)"


_received: list[int] = []  # the SIGTERMs this process received


def raise_terminated(signum: int, frame: object) -> None:
    """A SIGTERM handler: raise Terminated in the main thread, where the work runs."""
    _received.append(signum)
    raise Terminated()


def terminated() -> bool:
    """Whether this process received SIGTERM (a command that caught the interrupt itself exits 143, not 130)."""
    return bool(_received)


def on_sigterm_raise() -> None:
    """Turn SIGTERM into Terminated in this process (call from the main thread).

    Where the signal lands in code that cannot raise (a garbage-collection callback), Python reports the
    exception as unraisable and goes on: that report is dropped, and the trainer raises Terminated again at its
    next step (see `terminated`).
    """
    import sys

    default = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, Terminated):
            default(unraisable)

    sys.unraisablehook = hook
    signal.signal(signal.SIGTERM, raise_terminated)


_pending: list[KeyboardInterrupt] = []  # signals that arrived inside `deferred_interrupts`, not raised yet
_seen: dict[int, int] = {}  # how many of each signal arrived there


def _defer(signum: int, frame: object) -> None:
    """Keep the interrupt for the next `check_interrupted`; the same signal twice interrupts at once."""
    _seen[signum] = _seen.get(signum, 0) + 1
    err: KeyboardInterrupt = KeyboardInterrupt()
    if signum == signal.SIGTERM:
        _received.append(signum)
        err = Terminated()
    if _seen[signum] > 1:
        _pending.clear()
        raise err
    if not _pending:
        _pending.append(err)


def check_interrupted() -> None:
    """Raise the Ctrl-C or SIGTERM that `deferred_interrupts` kept, if any (the training loop calls it every step)."""
    if _pending:
        raise _pending.pop()


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Inside, Ctrl-C and SIGTERM interrupt only where `check_interrupted` is called, never inside a storage
    write: an interrupt raised in the middle of Optuna's write of a trial's state leaves the trial RUNNING and
    Optuna asserting ("Should not reach."). Where it is left with an interrupt still kept, that is raised.
    Outside the main thread (which alone receives signals) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    _pending.clear()
    _seen.clear()
    for s in before:
        signal.signal(s, _defer)
    try:
        yield
    except BaseException:
        _pending.clear()  # leaving by an exception already: a kept interrupt must not fire later, elsewhere
        raise
    finally:
        for s, handler in before.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        _seen.clear()
    check_interrupted()


@dataclass(frozen=True)
class Deadline:
    """The moment a command must stop working (`time.time()` seconds: one clock for every worker process of a
    machine) and what set it, as the user wrote it ("--timeout 5 s")."""

    at: float
    what: str

    @classmethod
    def after(cls, seconds: float, flag: str = "--timeout") -> "Deadline":
        return cls(time.time() + seconds, f"{flag} {seconds:g} s")

    def passed(self) -> bool:
        return time.time() >= self.at

    def left(self) -> float:
        """Seconds left (0 once passed)."""
        return max(0.0, self.at - time.time())

    def check(self, doing: str) -> None:
        """Raise TimedOut saying what it stopped (`doing`: "before training", "after 3 of 10 epochs") once passed."""
        if self.passed():
            raise TimedOut(f"stopped by {self.what} {doing}")


class TimedOut(Exception):
    """The command's time limit passed: the work in progress stopped (a search trial is kept as failed with this
    reason, a finals training is not kept and resumes on the next run). Not a DsearchError: nothing was wrong."""
