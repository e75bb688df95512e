"""Optuna storages: an RDB (SQLite, PostgreSQL, MySQL) with heartbeats or a journal file, and the studies in them.

On an RDB storage every worker beats a heartbeat, so the trial of a killed worker is marked failed after
GRACE_HEARTBEATS missed beats. A local SQLite file runs in write-ahead-log mode.

Commands that only read a study open it read-only, so that a study on read-only media (a mounted archive, a
read-only bind mount) can be shown, drawn and exported; a storage that would be written on read-only media, or
whose disk is full, is one line. A journal file whose last record a crash cut short is mended before it is
written again: Optuna skips a torn last line, but the next record appended to it would be glued onto it and
make the file unreadable from there on.
"""
from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import optuna
import optuna.storages.journal  # a submodule: `import optuna` alone does not declare it
import sqlalchemy

from ..errors import DsearchError, write_problem
from ..paths import default_storage, local_storage_file, on_read_only_media, write_bytes_atomic
from .record import UnreadableJSON

HEARTBEAT_S = 20
STORAGE_ATTEMPTS = 4
GRACE_HEARTBEATS = 3  # a trial whose worker missed 3 heartbeats (60 s by default) is marked failed
HEARTBEAT_ENV = "DSEARCH_HEARTBEAT_S"  # seconds between heartbeats; tests shorten it to see a killed worker sooner


def heartbeat_seconds() -> int:
    """Seconds between a worker's heartbeats on an RDB storage: $DSEARCH_HEARTBEAT_S, else 20."""
    text = os.environ.get(HEARTBEAT_ENV, "")
    if not text:
        return HEARTBEAT_S
    if not text.isdigit() or int(text) < 1:
        raise DsearchError(f"{HEARTBEAT_ENV}={text!r} must be a whole number of seconds >= 1")
    return int(text)


class _RDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, with a heartbeat that lets a storage that cannot write (a full disk) be reported once.

    Optuna beats from a thread of its own: a failed beat there would print a thread's traceback beside the
    command's own line. A missed beat is harmless (the trial's next write from the main thread meets the same
    problem and ends the command in one line), so it is dropped.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as err:
            if write_problem(err) is None:
                raise


def storage_write_error(url: str, problem: str) -> DsearchError:
    """The one line for a storage whose disk refused a write ('no space left on device', 'read-only media', ...)."""
    if problem == "read-only media":
        return DsearchError(f"the storage {url} is on read-only media; copy the study or give --storage elsewhere")
    return DsearchError(f"the storage {url} could not write: {problem}; free space or give --storage elsewhere")


@contextmanager
def storage_writes(url: str) -> Iterator[None]:
    """Inside, an error of a storage whose disk refused a write becomes its one line, however deep Optuna raised
    it (a failed commit inside Optuna's own trial bookkeeping ends as "AssertionError: Should not reach.", raised
    while handling the storage's error)."""
    try:
        yield
    except DsearchError:
        raise
    except Exception as err:
        problem = write_problem(err)
        if problem is None:
            raise
        raise storage_write_error(url, problem) from None


