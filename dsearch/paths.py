"""Where a study lives: the study-name rule, the default storage, the study folder, artifacts; atomic writes
and what a refused write says.

A study name is a name, never a path: 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-',
starting with a letter or a digit. So `studies/<name>/` can never point outside `studies/`.
A local storage (an SQLite file or a journal file) keeps its trained weights in `artifacts/`
beside it, found from the storage's own location, so a copied or moved study folder is
self-contained. Only a database server's studies keep their artifact folder on this machine,
under `studies/<name>/artifacts/`.
"""
from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DsearchError, write_problem

STUDY_NAME_RULE = "1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or a digit"
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
STUDIES_ROOT = Path("studies")
SQLITE_PREFIX = "sqlite:///"
# Space files, ArchSpec JSON and metrics files are a few kilobytes: a larger one is the wrong file (or a bomb).
MAX_USER_FILE_BYTES = 1 << 20


def check_study_name(name: str) -> str:
    """`name` when it follows the study-name rule; otherwise one line saying the rule."""
    if not _STUDY_NAME.fullmatch(name):
        raise DsearchError(f"study name {name!r} is not allowed: use {STUDY_NAME_RULE} (e.g. m300)")
    return name


def study_folder(name: str, root: str | Path = STUDIES_ROOT) -> Path:
    """studies/<name>: the default home of a study's storage, artifacts and dashboard."""
    return Path(root) / check_study_name(name)


def default_storage(name: str, root: str | Path = STUDIES_ROOT) -> str:
    """SQLite file under studies/<name>/ (optuna-dashboard opens it; workers share it with heartbeats)."""
    return f"{SQLITE_PREFIX}{study_folder(name, root) / 'study.db'}"


def local_storage_file(url: str) -> Path | None:
    """The file behind a local storage (sqlite:///FILE or a journal file path); None for a database server."""
    if url.startswith(SQLITE_PREFIX):
        return Path(url.removeprefix(SQLITE_PREFIX))
    return None if "://" in url else Path(url)


def artifact_folder(study_name: str, url: str, recorded: str | None = None) -> Path:
    """A study's artifact folder: beside a local storage file; for a server, the recorded one or studies/<name>/."""
    local = local_storage_file(url)
    if local is not None:
        return (local.parent / "artifacts").resolve()
    if recorded:
        return Path(recorded)
    return (STUDIES_ROOT / file_part(study_name) / "artifacts").resolve()


def file_part(name: str) -> str:
    """A name as one safe file-name part (studies made by other tools in a server storage may be named anyhow)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip(".")
    return safe or "study"


def write_atomic(path: Path, write: Callable[[Path], None], option: str | None = None) -> None:
    """Write `path` whole or not at all: `write` fills a temporary file beside it, which then replaces it.

    `option` names the flag that chose `path`: a disk that refuses the write (full, read-only) is then one line
    naming it."""
    if path.is_dir():
        raise DsearchError(f"{path} is a folder; give a file name")
    with writing(path, option):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        try:
            write(tmp)
            _fsync(tmp)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all (see write_files_atomic)."""
    write_files_atomic(path.parent, {path.name: data})


def write_files_atomic(folder: Path, files: dict[str, bytes]) -> None:
    """Write each name -> bytes of `files` into `folder` whole or not at all: every file goes to a temporary file
    in `folder` with checked writes and an fsync first, and only once all are there are they renamed into place.
    On any failure the temporary files are removed and the OSError raised; the files already in place are kept.

    torch.save straight into a file on a full disk can end without an error and leave a truncated zip; bytes
    serialized in memory first and written here either all reach the disk or raise."""
    temporary: dict[str, str] = {}
    try:
        for name, data in files.items():
            fd, temporary[name] = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
            try:
                view = memoryview(data)
                while view:  # os.write may write less than asked; a full disk raises ENOSPC
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(temporary[name], 0o644)  # mkstemp makes it private; these files are meant to be shared
        for name in files:
            os.replace(temporary.pop(name), folder / name)
    finally:
        for name in temporary.values():
            Path(name).unlink(missing_ok=True)
    _fsync_folder(folder)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable; best effort (not every filesystem opens folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def refused_write(what: str, problem: str, option: str | None) -> str:
    """One line for a write the disk refused: what, why, and the flag that puts it elsewhere."""
    elsewhere = f"give {option} elsewhere" if option else "write it elsewhere"
    fix = f"free space or {elsewhere}" if problem in ("no space left on device", "disk quota exceeded") else elsewhere
    why = "it is on read-only media" if problem == "read-only media" else problem
    return f"cannot write {what}: {why}; {fix}"


@contextmanager
def writing(path: Path, option: str | None) -> Iterator[None]:
    """Inside, an OSError from a disk that refused the write (full, over quota, read-only) becomes one line naming
    `path` and `option`, the flag that puts it elsewhere."""
    try:
        yield
    except OSError as err:
        problem = write_problem(err) or ("permission denied" if isinstance(err, PermissionError) else None)
        if problem is None:
            raise
        raise DsearchError(refused_write(str(path), problem, option)) from None


def on_read_only_media(path: Path) -> bool:
    """Whether `path` (or, where it does not exist yet, the nearest folder above it that does) is on a filesystem
    mounted read-only."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def read_user_text(path: Path, what: str) -> str:
    """The text of a small file the user gave (`what`: "a space file", ...); any problem is one line naming it.

    At most MAX_USER_FILE_BYTES are read, whatever the file claims to be (a FIFO or /dev/zero never ends);
    a UTF-8 byte-order mark is dropped.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_USER_FILE_BYTES + 1)
    except OSError as err:
        raise DsearchError(f"{path}: cannot read {what}: {err.strerror or type(err).__name__}") from None
    if len(data) > MAX_USER_FILE_BYTES:
        raise DsearchError(f"{path}: larger than {MAX_USER_FILE_BYTES >> 20} MiB, too large for {what} (a few "
                           "kilobytes); is it the right file?")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DsearchError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
