"""Claims: how workers sharing a storage never train one thing twice.

Trainings kept as study attributes (the finals, the audit): a worker writes a claim (its id and the time) on
the study before it trains, refreshes it at most every heartbeat while training, and removes it when the result
is kept. Another worker leaves a training alone while its claim is live, and takes it over once the claim has
gone GRACE_HEARTBEATS heartbeats without a refresh (its worker died).

Architectures of the search (`ArchClaims`): a trial claims its architecture by posting its `arch_key` (the
objective does so as soon as it has sampled), and holds it when no other trial does. Trial numbers are handed out
one at a time by the storage (Optuna locks the study row to number a new trial), so "the lowest number wins" is
a rule every worker applies alike, with no last-write-wins race:

1. a finished trial that trained the architecture holds it (the repeat is a duplicate with its result);
2. else a running trial that already won it (status "training") holds it;
3. else the lowest-numbered trial that posted the same key and is running, or is queued (an enqueued trial,
   waiting, whose fixed parameters give the same architecture: a repair or an untried candidate), holds it;
4. a trial that would win waits until every lower-numbered running trial has posted its key (they are
   sampling, which takes moments), so that a lower number posted late cannot also win: as in Lamport's bakery
   algorithm, the trial numbers are the tickets and "still sampling" is the "choosing" flag. A queued trial got
   its number when it was enqueued, long before it runs, but its architecture is known from then on: that is
   why rule 3 counts it.

The winner marks itself "training" at once. A running trial holds nothing once its worker is dead: on storages
with heartbeats Optuna marks it failed after GRACE_HEARTBEATS missed beats (dsearch asks for that before it
decides); on a journal file, which has none, a trial holds its architecture while its `claim_at` time, refreshed
during training at most every heartbeat, is younger than that grace. A trial still sampling is waited for at
most that grace too, so a dead one never blocks. The rule 2 check keeps even that late case safe unless two
trials decide within the same moment.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..errors import Deadline, check_interrupted
from .record import ARCH_KEY, STATUS, TRAINED, trial_arch_key
from .storage import GRACE_HEARTBEATS, fail_stale_trials, has_heartbeats, heartbeat_seconds


def claim_is_live(claim: Any, worker: str) -> bool:
    """Another worker's claim that it refreshed recently enough to be still training."""
    if not isinstance(claim, dict) or claim.get("worker") == worker:
        return False
    return time.time() - float(claim.get("at", 0)) < GRACE_HEARTBEATS * heartbeat_seconds()


