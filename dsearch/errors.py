"""The error type the CLI turns into one clear line and a non-zero exit, and SIGTERM as an interrupt."""

from typing import Any


class DsearchError(Exception):
    """Bad input or configuration; the message says what was wrong and what to do."""


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
    import signal
    import sys

    default = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, Terminated):
            default(unraisable)

    sys.unraisablehook = hook
    signal.signal(signal.SIGTERM, raise_terminated)
