"""The finals on several local processes: `dsearch run --final-jobs N`.

Each finals training is one candidate at one seed, seeded and independent of the others, so N workers that share
the study split a rung's trainings through the finals' claims (as workers on several machines do) and every one of
them ends with the same verdict. On a CPU, N processes with cores / N threads each train more per minute than one
process with every core: a second thread speeds one small-net trainer up far less than twice. Each training records
its thread count, which (like the seed) its float sums depend on.
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import optuna
import torch

from ..checks import check_int
from ..errors import Deadline, DsearchError, TimedOut, on_sigterm_raise
from ..search.storage import open_study
from ..search.workers import stop_processes, threads_per_worker
from .finals import FinalsConfig, run_finals

Log = Callable[[str], None]


AUTO_MAX_JOBS = 4  # a rung has a few to a few dozen trainings; more cores go to threads within each worker


def auto_final_jobs(device: str) -> int:
    """Workers for the finals when not told: one per CPU core on a CPU (at most AUTO_MAX_JOBS, each then with
    cores / N threads), one on an accelerator."""
    if device != "cpu" and (device.startswith("cuda") or device == "mps" or
                            (device == "auto" and (torch.cuda.is_available() or torch.backends.mps.is_available()))):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, AUTO_MAX_JOBS))


@dataclass(frozen=True)
class _Report:
    error: str | None = None
    interrupted: bool = False


def _worker_main(study_name: str, url: str, cfg: FinalsConfig, seed: int | None, deadline: Deadline | None,
                 threads: int, lane: int, quiet: bool, conn: Connection) -> None:
    on_sigterm_raise()  # the main process stops its workers with SIGTERM: a running training is dropped, kept ones stay
    torch.set_num_threads(threads)
    log: Log = (lambda _msg: None) if quiet else (lambda msg: print(f"[finals worker {lane}] {msg}", flush=True))
    report = _Report()
    try:
        study, _ = open_study(study_name, url)
        run_finals(study, url, cfg, seed=seed, log=log, deadline=deadline, lane=lane)
    except (DsearchError, TimedOut) as err:
        report = _Report(error=str(err))
    except KeyboardInterrupt:
        report = _Report(interrupted=True)
    try:
        conn.send(report)
        conn.close()
    except OSError:  # the main process is gone
        pass


def run_finals_parallel(study: optuna.Study, url: str, cfg: FinalsConfig, *, jobs: int = 1,
                        seed: int | None = None, log: Log = print, progress: Callable[[int, int], None] | None = None,
                        quiet: bool = False, deadline: Deadline | None = None) -> dict[str, Any]:
    """`run_finals` with `jobs` workers sharing the trainings (this process is one); the verdict.

    A worker that fails or dies costs time, never a result: its claimed training lapses and another worker takes it.
    """
    check_int(jobs, "--final-jobs", 1)
    if jobs == 1:
        return run_finals(study, url, cfg, seed=seed, log=log, progress=progress, deadline=deadline)
    threads = threads_per_worker(jobs)
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    children: list[tuple[Any, Connection]] = []
    previous = torch.get_num_threads()
    try:
        for lane in range(1, jobs):
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=_worker_main, name=f"dsearch-finals-{lane}",
                                      args=(study.study_name, url, cfg, seed, deadline, threads, lane, quiet, send))
            process.start()
            send.close()
            children.append((process, receive))
        log(f"finals: {jobs} workers with {threads} CPU thread(s) each share the trainings")
        torch.set_num_threads(threads)
        verdict = run_finals(study, url, cfg, seed=seed, log=log, progress=progress, deadline=deadline)
        for process, conn in children:  # they finish the same verdict: wait, and say if one could not
            report = _receive(conn)
            process.join()
            if report is None or report.error:
                log(f"finals: worker {process.name} ended early ({report.error if report else 'no report'}); "
                    "the other workers trained its share")
        return verdict
    except BaseException:  # Ctrl-C, SIGTERM or an error here: stop the workers too, leave none behind
        stop_processes([process for process, _conn in children])
        raise
    finally:
        torch.set_num_threads(previous)


def _receive(conn: Connection) -> _Report | None:
    try:
        report: _Report = conn.recv()
        return report
    except EOFError:
        return None
