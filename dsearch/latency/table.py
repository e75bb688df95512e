"""Latency tables on disk: one JSON Lines file per target and machine, shared by every run and worker.

Format (`dsearch.latency-table/1`): the first line is the header, an object with `format`, `key`, `target`
(runtime, threads, batch, resolution and its `name`), `machine` (CPU model, cores, OS, architecture, Python),
`versions` (torch, the runtime's libraries, dsearch), `protocol` (dsearch.latency.protocol.Protocol) and
`made`. Every other line is one measurement, appended under an exclusive lock on the file:

- a part: `{"part": KEY, "median_ms", "p90_ms", "iqr_ms", "repeats", "noisy", "at"}`, KEY being the part's
  exact shape as canonical JSON (dsearch.latency.parts);
- a whole network: `{"network": ARCH_KEY, "arch": ArchSpec JSON, "size": pixels, ...the same figures}`.

The key is a hash of the target, the machine and the versions: a table made on another machine or with other
library versions has another key and is never taken for this one. A table copied from the machine a model will
ship on is read as it is (`LatencyTable.open(path)`); parts it lacks cannot be measured here and are named in
the error. When two workers measure one part, the first line in the file counts (it is never not quiet while a
later one is). A last line cut short by a crash is skipped.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import DsearchError
from ..version import __version__
from .protocol import DEFAULT_PROTOCOL, Measurement, Protocol, machine
from .targets import Target, runtime_versions

FORMAT = "dsearch.latency-table/1"


def default_folder() -> Path:
    """Where tables are kept: DSEARCH_LATENCY_DIR, else ~/.cache/dsearch/latency."""
    env = os.environ.get("DSEARCH_LATENCY_DIR")
    return Path(env) if env else Path.home() / ".cache" / "dsearch" / "latency"


def table_header(target: Target, protocol: Protocol) -> dict[str, Any]:
    """The header a table of `target` measured here, now, would have (its `key` names machine and versions)."""
    facts = {"target": {**target.to_dict(), "name": target.name}, "machine": machine(),
             "versions": {**runtime_versions(target), "dsearch": __version__}}
    key = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    return {"format": FORMAT, "key": key, **facts, "protocol": asdict(protocol),
            "made": datetime.now(UTC).isoformat(timespec="seconds")}


def _figures(m: Measurement) -> dict[str, Any]:
    return {**m.to_dict(), "at": datetime.now(UTC).isoformat(timespec="seconds")}


def _measurement(line: dict[str, Any]) -> Measurement:
    return Measurement(float(line["median_ms"]), float(line["p90_ms"]), float(line["iqr_ms"]), int(line["repeats"]),
                       bool(line["noisy"]))


class LatencyTable:
    """The measured parts and networks of one target on one machine, read from and appended to `path`."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path, self.header = path, header
        self.parts: dict[str, Measurement] = {}
        self.networks: dict[str, tuple[dict[str, Any], int, Measurement]] = {}
        self._offset = 0

    @property
    def target(self) -> Target:
        t = self.header["target"]
        return Target(t["runtime"], int(t["threads"]), int(t["batch"]), t.get("resolution"))

    def local(self) -> bool:
        """Whether this table's machine and versions are this machine's: only then can parts be added here."""
        return table_header(self.target, DEFAULT_PROTOCOL)["key"] == self.header["key"]

    def describe(self) -> str:
        m, v = self.header["machine"], self.header["versions"]
        libs = ", ".join(f"{k} {v[k]}" for k in sorted(v))
        return f"{self.header['target']['name']} on {m['cpu']} ({m['cores']} cores, {m['system']}; {libs})"

    @classmethod
    def for_target(cls, target: Target, folder: Path | None = None,
                   protocol: Protocol = DEFAULT_PROTOCOL) -> LatencyTable:
        """This machine's table of `target` in `folder` (default_folder()), created when there is none yet."""
        header = table_header(target, protocol)
        folder = folder or default_folder()
        path = folder / f"{target.runtime}-{header['key']}.jsonl"
        if not path.exists():
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with _exclusive(path) as f:
                    if f.seek(0, os.SEEK_END) == 0:
                        f.write((json.dumps(header) + "\n").encode())
                        f.flush()
                        os.fsync(f.fileno())
            except OSError as err:
                raise DsearchError(f"cannot write the latency table {path}: {err.strerror or err}; set "
                                   "DSEARCH_LATENCY_DIR to a folder you can write") from None
        return cls.open(path)

    @classmethod
    def open(cls, path: Path) -> LatencyTable:
        """The table in `path` (one made here, or copied from the machine a model ships on)."""
        try:
            with open(path, "rb") as f:
                first = f.readline()
        except OSError as err:
            raise DsearchError(f"cannot read the latency table {path}: {err.strerror or err}") from None
        try:
            header = json.loads(first)
            ok = isinstance(header, dict) and header.get("format") == FORMAT and isinstance(header.get("target"), dict)
        except ValueError:
            ok = False
        if not ok:
            raise DsearchError(f"{path} is not a dsearch latency table (its first line must be a {FORMAT} header); "
                               "make one with `dsearch latency table`")
        table = cls(path, header)
        table.refresh()
        return table

    def refresh(self) -> None:
        """Read the lines appended since the last read (by this process or any other)."""
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]  # a last line without its newline is being written, or torn
        for number, raw in enumerate(complete.splitlines()):
            if self._offset == 0 and number == 0:
                continue  # the header
            self._read_line(raw)
        self._offset += len(complete)

    def _read_line(self, raw: bytes) -> None:
        try:
            line = json.loads(raw)
            if "part" in line:
                self.parts.setdefault(str(line["part"]), _measurement(line))
            elif "network" in line:
                self.networks.setdefault(str(line["network"]), (dict(line["arch"]), int(line["size"]),
                                                                _measurement(line)))
        except (ValueError, KeyError, TypeError):
            return  # a torn line ended by the next append: skip it rather than refuse the whole table

    def add_part(self, key: str, m: Measurement) -> None:
        self._append({"part": key, **_figures(m)})

    def add_network(self, arch_key: str, arch: dict[str, Any], size: int, m: Measurement) -> None:
        self._append({"network": arch_key, "arch": arch, "size": size, **_figures(m)})

    def _append(self, line: dict[str, Any]) -> None:
        data = (json.dumps(line, sort_keys=True) + "\n").encode()
        try:
            with _exclusive(self.path) as f:
                end = f.seek(0, os.SEEK_END)
                if end:
                    f.seek(end - 1)
                    if f.read(1) != b"\n":  # a torn last line: end it so that this one reads alone
                        data = b"\n" + data
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            raise DsearchError(f"cannot write the latency table {self.path}: {err.strerror or err}; free space or "
                               "set DSEARCH_LATENCY_DIR to another folder") from None
        self.refresh()


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[Any]:
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield f
