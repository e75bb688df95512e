"""Claims: how workers sharing a storage split trainings kept as study attributes without training one twice.

A worker writes a claim (its id and the time) on the study before it trains, refreshes it at most every
heartbeat while training, and removes it when the result is kept. Another worker leaves a training alone while
its claim is live, and takes it over once the claim has gone GRACE_HEARTBEATS heartbeats without a refresh (its
worker died).
"""
from __future__ import annotations

import time
from typing import Any

import optuna

from .storage import GRACE_HEARTBEATS, heartbeat_seconds


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
