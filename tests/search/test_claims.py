"""One architecture, one training: the claim rules on a study, and real worker processes racing for one architecture."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_study import postgres  # noqa: F401 - the throwaway PostgreSQL server fixture

from dsearch.cli import main
from dsearch.search.budget import all_params
from dsearch.search.claims import CLAIM_AT, TRAINING, ArchClaims
from dsearch.search.config import SearchConfig
from dsearch.search.driver import run_search
from dsearch.search.spaces import load_space
from dsearch.training.proxy import ProxyConfig

# Exactly two architectures (the kernel of the one stage), both far within any budget used here.
TWO_ARCHS = """
name: two
description: exactly two architectures, for claim tests
resolution: 32
stem: {width: 8, kernel: 3, stride: 1, activation: relu}
head: {width: 0}
stage_defaults: {block: separable, activation: relu, kernel: [3, 5], conv: [dsc]}
stages:
  - {width: 16, depth: 1, stride: 2}
"""
CODE_UNDER_TEST = str(Path(__file__).resolve().parents[2])  # this checkout, not whichever dsearch is installed


def running(*keys):
    """A study (in memory: no heartbeats) with one running trial per key; None: a trial still sampling."""
    study = optuna.create_study()
    trials = []
    for key in keys:
        trial = study.ask()
        if key is not None:
            trial.set_user_attr("arch_key", key)
            trial.set_user_attr(CLAIM_AT, time.time())
        trials.append(trial)
    return study, trials


def test_the_lowest_numbered_claimant_holds_the_architecture():
    study, (first, second, other) = running("k", "k", "m")
    claims = ArchClaims(study)
    assert claims.claim(second, "k").number == first.number  # whichever asks first: the lower number wins
    assert claims.claim(first, "k") is None
    assert study.trials[first.number].user_attrs["status"] == TRAINING
    assert claims.claim(other, "m") is None  # another architecture is not held
    assert claims.held_keys(study) == {"k", "m"}


def test_a_lower_number_that_posts_late_still_wins():
    # The higher-numbered trial must not call itself the winner while a lower one is still sampling.
    study, (lower, higher) = running(None, "k")

    def post_late():
        time.sleep(0.5)
        lower.set_user_attr("arch_key", "k")
        lower.set_user_attr(CLAIM_AT, time.time())

    poster = threading.Thread(target=post_late)
    start = time.monotonic()
    poster.start()
    owner = ArchClaims(study).claim(higher, "k")
    poster.join()
    assert owner is not None and owner.number == lower.number
    assert time.monotonic() - start >= 0.4  # it waited for the lower trial's key
    assert "status" not in study.trials[higher.number].user_attrs  # the objective records it as a duplicate


def test_a_trial_stuck_sampling_is_waited_for_only_the_grace_then_a_winner_in_training_holds(monkeypatch):
    monkeypatch.setenv("DSEARCH_HEARTBEAT_S", "1")  # grace: three 1-s heartbeats
    study, (stuck, higher) = running(None, "k")
    start = time.monotonic()
    assert ArchClaims(study).claim(higher, "k") is None
    assert 2.5 <= time.monotonic() - start < 10
    stuck.set_user_attr("arch_key", "k")  # it comes back after all: the trial training the architecture holds it
    assert ArchClaims(study).claim(stuck, "k").number == higher.number


def test_a_queued_trial_with_the_same_architecture_holds_it_against_higher_numbers():
    # An enqueued trial got its number when it was queued; it runs later, but its architecture is known already.
    study = optuna.create_study()
    study.enqueue_trial({"x": 1})  # trial 0, waiting
    study.enqueue_trial({"x": 2})  # trial 1, waiting: another architecture
    later = optuna.Trial(study, study._storage.create_new_trial(study._study_id))  # trial 2, running (not popped)
    later.set_user_attr("arch_key", "k1")
    claims = ArchClaims(study, params_key=lambda params: f"k{params['x']}")
    assert claims.claim(later, "k1").number == 0
    assert study.trials[0].state == TrialState.WAITING
    other = optuna.Trial(study, study._storage.create_new_trial(study._study_id))  # trial 3
    other.set_user_attr("arch_key", "k3")
    assert claims.claim(other, "k3") is None  # no queued trial gives k3


def test_a_dead_workers_claim_holds_nothing_without_heartbeats(monkeypatch):
    monkeypatch.setenv("DSEARCH_HEARTBEAT_S", "1")
    study, (dead, alive) = running("k", "k")
    dead.set_user_attr("status", TRAINING)
    dead.set_user_attr(CLAIM_AT, time.time() - 60)  # its worker stopped refreshing a minute ago
    assert ArchClaims(study).claim(alive, "k") is None


def _two_arch_space(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(textwrap.dedent(TWO_ARCHS))
    return path


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [CODE_UNDER_TEST, os.environ.get("PYTHONPATH")]))}


# Each worker imports everything first and waits for the file `go`, so that both sample at the same moment.
AT_ONCE = textwrap.dedent("""
    import pathlib, sys, time
    import optuna, torch  # noqa: F401 - the slow imports before the start line
    import dsearch.search.driver  # noqa: F401
    from dsearch.cli import main
    go = pathlib.Path(sys.argv[1])
    while not go.exists():
        time.sleep(0.005)
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_workers_that_sample_one_architecture_at_once_train_it_once(tmp_path, backend, request, monkeypatch):
    url = f"sqlite:///{tmp_path}/race.db" if backend == "sqlite" else request.getfixturevalue("postgres")
    space = _two_arch_space(tmp_path)
    args = ["run", "--space", str(space), "--budget-mflops", "100", "--n-trials", "2", "--epochs", "40",
            "--batch-size", "64", "--train-subset", "256", "--no-finals", "--study-name", "race", "--storage", url]
    # Make the study (a time limit that has passed before the search: no trial), then queue one architecture
    # twice: each worker's first trial is that architecture, at the same moment. Training lasts seconds, far
    # longer than the two starts differ.
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--timeout", "0.001", "--quiet"]) == 0
    study = optuna.load_study(study_name="race", storage=url)
    assert not study.trials
    first = next(all_params(load_space(str(space))))
    study.enqueue_trial(first)
    study.enqueue_trial(first)
    go = tmp_path / "go"
    workers = [subprocess.Popen([sys.executable, "-c", AT_ONCE, str(go), *args, "--seed", str(seed)], cwd=tmp_path,
                                env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for seed in (1, 2)]
    time.sleep(1)  # both are importing; whichever is slower still starts within a training's time
    go.touch()
    outputs = [w.communicate(timeout=600) for w in workers]
    for w, (out, err) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, out[-2000:] + err[-2000:]
    trials = optuna.load_study(study_name="race", storage=url).get_trials()
    by_number = {t.number: t for t in trials}
    trained = [t for t in trials if t.user_attrs.get("status") == "complete"]
    keys = [t.user_attrs["arch_key"] for t in trained]
    assert len(keys) == len(set(keys)) == 2, [(t.number, t.user_attrs.get("status"), t.user_attrs.get("arch_key"))
                                              for t in trials]  # each architecture trained exactly once
    duplicates = [t for t in trials if t.user_attrs.get("status") == "duplicate"]
    for d in duplicates:  # each names the trial that holds its architecture, and that one trained it
        original = by_number[d.user_attrs["duplicate_of"]]
        assert original.user_attrs["arch_key"] == d.user_attrs["arch_key"]
        assert original.user_attrs["status"] == "complete"
        assert d.state in (TrialState.PRUNED, TrialState.COMPLETE) and "train_time_s" not in d.user_attrs
    raced = [d for d in duplicates if by_number[d.user_attrs["duplicate_of"]].datetime_complete > d.datetime_start]
    assert raced, "no worker met an architecture while another trained it: the race was not exercised"
    assert any(d.user_attrs["duplicate_of"] in (0, 1) and d.number in (0, 1) for d in raced)  # the queued pair
    assert "moving on" in outputs[0][0] + outputs[1][0]


def _journal(path):
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


@pytest.mark.slow
def test_a_dead_workers_architecture_is_trained_by_the_next_on_a_journal_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DSEARCH_HEARTBEAT_S", "1")  # a claim lapses after three 1-s intervals
    space = _two_arch_space(tmp_path)
    journal = tmp_path / "journal.log"  # no heartbeats: the killed trial stays RUNNING for ever
    args = ["run", "--space", str(space), "--budget-mflops", "100", "--n-trials", "2", "--epochs", "100000",
            "--batch-size", "64", "--train-subset", "256", "--quiet", "--no-finals", "--study-name", "dead",
            "--storage", str(journal)]
    worker = subprocess.Popen([sys.executable, "-m", "dsearch", *args], cwd=tmp_path, env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if journal.exists():
                try:
                    trials = optuna.load_study(study_name="dead", storage=_journal(journal)).get_trials()
                except KeyError:
                    trials = []
                if any(t.user_attrs.get("status") == TRAINING for t in trials):
                    break
            time.sleep(0.2)
        else:
            pytest.fail("the worker never began training")
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    dead = [t for t in optuna.load_study(study_name="dead", storage=_journal(journal)).get_trials()
            if t.state == TrialState.RUNNING]
    assert len(dead) == 1
    time.sleep(3.5)  # its claim lapses
    cfg = SearchConfig(space=str(space), budget_mflops=100, proxy=ProxyConfig(epochs=1, batch_size=64,
                                                                                train_subset=256))
    summary = run_search(cfg, "dead", str(journal), n_trials=2, log=lambda _m: None, allow_changed_settings=True)
    trained = {t.user_attrs["arch_key"] for t in summary.study.get_trials()
               if t.user_attrs.get("status") == "complete"}
    assert summary.trained == 2 and dead[0].user_attrs["arch_key"] in trained  # the dead claim blocked nothing
