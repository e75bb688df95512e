"""Signals as interrupts: inside `deferred_interrupts` a Ctrl-C or SIGTERM waits for the next safe point."""
import os
import signal

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from dsearch import errors
from dsearch.errors import Terminated, check_interrupted, deferred_interrupts


@pytest.fixture(autouse=True)
def fresh_signal_state(monkeypatch):
    """Each test starts with no SIGTERM received (the trainer raises Terminated again while one is recorded)."""
    monkeypatch.setattr(errors, "_received", [])
    yield


def test_a_signal_inside_waits_for_the_next_check():
    with deferred_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        reached = True  # the handler ran (signals are handled between bytecodes) and raised nothing
        with pytest.raises(Terminated):
            check_interrupted()
        check_interrupted()  # raised once: nothing kept any more
    assert reached and errors.terminated()


def test_the_same_signal_twice_interrupts_at_once():
    with pytest.raises(KeyboardInterrupt), deferred_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # give the second one a bytecode boundary to land on
            pass
        pytest.fail("the second Ctrl-C did not interrupt")


def test_a_kept_interrupt_is_raised_on_leaving_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(Terminated), deferred_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    check_interrupted()  # nothing left over for code outside


def test_leaving_by_an_error_forgets_the_kept_interrupt():
    with pytest.raises(ValueError), deferred_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        raise ValueError("first")
    check_interrupted()  # the error went up; the interrupt does not fire later elsewhere


def test_sigterm_during_the_write_of_a_finished_trial_keeps_it_and_stops_the_run(tiny_space, tmp_path, monkeypatch):
    """The case `dsearch run --jobs 2` met: SIGTERM landing inside Optuna's write of a trial's final state used to
    leave the trial RUNNING and Optuna asserting ("Should not reach."); now the trial is kept as finished and the
    run stops right after it."""
    from dsearch.search.config import SearchConfig
    from dsearch.search.driver import run_search
    from dsearch.training.proxy import ProxyConfig

    original = RDBStorage.set_trial_state_values
    sent: list[int] = []

    def write_with_a_signal(self, trial_id, state, values=None):
        if state == TrialState.COMPLETE and not sent:
            sent.append(trial_id)
            os.kill(os.getpid(), signal.SIGTERM)  # lands here, in the middle of the write
        return original(self, trial_id, state, values)

    monkeypatch.setattr(RDBStorage, "set_trial_state_values", write_with_a_signal)
    cfg = SearchConfig(space=str(tiny_space), budget_mflops=0.22, seed=0, sampler="random",
                       proxy=ProxyConfig(epochs=1, batch_size=64, train_subset=256, augment=False))
    url = f"sqlite:///{tmp_path}/s.db"
    summary = run_search(cfg, "s", url, n_trials=5, log=lambda _msg: None)
    assert sent and summary.interrupted and errors.terminated()
    trials = optuna.load_study(study_name="s", storage=url).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert [t._trial_id for t in trials if t.state == TrialState.COMPLETE][-1] == sent[0]
    assert trials[-1]._trial_id == sent[0]  # nothing started after the signal
