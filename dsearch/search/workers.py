"""Parallel workers on one machine: `dsearch run --jobs N` trains N architectures at a time.

The proxy's nets are small: at 28x28 one training step is a few hundred small ops, and a second
CPU thread speeds one trainer up by only ~1.4x (2-core Xeon). N worker processes with cores / N
threads each keep every core busy on its own trial instead. They are the same workers that
several `dsearch run` commands on one storage would be (see dsearch.search.driver): the first runs in
this process and creates or checks the study before the others start, so bad input fails once,
before anything is spawned; each worker has its own sampler seed (TPE with a constant liar, so
that workers spread out), and all share the data split and proxy settings of `--seed`.
"""
from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

import optuna
import torch

from ..checks import check_int, check_number
from ..errors import Deadline, DsearchError, on_sigterm_raise
from .config import SearchConfig
from .driver import SearchSummary, run_search
from .objective import warn_stderr
from .storage import storage_url_of
from .trials import trial_counts, untrained_seconds


@dataclass(frozen=True)
class WorkerResult:
    """What a spawned worker reports back (picklable: no study object)."""

    worker: int
    trained: int = 0
    failed: int = 0
    last_failure: str | None = None
    interrupted: bool = False
    stopped: str | None = None
    exhausted: str | None = None
    error: str | None = None  # the worker could not run at all
    timed_out: str | None = None
    cut: list[str] = field(default_factory=list)


def threads_per_worker(jobs: int, cores: int | None = None) -> int:
    """CPU threads for each of `jobs` workers: the cores split evenly, at least one."""
    return max(1, (cores or torch.get_num_threads()) // jobs)


def _prefixed(worker: int, quiet: bool) -> Callable[[str], None]:
    if quiet:
        return lambda _msg: None
    return lambda msg: print(f"[worker {worker}] {msg}", flush=True)


def _worker_main(cfg: SearchConfig, study_name: str, storage_url: str, n_trials: int, shared_from: int,
                 deadline: Deadline | None, threads: int, worker: int, quiet: bool, conn: Connection) -> None:
    """A spawned worker: the same search loop as the first, with its own seed offset, reporting back on `conn`."""
    on_sigterm_raise()  # the main process stops its workers with SIGTERM: each marks its running trial failed
    torch.set_num_threads(threads)
    try:
        if deadline is not None and deadline.passed():  # started too late (spawning takes seconds): nothing to do
            result = WorkerResult(worker, timed_out=deadline.what)
        else:
            summary = run_search(cfg, study_name, storage_url, n_trials=n_trials, log=_prefixed(worker, quiet),
                                 worker=worker, shared_from=shared_from, deadline=deadline,
                                 warn=lambda msg: warn_stderr(f"[worker {worker}] {msg}"))
            result = WorkerResult(worker, summary.trained, summary.failed, summary.last_failure,
                                  summary.interrupted, summary.stopped, summary.exhausted,
                                  timed_out=summary.timed_out, cut=summary.cut)
    except DsearchError as err:
        result = WorkerResult(worker, error=str(err))
    except KeyboardInterrupt:  # interrupted before its loop started: nothing of its own to keep
        result = WorkerResult(worker, interrupted=True)
    try:
        conn.send(asdict(result))
        conn.close()
    except OSError:  # the main process is gone (it stopped this worker): nobody to report to
        pass


def run_parallel(cfg: SearchConfig, study_name: str, storage_url: str | None = None, n_trials: int = 10,
                 jobs: int = 1, timeout: float | None = None, log: Callable[[str], None] = print,
                 progress_factory: Callable[[int], Any] | None = None,
                 trial_progress: Callable[[int, int], None] | None = None,
                 allow_changed_settings: bool = False, quiet: bool = False,
                 deadline: Deadline | None = None, warn: Callable[[str], None] = warn_stderr) -> SearchSummary:
    """Train `n_trials` architectures with `jobs` workers at once (this process is worker 0); one summary for all.

    The time limit, `deadline` or else `timeout` seconds from now, is one moment for every worker.

    With jobs 1 this is exactly `run_search`. The workers share n_trials: each starts another trial while
    the run's trained and running trials are fewer, so none idles while another has a queue. A worker that
    fails to start or dies is reported in the summary's `stopped`, never silently dropped.
    """
    check_int(jobs, "--jobs", 1)
    check_int(n_trials, "--n-trials", 1)
    if timeout is not None:
        check_number(timeout, "--timeout", low=0, low_open=True)
        deadline = deadline or Deadline.after(timeout)
    if jobs == 1:
        return run_search(cfg, study_name, storage_url, n_trials=n_trials, log=log,
                          progress_factory=progress_factory, trial_progress=trial_progress,
                          allow_changed_settings=allow_changed_settings, deadline=deadline, warn=warn)
    workers = min(jobs, n_trials)
    threads = threads_per_worker(workers)
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    children: list[tuple[int, Any, Connection]] = []
    first_trial: list[int] = []

    def start_others(study: optuna.Study, first: int) -> None:
        first_trial.append(first)  # where this run's trials begin, for all workers
        url = storage_url or storage_url_of(study)  # the default one when none was given
        for worker in range(1, workers):
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=_worker_main, name=f"dsearch-worker-{worker}", args=(
                cfg, study_name, url, n_trials, first_trial[0], deadline, threads, worker, quiet, send))
            process.start()
            send.close()
            children.append((worker, process, receive))
        log(f"{workers} workers with {threads} CPU thread(s) each share the {n_trials} architectures to train")

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:  # this process is worker 0; its run begins where start_others counted
        main = run_search(cfg, study_name, storage_url, n_trials=n_trials, log=log,
                          progress_factory=progress_factory, trial_progress=trial_progress,
                          allow_changed_settings=allow_changed_settings, worker=0, on_study=start_others,
                          shared_from=-1, deadline=deadline, warn=warn)
        if main.interrupted:  # Ctrl-C or SIGTERM stopped this worker's loop: stop the others the same way
            for _worker, process, _conn in children:
                if process.is_alive():
                    process.terminate()
        results = [_collect(worker, process, conn) for worker, process, conn in children]
    except BaseException:  # Ctrl-C, SIGTERM or an error here: stop the workers too
        stop_processes([process for _worker, process, _conn in children])
        raise
    finally:
        torch.set_num_threads(previous_threads)
    return _merge(main, results, time.perf_counter() - start, first_trial[0], n_trials, deadline)