def open_storage(url: str, read_only: bool = False) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`: an RDB URL (sqlite/postgresql/mysql) with heartbeats, or a journal file path.

    `read_only`: for commands that only read (show, dashboard, export): a local SQLite file is opened read-only
    and nothing is created, mended or beaten, so that read-only media work and a reader can never write.
    """
    if read_only:
        return _open_read_only(url)
    local = local_storage_file(url)
    if local is not None:
        _check_storage_file(local, url)
    if "://" in url:
        engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        heartbeat = heartbeat_seconds()
        # Workers starting together on an empty database race to create Optuna's tables: retry.
        for attempt in range(STORAGE_ATTEMPTS):
            try:
                with warnings.catch_warnings():
                    # Heartbeats are "experimental" in Optuna 5 but are what marks a killed worker's trial failed.
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    storage = _RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                                          grace_period=GRACE_HEARTBEATS * heartbeat)
                if url.startswith("sqlite:///"):
                    _sqlite_write_ahead_log(storage)
                return storage
            except Exception as err:  # noqa: BLE001 - any driver/connection error becomes one line
                problem = write_problem(err)
                if problem is not None:  # a full disk stays full: no retry
                    raise storage_write_error(url, problem) from None
                if "import" in str(err).lower() or attempt == STORAGE_ATTEMPTS - 1:
                    raise DsearchError(f"cannot open storage {url!r}: {str(err).splitlines()[0]}") from None
                time.sleep(0.5 + attempt)
    cut_torn_record(Path(url))
    try:
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
    except OSError as err:
        raise DsearchError(f"cannot open journal storage {url}: {err.strerror or err}") from None


def _open_read_only(url: str) -> optuna.storages.BaseStorage:
    """`url`'s storage for reading only (see open_storage)."""
    local = local_storage_file(url)
    try:
        if local is None:  # a database server: read as usual, without heartbeats (this process runs no trial)
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, skip_table_creation=True)
        if "://" not in url:  # a journal file: Optuna only reads it until something is appended
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
        uri = sqlite_read_only_uri(local)
        # The URL stays the plain one (the study's artifacts are found from it); the connection is read-only.
        engine_kwargs = {"creator": lambda: sqlite3.connect(uri, uri=True, timeout=60, check_same_thread=False)}
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, skip_table_creation=True)
    except Exception as err:  # noqa: BLE001 - any driver/connection error becomes one line
        raise DsearchError(f"cannot open storage {url!r} to read it: {str(err).splitlines()[0]}") from None


def sqlite_read_only_uri(path: Path) -> str:
    """An SQLite URI that opens `path` read-only.

    dsearch's SQLite files are in WAL mode, where even a reader needs the `-shm` file beside the database: it
    makes one if the folder can be written (mode=ro), or uses the ones left there. In a folder that cannot be
    written and without them (read-only media, where no process can be writing the study either), the file is
    opened as immutable, which needs neither.
    """
    shared = Path(f"{path}-shm").exists() and Path(f"{path}-wal").exists()
    flags = "mode=ro" if os.access(path.parent, os.W_OK) or shared else "mode=ro&immutable=1"
    return f"file:{quote(str(path.absolute()))}?{flags}"


def _check_storage_file(path: Path, url: str) -> None:
    """A storage file must be a file (or not exist yet) in a folder that can be made, on writable media; one line
    otherwise."""
    if path.is_dir():
        example = path / ("study.db" if "://" in url else "journal.log")
        raise DsearchError(f"storage {url} is a folder; give a file path (e.g. {example})")
    if on_read_only_media(path):
        raise storage_write_error(url, "read-only media")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DsearchError(f"cannot make the folder of storage {url}: {err.strerror or err}") from None


def has_heartbeats(study: optuna.Study) -> bool:
    """Whether the study's storage beats heartbeats (RDB storages), so that a dead worker's trial is marked failed."""
    interval = getattr(getattr(study, "_storage", None), "get_heartbeat_interval", None)  # Optuna's BaseHeartbeat
    return interval is not None and interval() is not None


def fail_stale_trials(study: optuna.Study) -> None:
    """Mark failed the running trials whose worker missed GRACE_HEARTBEATS heartbeats (a no-op without heartbeats)."""
    with warnings.catch_warnings():  # Optuna calls it experimental; dsearch's search relies on it already
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def cut_torn_record(path: Path) -> Path | None:
    """Mend a journal file whose last record a crash cut short; the side file the torn bytes went to, if any.

    Every record of an Optuna journal is one line. A writer killed mid-write leaves a last line without its
    newline: Optuna skips it when reading, but appends the next record right after it, and that glued line makes
    the rest of the file unreadable. So before the journal is written, torn bytes after the last newline are
    moved to `<journal>.torn-<unix time>` (kept, never just dropped) and cut off, under the journal's own lock
    (a live writer's record is whole once it lets the lock go), and this is said in one line.
    """
    if not path.is_file():
        return None
    lock = optuna.storages.journal.JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0 or _byte_at(f, size - 1) == b"\n":
                return None
            keep = _after_last_newline(f, size)
            f.seek(keep)
            torn = f.read()
            side = _free_name(path.with_name(f"{path.name}.torn-{int(time.time())}"))
            write_bytes_atomic(side, torn)
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise DsearchError(f"journal {path} ends in a torn record that could not be cut off "
                           f"({err.strerror or err}); copy it somewhere writable and run again") from None
    finally:
        lock.release()
    print(f"dsearch: journal {path} ended in a record cut short (a crash mid-write): moved its {len(torn)} bytes to "
          f"{side} and cut them off, so that the records appended next stay readable", file=sys.stderr)
    return side


def _byte_at(f: Any, offset: int) -> bytes:
    f.seek(offset)
    return f.read(1)


def _after_last_newline(f: Any, size: int, chunk: int = 1 << 16) -> int:
    """The offset just after the last newline of the file (0 when it has none), read backwards in chunks."""
    end = size
    while end > 0:
        start = max(0, end - chunk)
        f.seek(start)
        found = f.read(end - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def _free_name(path: Path) -> Path:
    """`path`, or `path` with a number appended when it exists (two mends within one second)."""
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.name}.{n}"), n + 1
    return candidate


def storage_url_of(study: optuna.Study) -> str:
    """The URL (RDB) or file path (journal) of an open study's storage, as `open_storage` takes it."""
    storage = getattr(study, "_storage", None)
    storage = getattr(storage, "_backend", storage)  # Optuna wraps RDB storages in a cache
    if isinstance(storage, optuna.storages.RDBStorage):
        return str(storage.url)
    backend = getattr(storage, "_backend", None)
    if isinstance(backend, optuna.storages.journal.JournalFileBackend):
        return str(backend._file_path)
    raise DsearchError("cannot tell where this study is stored; pass storage=URL")


def _sqlite_write_ahead_log(storage: optuna.storages.RDBStorage) -> None:
    """WAL journal with synchronous=NORMAL on every connection: a commit costs ~4x less than in SQLite's default.

    Every trial writes tens of small transactions (each parameter and attribute), so this is what keeps a
    rejected sample cheap. A killed process loses nothing committed; only a power cut can lose the last commits.
    """
    def on_connect(connection: Any, _record: Any) -> None:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
        except Exception:  # noqa: BLE001 - e.g. locked by a worker in another journal mode: keep the defaults
            pass

    sqlalchemy.event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened while creating the tables predate the listener


def open_study(study_name: str, storage_url: str | None = None,
               read_only: bool = False) -> tuple[optuna.Study, str]:
    """An existing study (running or finished) and its storage URL; never creates one.

    `read_only`: the command only reads the study (see open_storage); it then works on read-only media."""
    url = storage_url or default_storage(study_name)
    local = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None if "://" in url else url
    if local is not None and not Path(local).is_file():
        hint = "" if storage_url else " (the default storage); pass --storage URL if it lives elsewhere"
        raise DsearchError(f"no study '{study_name}': {url} does not exist{hint}")
    storage = open_storage(url, read_only=read_only)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = ", ".join(optuna.get_all_study_names(storage)) or "none"
        raise DsearchError(f"no study '{study_name}' in {url} (studies there: {names})") from None
    _tolerate_unreadable_attrs(study)
    return study, url


def _tolerate_unreadable_attrs(study: optuna.Study) -> None:
    """Read a study whose database holds a user attr that is not JSON (edited by hand, half-written): Optuna would
    fail on every read of `study.user_attrs`; here that attr reads as its text (record.UnreadableJSON), which the
    record's own reader names as damaged, and every other record reads as usual."""
    try:
        study.user_attrs  # noqa: B018 - the read is the test
        return
    except ValueError:  # json.JSONDecodeError in Optuna's RDB storage
        pass
    storage: Any = study._storage
    engine = getattr(getattr(storage, "_backend", storage), "engine", None)
    if engine is None:
        raise DsearchError(f"study '{study.study_name}': a stored study record is not valid JSON; restore the "
                           "study's storage from a copy") from None
    query = sqlalchemy.text("SELECT key, value_json FROM study_user_attributes WHERE study_id = :study")

    def read(study_id: int) -> dict[str, Any]:
        with engine.connect() as connection:
            rows = connection.execute(query, {"study": study_id}).all()
        attrs: dict[str, Any] = {}
        for key, raw in rows:
            try:
                attrs[key] = json.loads(raw)
            except ValueError:
                attrs[key] = UnreadableJSON(raw)
        return attrs

    storage.get_study_user_attrs = read  # this study object only; writes go through Optuna as before
