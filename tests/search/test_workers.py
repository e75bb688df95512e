"""`dsearch run --jobs N`: several workers in parallel on one study, one summary."""
import multiprocessing
import os
import time

import optuna
from optuna.trial import TrialState
from test_study import config, quiet

from dsearch.cli import main
from dsearch.search.workers import WorkerResult, _collect, run_parallel, threads_per_worker


def test_threads_split_the_cores():
    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(3, cores=16) == 5
    assert threads_per_worker(4, cores=2) == 1  # more workers than cores still get a thread each


def test_two_jobs_train_the_asked_number_together(tiny_space, tmp_path, monkeypatch):
    import dsearch.search.objective as study_module

    real = study_module.train_proxy

    def slow(*args, **kwargs):  # this process's trials only (the spawned worker imports its own): 3 s each, so
        time.sleep(3)  # that the second worker, a few seconds to start, finds trials left to train
        return real(*args, **kwargs)

    monkeypatch.setattr(study_module, "train_proxy", slow)
    url = f"sqlite:///{tmp_path}/j.db"
    summary = run_parallel(config(tiny_space), "j", url, n_trials=4, jobs=2, log=quiet, quiet=True)
    # Workers that finish at the same moment may each start one more: at most jobs - 1 over.
    assert 4 <= summary.trained <= 5 and (summary.asked, summary.failed) == (4, 0)
    assert summary.stopped is None and not summary.interrupted
    trials = optuna.load_study(study_name="j", storage=url).get_trials()
    trained = [t for t in trials if t.user_attrs.get("status") == "complete"]
    assert len(trained) == summary.trained == summary.counts["complete"]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)  # nothing failed or left running
    assert {t.user_attrs["worker"] for t in trained} == {0, 1}  # both processes trained
    assert all(t.user_attrs["cpu_threads"] == threads_per_worker(2) for t in trained)
    assert len({t.user_attrs["arch_key"] for t in trained}) == len(trained)  # no architecture trained twice


def test_a_worker_that_dies_without_a_report_is_an_error():
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=os._exit, args=(3,))
    process.start()
    send.close()
    result = _collect(1, process, receive)
    assert result == WorkerResult(1, error="worker 1 died (exit status 3) without a report")


def test_jobs_below_one_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--budget-mflops", "300", "--jobs", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--jobs" in err[0]
    assert not (tmp_path / "studies").exists()


def test_a_worker_with_another_seed_validates_on_the_studys_split(tiny_space, tmp_path, monkeypatch):
    import dsearch.search.driver as study_module

    url = f"sqlite:///{tmp_path}/v.db"
    study_module.run_search(config(tiny_space, seed=1), "v", url, n_trials=1, log=quiet)
    seeds, lines = [], []
    real = study_module.load_dataset

    def recording(*args, **kwargs):
        seeds.append(kwargs["seed"])
        return real(*args, **kwargs)

    monkeypatch.setattr(study_module, "load_dataset", recording)
    summary = study_module.run_search(config(tiny_space, seed=2), "v", url, n_trials=1, log=lines.append)
    assert summary.trained == 1
    assert seeds[-1] == 1  # the split every trial of the study is validated on: the creating run's
    assert any("study's split (seed 1" in line for line in lines)
