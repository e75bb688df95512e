"""The error type the CLI turns into one clear line and a non-zero exit, and SIGTERM as an interrupt."""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class DsearchError(Exception):
    """Bad input or configuration; the message says what was wrong and what to do."""


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