def stop_processes(processes: list[Any], grace_s: float = 30) -> None:
    """SIGTERM to each live process (a dsearch worker then marks its running trial failed and exits), then wait,
    killing any still alive after `grace_s`: none is left behind."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=grace_s)
        if process.is_alive():
            process.kill()
            process.join()


def _collect(worker: int, process: Any, conn: Connection) -> WorkerResult:
    """Wait for a worker and read its report; a worker that died without one is an error, not a silence."""
    report: dict[str, Any] | None = None
    try:
        report = conn.recv()
    except EOFError:
        pass
    process.join()
    if report is None:
        return WorkerResult(worker, error=f"worker {worker} died (exit status {process.exitcode}) without a report")
    return WorkerResult(**report)


def _merge(main: SearchSummary, results: list[WorkerResult], wall_s: float, first_trial: int, n_trials: int,
           deadline: Deadline | None) -> SearchSummary:
    """One summary for the whole run: counts of every worker, the study's state after all of them."""
    trained = main.trained + sum(r.trained for r in results)
    interrupted = main.interrupted or any(r.interrupted for r in results)
    exhausted = main.exhausted or next((r.exhausted for r in results if r.exhausted), None)
    reasons = [main.stopped, *(r.stopped for r in results), *(f"worker {r.worker}: {r.error}" for r in results
                                                              if r.error)]
    this_run = main.study.get_trials(deepcopy=False)[first_trial:]
    if not any(reasons) and not interrupted and not exhausted and trained < n_trials and deadline is None:
        reasons.append(f"sampled {len(this_run)} trials without training {n_trials} architectures")
    cut = [*main.cut, *(c for r in results for c in r.cut)]
    timed_out = main.timed_out or next((r.timed_out for r in results if r.timed_out), None)
    last = next((r.last_failure for r in reversed(results) if r.last_failure), main.last_failure)
    return replace(main, counts=trial_counts(main.study), wall_s=wall_s, interrupted=interrupted, trained=trained,
                   failed=main.failed + sum(r.failed for r in results), last_failure=last,
                   untrained_s=untrained_seconds(this_run), stopped="; ".join(filter(None, reasons)) or None,
                   exhausted=exhausted, timed_out=timed_out, cut=cut)