class Claim:
    """This worker's claim under study user attr `key`, refreshed at most every heartbeat while training."""

    def __init__(self, study: optuna.Study, key: str, worker: str) -> None:
        self.study, self.key, self.worker, self.last = study, key, worker, 0.0

    def refresh(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self.last >= heartbeat_seconds():
            self.study.set_user_attr(self.key, {"worker": self.worker, "at": now})
            self.last = now

    def held(self) -> bool:
        """Whether the claim on the study is this worker's (two workers claiming at once: the last write holds)."""
        claim = self.study.user_attrs.get(self.key)
        return isinstance(claim, dict) and claim.get("worker") == self.worker

    def release(self) -> None:
        self.study.set_user_attr(self.key, None)


CLAIM_AT = "claim_at"  # trial user attr: when its worker last said it holds the trial's architecture (time.time())
TRAINING = "training"  # the status of a trial that won its architecture and trains it
POLL_S = 0.1  # how often a trial waiting for lower-numbered trials to finish sampling looks again


def grace_seconds() -> float:
    """How long a claim lasts without a refresh, and the longest a trial waits for another to finish sampling."""
    return GRACE_HEARTBEATS * heartbeat_seconds()


def _claimant(t: FrozenTrial) -> bool:
    """A running trial that may hold its architecture: not one that lost it already (or was rejected)."""
    return t.state == TrialState.RUNNING and t.user_attrs.get(STATUS) in (None, TRAINING)


def _trained(t: FrozenTrial) -> bool:
    return t.state.is_finished() and bool(t.user_attrs.get(TRAINED)) and t.user_attrs.get(STATUS) != "duplicate"


def holder(trials: Sequence[FrozenTrial], number: int, key: str, live: Callable[[FrozenTrial], bool],
           queued_key: Callable[[FrozenTrial], str | None] | None = None) -> FrozenTrial | None:
    """The trial that holds architecture `key` against trial `number` (rules 1-3 of the module), or None.

    `queued_key(t)`: the architecture key a waiting (enqueued) trial's fixed parameters give; None: unknown.
    """
    same = [t for t in trials if t.number != number and trial_arch_key(t) == key]
    trained = [t for t in same if _trained(t)]
    if trained:
        return min(trained, key=lambda t: t.number)
    running = [t for t in same if _claimant(t) and live(t)]
    training = [t for t in running if t.user_attrs.get(STATUS) == TRAINING]
    if training:
        return min(training, key=lambda t: t.number)
    lower = [t for t in running if t.number < number]
    if queued_key is not None:
        lower += [t for t in trials if t.state == TrialState.WAITING and t.number < number and queued_key(t) == key]
    return min(lower, key=lambda t: t.number) if lower else None


def still_sampling(trials: Sequence[FrozenTrial], number: int) -> list[FrozenTrial]:
    """The running trials numbered below `number` that have not posted an architecture nor finished sampling."""
    return [t for t in trials if t.number < number and t.state == TrialState.RUNNING and ARCH_KEY not in t.user_attrs
            and STATUS not in t.user_attrs]


def fresh_claim(trial: FrozenTrial, now: float | None = None) -> bool:
    """Whether the trial's worker refreshed its claim within the grace (journal files: no heartbeats)."""
    at = trial.user_attrs.get(CLAIM_AT)
    return isinstance(at, (int, float)) and (now or time.time()) - at < grace_seconds()


class ArchClaims:
    """One worker's claims on architectures; it remembers when it first saw each trial still sampling."""

    def __init__(self, study: optuna.Study,
                 params_key: Callable[[Mapping[str, Any]], str | None] | None = None) -> None:
        """`params_key(params)`: the architecture key of a full set of parameters (None where they give none)."""
        self.heartbeats = has_heartbeats(study)
        self.params_key = params_key
        self.first_seen: dict[int, float] = {}  # trial number -> time.monotonic() when first seen sampling
        self.queued: dict[int, str | None] = {}  # trial number -> its fixed parameters' key (they never change)

    def live(self, trial: FrozenTrial) -> bool:
        """Whether a running trial's worker is alive as far as the storage can tell."""
        return self.heartbeats or fresh_claim(trial)

    def queued_key(self, trial: FrozenTrial) -> str | None:
        """The architecture key of an enqueued trial's fixed parameters (None when they do not give one)."""
        if trial.number not in self.queued:
            params = trial.system_attrs.get("fixed_params")  # where Optuna keeps what enqueue_trial was given
            self.queued[trial.number] = (self.params_key(params) if self.params_key is not None
                                         and isinstance(params, Mapping) else None)
        return self.queued[trial.number]

    def claim(self, trial: optuna.Trial, key: str, deadline: Deadline | None = None) -> FrozenTrial | None:
        """None when `trial` (which has posted `key`) now holds the architecture and marks itself training; else
        the trial that holds it. Waits while lower-numbered trials are still sampling (see the module)."""
        study = trial.study
        last_beat = time.monotonic()
        while True:
            trials = study.get_trials(deepcopy=False)
            owner = holder(trials, trial.number, key, self.live, self.queued_key)
            if owner is not None:
                return owner
            if not self._waiting_for(trials, trial.number):
                trial.set_user_attr(CLAIM_AT, time.time())  # the claim is as fresh as the win
                trial.set_user_attr(STATUS, TRAINING)
                return None
            check_interrupted()
            if deadline is not None:
                deadline.check("before its training began")
            time.sleep(POLL_S)
            if time.monotonic() - last_beat >= heartbeat_seconds():
                if self.heartbeats:
                    fail_stale_trials(study)  # a dead sampling worker's trial fails once its heartbeats stop
                else:
                    trial.set_user_attr(CLAIM_AT, time.time())  # waiting is no reason to look dead
                last_beat = time.monotonic()

    def _waiting_for(self, trials: Sequence[FrozenTrial], number: int) -> list[FrozenTrial]:
        """The lower-numbered trials still sampling that are worth waiting for: not seen sampling for longer than
        the grace by this worker, nor (without heartbeats) started longer than the grace ago."""
        now, grace = time.monotonic(), grace_seconds()
        waiting = []
        for t in still_sampling(trials, number):
            if now - self.first_seen.setdefault(t.number, now) >= grace:
                continue
            if not self.heartbeats and t.datetime_start is not None and \
                    (datetime.now() - t.datetime_start).total_seconds() >= grace:
                continue
            waiting.append(t)
        return waiting

    def held_keys(self, study: optuna.Study) -> set[str]:
        """The architectures that running trials of live workers won and are training."""
        return {k for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.user_attrs.get(STATUS) == TRAINING and self.live(t) and (k := trial_arch_key(t)) is not None}


class ClaimRefresher:
    """Refreshes a training trial's `claim_at` at most every heartbeat (what a journal file's readers go by)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial, self.last = trial, time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self.last >= heartbeat_seconds():
            self.trial.set_user_attr(CLAIM_AT, time.time())
            self.last = time.monotonic()
