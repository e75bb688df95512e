"""Storage faults: a full disk (under the storage, under the kept weights), read-only media, and a journal file whose
last record a crash cut short.

The real faults need `unshare -m` and `mount` (a small tmpfs, a read-only bind mount): those tests skip where that
is not permitted. Injected faults (a write that raises ENOSPC half way, an SQLite "database or disk is full") cover
the same paths everywhere.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import types
from functools import cache
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import torch
from conftest import TINY_SPACE, dsearch, one_line_error
from optuna.trial import TrialState

from dsearch import cli, paths
from dsearch.search.weights import NOT_KEPT_ATTR

RUN = ("--budget-mflops", "0.3", "--sampler", "random", "--epochs", "1", "--batch-size", "64", "--train-subset", "128",
       "--quiet", "--no-finals")
CODE = str(Path(cli.__file__).resolve().parents[1])  # the code under test, not whichever dsearch is installed
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [CODE, os.environ.get("PYTHONPATH")])),
       "OMP_NUM_THREADS": "1"}
DSEARCH = f"{shlex.quote(sys.executable)} -m dsearch"


@cache
def mounts_allowed() -> bool:
    """Whether this process may make a private mount namespace with a tmpfs in it (root, or a permissive sandbox)."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"dsearch-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        done = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
                              capture_output=True, timeout=30)
        return done.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
    finally:
        probe.rmdir()


needs_mounts = pytest.mark.skipif("not mounts_allowed()", reason="needs `unshare -m` and mount (root or a sandbox "
                                                                  "that allows private mounts)")


def in_namespace(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """`script` (sh) in a private mount namespace: what it mounts vanishes when it ends."""
    return subprocess.run(["unshare", "-m", "sh", "-c", textwrap.dedent(script)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600)


def artifact_problems(folder: Path, study: optuna.Study) -> list[str]:
    """Everything half-written about a study's kept weights: leftover temporary files, files torch cannot load,
    registered artifacts whose file is missing."""
    problems = [f"leftover {p.name}" for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    for p in folder.iterdir() if folder.is_dir() else []:
        if p.is_file() and not p.name.startswith("."):
            try:
                torch.load(p, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - any unreadable file is the finding
                problems.append(f"{p.name} unreadable ({type(err).__name__})")
    for trial in study.trials:
        for meta in optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage):
            if not (folder / meta.artifact_id).is_file():
                problems.append(f"trial {trial.number} registers missing artifact {meta.artifact_id}")
    return problems


# --- 1. a full disk --------------------------------------------------------------------------------------------

class _FullDisk(types.SimpleNamespace):
    """The `os` module as dsearch.paths sees it, on a disk that fills up: each write gets half its bytes down, the
    next raises ENOSPC, as a real full disk does part way through a file."""

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        if len(data) > 1 and not getattr(self, "half_written", False):
            self.half_written = True
            return os.write(fd, bytes(data[:len(data) // 2]))
        self.half_written = False
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_weights_the_disk_refuses_leave_nothing_and_are_said_under_quiet(tiny_space, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(paths, "os", _FullDisk())
    code, _, err = dsearch(capfd, "run", "--space", tiny_space, "--study-name", "w", "--n-trials", "2", *RUN)
    assert code == 0, err  # the results are the search's; weights can be trained again
    assert "Traceback" not in err
    study = optuna.load_study(study_name="w", storage=paths.default_storage("w"))
    trained = [t for t in study.trials if t.state == TrialState.COMPLETE and t.user_attrs.get("trained")]
    assert len(trained) == 2
    for t in trained:
        assert "no space left on device" in t.user_attrs[NOT_KEPT_ATTR] and "weights_artifact" not in t.user_attrs
        assert f"warning: trial {t.number}: the weights trial-{t.number}-proxy.pt could not be written" in err, err
        assert f"dsearch train w --trial {t.number}" in err
    folder = tmp_path / "studies" / "w" / "artifacts"
    assert not list(folder.rglob("*")), list(folder.rglob("*"))  # no partial file, no temporary one
    assert artifact_problems(folder, study) == []
    code, out, _ = dsearch(capfd, "export", "w", "--trial", str(trained[0].number), "--out", tmp_path / "e")
    assert code == 0 and "has no kept weights (the weights" in out and "no space left on device" in out


def test_a_file_written_whole_or_not_at_all_keeps_the_old_one_on_a_full_disk(tmp_path, monkeypatch):
    old = tmp_path / "weights.pt"
    old.write_bytes(b"the weights of before")
    monkeypatch.setattr(paths, "os", _FullDisk())
    with pytest.raises(OSError) as caught:
        paths.write_files_atomic(tmp_path, {"arch.json": b"{}", "weights.pt": b"x" * 100_000})
    assert caught.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.pt"]  # no temporary file, no new arch.json
    assert old.read_bytes() == b"the weights of before"


def _sqlite_full() -> Exception:
    """What Optuna raises when SQLite's disk is full: its StorageInternalError from SQLAlchemy's from sqlite3's."""
    cause = sqlalchemy.exc.OperationalError("UPDATE trials", {}, sqlite3.OperationalError("database or disk is full"))
    try:
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from cause
    except optuna.exceptions.StorageInternalError as err:
        return err


WRITES = ("set_trial_user_attr", "set_trial_system_attr", "set_trial_state_values", "set_trial_param",
          "set_trial_intermediate_value", "create_new_trial", "record_heartbeat", "set_study_user_attr")


def test_a_storage_whose_disk_fills_ends_the_run_in_one_line(tiny_space, tmp_path, monkeypatch, capfd):
    url = f"sqlite:///{tmp_path}/full.db"
    code, _, err = dsearch(capfd, "run", "--space", tiny_space, "--study-name", "f", "--storage", url,
                           "--n-trials", "1", *RUN)
    assert code == 0, err
    first = {t.number: t.values for t in optuna.load_study(study_name="f", storage=url).trials
             if t.state == TrialState.COMPLETE}
    full = {"on": False}
    for name in WRITES:  # from a trained result on, every write: the disk is full
        real = getattr(optuna.storages.RDBStorage, name)

        def refusing(self, *args, _real=real, _name=name, **kwargs):
            if _name == "set_trial_user_attr" and "val_acc" in (*args, *kwargs.values()):
                full["on"] = True
            if full["on"]:
                raise _sqlite_full()
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(optuna.storages.RDBStorage, name, refusing)
    code, _, err = dsearch(capfd, "run", "--space", tiny_space, "--study-name", "f", "--storage", url,
                           "--n-trials", "3", *RUN)
    one_line_error(code, err, f"the storage {url} could not write: no space left on device; free space or give "
                              "--storage elsewhere")
    assert "Should not reach" not in err and "Exception in thread" not in err
    monkeypatch.undo()
    after = optuna.load_study(study_name="f", storage=url).trials
    assert {t.number: t.values for t in after if t.number in first} == first  # nothing finished is lost


@needs_mounts
@pytest.mark.slow
def test_a_real_full_disk_under_the_storage_and_under_the_weights(tiny_space, tmp_path):
    disk, artifacts, kept = tmp_path / "disk", tmp_path / "disk" / "artifacts", tmp_path / "kept"
    disk.mkdir()
    url = f"sqlite:///{disk}/s.db"
    run = f"{DSEARCH} run --space {tiny_space} --study-name s --storage {url} {' '.join(RUN)}"
    done = in_namespace(f"""
        mount -t tmpfs -o size=8m tmpfs {disk} && mkdir {artifacts} && mount -t tmpfs -o size=64k tmpfs {artifacts}
        dd if=/dev/zero of={artifacts}/filler bs=4k 2>/dev/null; sync
        {run} --n-trials 2 2>{tmp_path}/err1; echo "rc1=$?"
        rm {artifacts}/filler
        {run} --n-trials 1 2>{tmp_path}/err2; echo "rc2=$?"
        dd if=/dev/zero of={disk}/filler bs=4k 2>/dev/null; sync
        {run} --n-trials 3 2>{tmp_path}/err3; echo "rc3=$?"
        {run} --n-trials 3 2>{tmp_path}/err4; echo "rc4=$?"
        rm {disk}/filler
        dd if=/dev/zero of={disk}/filler bs=4k count=$(( ($(df -k --output=avail {disk} | tail -1) - 200) / 4 ))
        {run} --n-trials 30 2>{tmp_path}/err5; echo "rc5=$?"
        rm {disk}/filler
        cp -a {disk} {kept}
    """, tmp_path)
    assert "rc1=" in done.stdout, done.stderr
    rc = dict(line.split("=") for line in done.stdout.split() if line.startswith("rc"))
    err = {n: (tmp_path / f"err{n}").read_text() for n in "12345"}
    # 1. weights on a full disk: the trials are kept without them, and said so under --quiet
    assert rc["rc1"] == "0" and "Traceback" not in err["1"], err["1"]
    assert err["1"].count("could not be written") == 2 and "no space left on device" in err["1"]
    # 2. space again: weights kept
    assert rc["rc2"] == "0" and "could not be written" not in err["2"] and "Traceback" not in err["2"], err["2"]
    # 3-5. the storage's own disk full (3, 4: from the start; 5: 200 kB left, filled during the run): one line each
    # time, and nothing half-written
    for n in "345":
        one_line_error(int(rc[f"rc{n}"]), err[n], f"the storage {url} could not write: no space left on device")
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{kept}/s.db")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= 3 and sum(NOT_KEPT_ATTR in t.user_attrs for t in complete) == 2
    assert artifact_problems(kept / "artifacts", study) == []
    kept_weights = [t for t in complete if "weights_artifact" in t.user_attrs]
    assert len(kept_weights) == len(complete) - 2


# --- 2. read-only media ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def closed_study(tmp_path_factory) -> Path:
    """A real study made by `dsearch run` in its own process (closed: no -wal or -shm file left beside it)."""
    root = tmp_path_factory.mktemp("closed")
    space = root / "tiny.yaml"
    space.write_text(textwrap.dedent(TINY_SPACE))
    study = root / "study"
    done = subprocess.run([sys.executable, "-m", "dsearch", "run", "--space", str(space), "--study-name", "ro",
                           "--storage", f"sqlite:///{study}/study.db", "--n-trials", "2", *RUN],
                          cwd=root, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    sqlite3.connect(study / "study.db").close()  # the last connection to close folds the WAL into the file
    assert sorted(p.name for p in study.iterdir()) == ["artifacts", "study.db"]
    return study


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_reading_commands_never_write_the_study(closed_study, tmp_path, monkeypatch, capfd):
    study = tmp_path / "copy"
    shutil.copytree(closed_study, study)
    before = _digest(study)
    url = f"sqlite:///{study}/study.db"
    monkeypatch.chdir(tmp_path)
    for args in (("show", "ro"), ("dashboard", "ro", "--out", tmp_path / "d.html"),
                 ("export", "ro", "--out", tmp_path / "e")):
        code, _, err = dsearch(capfd, *args, "--storage", url)
        assert code == 0, err
    after = {k: v for k, v in _digest(study).items() if not k.endswith(("-shm", "-wal"))}
    assert after == before


@needs_mounts
@pytest.mark.slow
def test_a_study_on_read_only_media_can_be_read_and_says_what_it_cannot_do(closed_study, tmp_path):
    media, work = tmp_path / "media", tmp_path / "work"
    media.mkdir()
    work.mkdir()
    url = f"sqlite:///{media}/study.db"
    before = _digest(closed_study)
    commands = {
        "show": f"cd {work} && {DSEARCH} show ro --storage {url}",
        "dashboard": f"cd {work} && {DSEARCH} dashboard ro --storage {url} --out {work}/d.html",
        "export": f"cd {work} && {DSEARCH} export ro --storage {url} --out {work}/e",
        "dashboard_default": f"cd {media} && {DSEARCH} dashboard ro --storage {url}",
        "export_default": f"cd {media} && {DSEARCH} export ro --storage {url}",
        "run": f"cd {work} && {DSEARCH} run --space {closed_study.parent}/tiny.yaml --study-name ro --storage {url} "
               f"--n-trials 1 {' '.join(RUN)}",
        "train": f"cd {work} && {DSEARCH} train ro --storage {url} --epochs 1 --quiet",
    }
    lines = [f"mount --bind {closed_study} {media} && mount -o remount,bind,ro {media} || exit 99"]
    for name, command in commands.items():
        lines.append(f"( {command} ) >{tmp_path}/{name}.out 2>{tmp_path}/{name}.err; echo {name}=$?")
    done = in_namespace("\n".join(lines), tmp_path)
    assert done.returncode != 99, done.stderr
    rc = dict(line.split("=") for line in done.stdout.split())
    err = {name: (tmp_path / f"{name}.err").read_text() for name in commands}
    for name in ("show", "dashboard", "export"):
        assert rc[name] == "0", err[name]
    assert "Pareto-optimal trials" in (tmp_path / "show.out").read_text()
    assert (work / "d.html").is_file() and (work / "e" / "weights.pt").is_file()  # weights read from the media
    for name in ("dashboard_default", "export_default"):
        one_line_error(int(rc[name]), err[name], "it is on read-only media; give --out elsewhere")
    for name in ("run", "train"):
        one_line_error(int(rc[name]), err[name], f"the storage {url} is on read-only media; copy the study or give "
                                                 "--storage elsewhere")
    assert _digest(closed_study) == before


# --- 3. a journal file cut mid-record --------------------------------------------------------------------------

def _complete(journal: Path, name: str) -> dict[int, list[float]]:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name=name, storage=storage)
    return {t.number: t.values for t in study.trials if t.state == TrialState.COMPLETE}


def test_a_journal_torn_by_a_crash_is_mended_before_the_next_run_appends(tiny_space, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    journal = tmp_path / "journal.log"
    args = ("run", "--space", tiny_space, "--study-name", "j", "--storage", journal, *RUN)
    code, _, err = dsearch(capfd, *args, "--n-trials", "2")
    assert code == 0, err
    first = _complete(journal, "j")
    assert len(first) == 2
    # A crash mid-write: the next record only half there, without its newline.
    last = journal.read_bytes().splitlines()[-1]
    torn = last[:len(last) // 2]
    with open(journal, "ab") as f:
        f.write(torn)
    assert _complete(journal, "j") == first  # Optuna skips the torn line...
    glued = tmp_path / "glued.log"  # ...but what it appends next is glued onto it, and the file becomes unreadable
    shutil.copy(journal, glued)
    with pytest.raises((ValueError, AttributeError)):  # the glued record is lost (Optuna's ask fails on it), and
        for _ in range(2):  # once another follows, the file cannot be read at all
            storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(glued)))
            optuna.load_study(study_name="j", storage=storage).ask()
        _complete(glued, "j")
    code, _, err = dsearch(capfd, *args, "--n-trials", "1")
    assert code == 0, err
    sides = list(tmp_path.glob("journal.log.torn-*"))
    assert len(sides) == 1 and sides[0].read_bytes() == torn
    assert f"journal {journal} ended in a record cut short" in err and str(sides[0]) in err
    after = _complete(journal, "j")
    assert {n: after.get(n) for n in first} == first and len(after) == 3
    code, _, err = dsearch(capfd, *args, "--n-trials", "1")  # and it stays whole: nothing more to mend
    assert code == 0 and "cut short" not in err, err
    assert len(_complete(journal, "j")) == 4 and len(list(tmp_path.glob("journal.log.torn-*"))) == 1


def test_a_journal_of_whole_records_is_left_as_it_is(tmp_path):
    from dsearch.search.storage import cut_torn_record

    journal = tmp_path / "j.log"
    journal.write_bytes(b'{"a":1}\n{"b":2}\n')
    assert cut_torn_record(journal) is None and journal.read_bytes() == b'{"a":1}\n{"b":2}\n'
    journal.write_bytes(b'{"a":1')  # one record, torn: all of it goes
    side = cut_torn_record(journal)
    assert side is not None and side.read_bytes() == b'{"a":1' and journal.read_bytes() == b""
