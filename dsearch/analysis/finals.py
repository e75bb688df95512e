"""The finals of a search: rungs of rising fidelity over its best candidates, ending in a verdict with intervals.

Rung 0 is the search itself: one proxy training per architecture. Rung 1 trains the best 1/eta of them
(dsearch.analysis.promotion's rule) again with the proxy at more seeds; a candidate's rung-1 score is its mean
over every proxy seed. Rung 2, the final, trains the best 1/eta of rung 1 with the full schedule of
`dsearch train` at `seeds` seeds, and with them the best hand-designed baseline within the budget (MobileNetV2
and its conv swaps, which go through rungs 0 and 1 the same way). Every training of a rung uses the study's
validation split, so all of them are scored on the same images.

Each training is kept on the study the moment it finishes (user attr `dsearch_rung<R>.<target>.s<seed>`; the
final rung's weights as an artifact), and one already kept is never trained again: a killed run resumes where
it stopped, and workers sharing the storage split the trainings (a claim per training, as the audit's). The plan
(the candidates and settings) is stored as `dsearch_finals` when the finals begin, so a resumed run finishes the
same finals; the verdict is stored as `dsearch_verdict`, and the pick's fully trained weights (its seed with the
best validation accuracy) become its `trained.N` weights, which `dsearch export --trial best` takes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import optuna
import pandas as pd
import torch
from optuna.trial import TrialState

from ..checks import is_int
from ..data import load_dataset
from ..errors import Deadline, DsearchError, check_interrupted, deferred_interrupts
from ..latency import LatencyModel
from ..model.archspec import ArchSpec
from ..search.budget import Budget
from ..search.claims import Claim, claim_is_live
from ..search.record import (
    CONFIG_ATTR,
    FINALS_CLAIM_PREFIX,
    IDENTITY_ATTR,
    PLAN_ATTR,
    made_by,
    stored_settings,
    study_budget,
)
from ..search.resume import plain
from ..search.spaces import load_space
from ..search.storage import heartbeat_seconds
from ..search.trials import study_split_seed
from ..search.weights import artifact_dir, keep_full_weights, upload_weights
from ..training.advice import clamp_warning, steps_warning
from ..training.failures import check_finite_state
from ..training.full import FullTrainConfig, full_proxy
from ..training.proxy import DeviceData, ProxyConfig, TrainingDiverged, fit_batch, select_device, train_proxy
from ..training.schedule import settings_key
from .baselines import KINDS, Baseline, baseline_specs, study_deployment_budget, study_latency, study_search_config
from .pareto import arch_of, trained_within, trials_frame
from .promotion import promote, promoted_count
from .verdict import VERDICT_ATTR, Finalist, make_verdict, record_key, rung_record_problem, verdict_plan

CLAIM_PREFIX = FINALS_CLAIM_PREFIX
POLL_S = 2  # seconds between looks at the study while another worker finishes a rung's last trainings
CLAIM_SETTLE_S = 0.2  # between writing a claim and checking it holds (two workers claiming at once: one keeps it)
Log = Callable[[str], None]


@dataclass(frozen=True)
class FinalsConfig:
    eta: int = 3  # each rung keeps the best 1/eta of the one below
    proxy_seeds: int = 3  # rung 1: proxy trainings per candidate, the search's own included
    seeds: int = 3  # the final rung: full-schedule trainings per finalist
    epochs: int | None = None  # the final rung's epochs; None: `dsearch train`'s
    baselines: bool = True  # the best baseline within the budget takes part
    device: str = "auto"


@dataclass(frozen=True)
class Candidate:
    """A trial or a baseline in the finals."""

    target: str  # "trial7" or "baseline:<label>": the record keys' middle part
    key: str  # as a reader sees it: "trial 7" or the baseline's label
    trial: int | None
    spec: ArchSpec
    mflops: float
    mparams: float
    latency_ms: float | None = None  # predicted on the study's latency target (None: the study has none)


def check_finals(cfg: FinalsConfig) -> None:
    for name, value, low in (("--eta", cfg.eta, 2), ("--proxy-seeds", cfg.proxy_seeds, 1),
                             ("--final-seeds", cfg.seeds, 2)):
        if not is_int(value, low):
            raise DsearchError(f"{name} must be a whole number >= {low}, got {value!r}")
    if cfg.epochs is not None and (not isinstance(cfg.epochs, int) or cfg.epochs < 1):
        raise DsearchError(f"--final-epochs must be a whole number >= 1, got {cfg.epochs!r}")


def wait_for_search(study: optuna.Study, log: Log, deadline: Deadline | None = None) -> None:
    """Wait while other workers still train search trials: the finals rank every trial of the study."""
    said = False
    while True:
        if deadline is not None:
            deadline.check("while the finals waited for the search")
        with warnings.catch_warnings():  # Optuna calls it experimental; dsearch's search relies on it already
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial, after its missed heartbeats
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return
        if not said:
            log(f"finals: waiting for {len(running)} search trial(s) still training in other workers")
            said = True
        time.sleep(min(5, heartbeat_seconds()))
        check_interrupted()


def _candidates(study: optuna.Study, frame: pd.DataFrame, numbers: list[int],
                latency: LatencyModel | None = None) -> list[Candidate]:
    by_trial = frame.set_index("trial")
    found = []
    for n in numbers:
        spec = arch_of(study, n)
        found.append(Candidate(f"trial{n}", f"trial {n}", n, spec, float(by_trial.loc[n, "mflops"]),
                               float(by_trial.loc[n, "mparams"]),
                               None if latency is None else _predicted(by_trial.loc[n, "latency_ms"], spec, latency)))
    return found


def _predicted(stored: Any, spec: ArchSpec, latency: LatencyModel) -> float:
    """The latency the search predicted for a trial (as it ranked it), else a prediction now."""
    return float(stored) if isinstance(stored, int | float) and stored == stored else latency.predict_ms(spec)


def baseline_kinds(space: str) -> list[str]:
    """The baselines' conv kinds for a study of `space`: MobileNetV2 as published (dsc) and with each other
    baseline kind the space itself offers, so that the references speak the space's vocabulary; every baseline
    kind when the space file cannot be read any more."""
    try:
        offered = {kind for stage in load_space(space).stages for kind in stage.conv}
    except DsearchError:
        return list(KINDS)
    return [k for k in KINDS if k == "dsc" or k in offered]


def _baseline_candidates(study: optuna.Study, space: str, in_channels: int, num_classes: int,
                         latency: LatencyModel | None = None) -> list[Candidate]:
    budget, resolution = study_deployment_budget(study)
    predict = latency.predict_ms if latency is not None else None
    try:
        found: list[Baseline] = baseline_specs(budget, in_channels, num_classes, resolution, baseline_kinds(space),
                                               latency=predict)
    except DsearchError:
        return []  # no budget, or nothing hand-designed fits it: the verdict says so
    return [Candidate(f"baseline:{b.label}", b.label, None, b.spec, b.cost.mflops, b.cost.mparams,
                      None if predict is None else predict(b.spec)) for b in found]


# Settings that make a study's finals the ones a rerun of `dsearch run` asks for (the seed, device and sampler do
# not change what the finals rank).
SAME_SEARCH = ("space", "dataset", "budget_mflops", "budget_mparams", "resolution", "objective", "proxy")


def pending_finals(study: optuna.Study, search: dict[str, Any]) -> dict[str, Any] | None:
    """The study's interrupted finals (a plan without its verdict) when `search` (SearchConfig as a dict) is the
    search they belong to; else None."""
    plan = stored_plan(study)
    if plan is None or verdict_plan(study) == plan["id"]:
        return None
    stored = stored_settings(study, CONFIG_ATTR)
    same = all(plain(stored.get(k)) == plain(search.get(k)) for k in SAME_SEARCH if k != "proxy")
    proxy_now, proxy_then = dict(plain(search.get("proxy") or {})), dict(stored.get("proxy") or {})
    proxy_now.pop("seed", None)
    proxy_then.pop("seed", None)
    return plan if same and proxy_now == proxy_then else None


def stored_plan(study: optuna.Study) -> dict[str, Any] | None:
    """The study's stored finals plan when it is one (`plan_finals` wrote it); None when absent or damaged, so that
    the finals plan again and overwrite it (a hand-edited or half-written plan cannot be resumed)."""
    plan = study.user_attrs.get(PLAN_ATTR)
    if not isinstance(plan, dict) or not isinstance(plan.get("id"), str) or not is_int(plan.get("seed"), 0):
        return None
    trials, config = plan.get("trials"), plan.get("config")
    fields = {f.name for f in dataclasses.fields(FinalsConfig)}
    if not isinstance(trials, list) or not trials or not all(is_int(n, 0) for n in trials):
        return None
    if not isinstance(config, dict) or not set(config) <= fields:
        return None
    try:
        check_finals(FinalsConfig(**config))
    except DsearchError:
        return None
    return plan


def plan_finals(study: optuna.Study, frame: pd.DataFrame, cfg: FinalsConfig, seed: int) -> dict[str, Any]:
    """The finals' plan: a stored one that has no verdict yet (a resumed run), else a new one over every trained
    trial within the budget (`frame`: the study's trials_frame)."""
    stored = stored_plan(study)
    if stored is not None and verdict_plan(study) != stored["id"]:
        return stored
    numbers = sorted(int(n) for n in trained_within(frame, study_budget(study))["trial"])
    if not numbers:
        raise DsearchError("the finals need trained trials within the budget; the search trained none")
    config = {k: v for k, v in asdict(cfg).items() if k != "device"}  # where it trains changes no result
    # The id is the plan's content: workers that plan the same finals at once write the same plan.
    ident = hashlib.sha256(json.dumps([numbers, seed, config], sort_keys=True).encode()).hexdigest()[:16]
    plan = plain({"id": ident, "trials": numbers, "seed": seed, "config": config, "made": made_by()})
    study.set_user_attr(PLAN_ATTR, plan)
    return plan


class _Trainer:
    """Trains one candidate at one seed for a rung, keeping the result on the study (and splitting work by claims)."""

    def __init__(self, study: optuna.Study, url: str, data: Any, device: torch.device, proxy: ProxyConfig,
                 full: ProxyConfig, log: Log, progress: Callable[[int, int], None] | None,
                 deadline: Deadline | None = None, lane: int = 0) -> None:
        self.study, self.url, self.log, self.progress, self.deadline = study, url, log, progress, deadline
        self.proxy_data = DeviceData(data, device, proxy.train_subset, proxy.train_resolution)
        self.full_data = DeviceData(data, device, None, proxy.train_resolution)
        # The batches used (a larger one is clamped to the split, as train_proxy does): what each record's config says.
        self.proxy = fit_batch(proxy, len(self.proxy_data.train_x))
        self.full = fit_batch(full, len(self.full_data.train_x))
        self.worker = uuid.uuid4().hex
        self.lane = lane  # workers started together take different free trainings first, so claims rarely collide

    def ensure(self, rung: int, jobs: list[tuple[Candidate, int]]) -> dict[tuple[str, int], dict[str, Any]]:
        """Every (candidate, seed) of `jobs` trained for `rung` (kept ones reused); their records."""
        keys = {(c.target, s): record_key(rung, c.target, s) for c, s in jobs}
        waiting_said = False
        while True:
            attrs = self.study.user_attrs
            # A damaged record (hand-edited, another version's) is trained again and overwritten.
            missing = [(c, s) for c, s in jobs if rung_record_problem(attrs.get(keys[(c.target, s)])) is not None]
            if not missing:
                return {k: attrs[key] for k, key in keys.items()}
            free = [(c, s) for c, s in missing
                    if not claim_is_live(attrs.get(CLAIM_PREFIX + keys[(c.target, s)]), self.worker)]
            if not free:
                if not waiting_said:
                    self.log(f"finals: waiting for {len(missing)} training(s) of rung {rung} in another worker")
                    waiting_said = True
                time.sleep(min(POLL_S, heartbeat_seconds()))
                check_interrupted()
                if self.deadline is not None:
                    self.deadline.check(f"while the finals waited for rung {rung} trainings in another worker")
                continue
            candidate, seed = free[-1 - (self.lane - 1) % len(free)] if self.lane else free[0]
            key = keys[(candidate.target, seed)]
            claim = Claim(self.study, CLAIM_PREFIX + key, self.worker)
            claim.refresh(force=True)
            time.sleep(CLAIM_SETTLE_S)  # a worker that read the attrs before this claim and claims too has written
            if not claim.held():
                continue
            try:
                record = self._train(rung, candidate, seed, claim)
                self.study.set_user_attr(key, record)
            finally:
                claim.release()
            what = (f"val {record['val_acc']:.4f}, test {record['test_acc']:.4f}" if record["status"] == "complete"
                    else f"failed: {record['reason']}")
            self.log(f"finals: rung {rung} ({'full schedule' if rung == 2 else 'proxy'}, seed {seed}): "
                     f"{candidate.key}: {what} ({record['train_time_s']:.0f} s)")

    def _train(self, rung: int, candidate: Candidate, seed: int, claim: Claim) -> dict[str, Any]:
        final = rung == 2
        cfg = replace(self.full if final else self.proxy, seed=seed)
        data = self.full_data if final else self.proxy_data

        def on_step(step: int, total: int) -> None:
            claim.refresh()
            if self.progress is not None:
                self.progress(step, total)

        record: dict[str, Any] = {"rung": rung, "target": candidate.target, "seed": seed, "epochs": cfg.epochs,
                                  "config": settings_key(cfg), "train_resolution": data.size,
                                  "cpu_threads": torch.get_num_threads(), "made": made_by()}
        start = time.perf_counter()
        try:
            result = train_proxy(candidate.spec, data, cfg, progress=on_step, deadline=self.deadline)
            check_finite_state(result.state)
        except (TrainingDiverged, DsearchError) as err:
            return plain({**record, "status": "failed", "reason": str(err), "val_acc": None, "test_acc": None,
                          "train_time_s": round(time.perf_counter() - start, 1)})
        record.update({"status": "complete", "val_acc": result.val_acc, "test_acc": result.test_acc,
                       "history": result.history, "train_time_s": round(result.train_time_s, 1),
                       "device": result.device})
        if final and result.state is not None:
            record["weights_artifact"] = upload_weights(artifact_dir(self.study, self.url), result.state, self.study,
                                                        f"{candidate.target.replace(':', '-')}-full-s{seed}.pt")
        return plain(record)


def _score(records: list[dict[str, Any]]) -> float | None:
    values = [r["val_acc"] for r in records if r.get("status") == "complete"]
    return sum(values) / len(values) if values else None


@deferred_interrupts()  # Ctrl-C and SIGTERM stop it between storage writes, never inside one
def run_finals(study: optuna.Study, url: str, cfg: FinalsConfig = FinalsConfig(), *, seed: int | None = None,
               log: Log = print, progress: Callable[[int, int], None] | None = None,
               deadline: Deadline | None = None, lane: int = 0) -> dict[str, Any]:
    """Run (or resume) the finals of a searched study and store its verdict; returns the verdict.

    At `deadline` (the command's time limit) the training in progress stops, is not kept, and TimedOut is
    raised: the finals are left as after Ctrl-C, and the next run resumes them. `lane`: this worker's index among
    workers started together on the finals (see `run_finals_parallel`).
    """
    check_finals(cfg)
    search = study_search_config(study)
    seed = search.seed if seed is None else seed
    wait_for_search(study, log, deadline)
    frame = trials_frame(study)  # read once: the search has finished
    plan = plan_finals(study, frame, cfg, seed)
    stored = {k: v for k, v in (plan.get("config") or {}).items() if k != "device"}
    cfg = FinalsConfig(**{**asdict(cfg), **stored})  # a resumed plan keeps its own settings
    seed = int(plan["seed"])
    data = load_dataset(search.dataset, search.data_dir, seed=study_split_seed(study, search.seed))
    try:
        device = select_device(cfg.device)
    except (ValueError, RuntimeError) as err:
        raise DsearchError(str(err).splitlines()[0]) from None
    identity = stored_settings(study, IDENTITY_ATTR)
    proxy = replace(search.proxy, train_resolution=identity.get("train_resolution") or search.proxy.train_resolution)
    full_cfg = FullTrainConfig().proxy
    asked = full_cfg if cfg.epochs is None else replace(full_cfg, epochs=cfg.epochs)
    full = replace(full_proxy(asked, len(data.train_x)), train_resolution=proxy.train_resolution)
    for note in (clamp_warning(asked, len(data.train_x)), steps_warning(full, len(data.train_x), subset=False)):
        if note:  # the full schedule's batch against all the training images (the search said the proxy's)
            log(f"finals: warning: full schedule: {note}")
    trainer = _Trainer(study, url, data, device, proxy, full, log, progress, deadline, lane)

    latency = study_latency(study, log)
    trials = _candidates(study, frame, list(plan["trials"]), latency)
    baselines = (_baseline_candidates(study, search.space, data.in_channels, data.num_classes, latency)
                 if cfg.baselines else [])
    val_acc = frame.set_index("trial")["val_acc"]
    rung0: dict[str, float | None] = {c.target: float(val_acc[c.trial]) for c in trials}
    log(f"finals: {len(trials)} trained trial(s) within the budget, {len(baselines)} baseline(s); "
        f"each rung keeps the best 1/{cfg.eta}")
    if baselines:  # rung 0 for the baselines: the search's proxy at the search's seed
        kept = trainer.ensure(0, [(b, seed) for b in baselines])
        rung0.update({b.target: _score([kept[(b.target, seed)]]) for b in baselines})

    # Rung 1: the proxy at more seeds for the best 1/eta of the trials (and every baseline).
    objective = search.objective
    scores0 = {c.target: v for c in trials if (v := rung0.get(c.target)) is not None}
    scored = [c for c in trials if c.target in scores0]
    def best_share(cands: list[Candidate], scores: dict[str, float]) -> list[Candidate]:
        """The best 1/eta of `cands` by non-dominated rank (score alone for an accuracy study)."""
        costs = None if objective == "accuracy" else [c.mflops if c.latency_ms is None else c.latency_ms
                                                      for c in cands]
        return [cands[i] for i in promote([scores[c.target] for c in cands], costs,
                                          promoted_count(len(cands), cfg.eta))]

    rung1_trials = best_share(scored, scores0)
    more = [seed + k for k in range(1, cfg.proxy_seeds)]
    log(f"finals: rung 1 (proxy at {cfg.proxy_seeds} seeds): {', '.join(c.key for c in rung1_trials)}"
        + (" and the baselines" if baselines else ""))
    kept1 = trainer.ensure(1, [(c, s) for c in [*rung1_trials, *baselines] for s in more])
    rung1: dict[str, float] = {}
    for c in [*rung1_trials, *baselines]:
        first = {"status": "complete", "val_acc": rung0[c.target]} if rung0.get(c.target) is not None else {}
        score = _score([first, *(kept1[(c.target, s)] for s in more)])
        if score is not None:
            rung1[c.target] = score

    # Rung 2: the full schedule at `seeds` seeds for the best 1/eta of rung 1, and the best baseline.
    scored1 = [c for c in rung1_trials if c.target in rung1]
    if not scored1:
        raise DsearchError("every rung-1 training failed; see `dsearch show` and the trials' reasons")
    finalists = best_share(scored1, rung1)
    ranked_baselines = sorted((b for b in baselines if b.target in rung1), key=lambda b: (-rung1[b.target], b.mflops))
    best_baseline = ranked_baselines[0] if ranked_baselines else None
    seeds = [seed + k for k in range(cfg.seeds)]
    log(f"finals: rung 2 (full schedule, {full.epochs} epochs, seeds {', '.join(map(str, seeds))}): "
        f"{', '.join(c.key for c in finalists)}" + (f" and the best baseline, {best_baseline.key}"
                                                    if best_baseline else ""))
    kept2 = trainer.ensure(2, [(c, s) for c in [*finalists, *([best_baseline] if best_baseline else [])]
                               for s in seeds])
    verdict = _verdict(study, plan, finalists, best_baseline, kept2, seeds, latency, log)
    study.set_user_attr(VERDICT_ATTR, verdict)
    _keep_pick_weights(study, verdict, kept2, finalists)
    return verdict


def _finalist(c: Candidate, kept: dict[tuple[str, int], dict[str, Any]], seeds: list[int],
              budget: Budget, latency: LatencyModel | None = None) -> Finalist | None:
    """The candidate's full-schedule results; with a latency target, its latency measured whole on it (predicted
    where the table comes from another machine), which its latency budget is checked against."""
    records = [kept[(c.target, s)] for s in seeds]
    if any(r.get("status") != "complete" for r in records):
        return None
    costs: dict[str, Any] = {"mflops": c.mflops, "mparams": c.mparams}
    ms = p90 = None
    measured = True
    if latency is not None:
        if latency.local:
            m = latency.measure(c.spec)
            ms, p90 = m.median_ms, m.p90_ms
        else:
            ms, measured = latency.predict_ms(c.spec), False
        costs["latency_ms"] = ms
    return Finalist(c.key, c.trial, c.spec.summary(), c.mflops, c.mparams, budget.fits_record(costs),
                    tuple(r["val_acc"] for r in records), tuple(r["test_acc"] for r in records), ms, p90, measured)


def _verdict(study: optuna.Study, plan: dict[str, Any], finalists: list[Candidate], baseline: Candidate | None,
             kept: dict[tuple[str, int], dict[str, Any]], seeds: list[int], latency: LatencyModel | None = None,
             log: Log = print) -> dict[str, Any]:
    budget = study_budget(study)
    if latency is not None:
        how = "measured whole" if latency.local else "predicted (the table is from another machine)"
        log(f"finals: the finalists' latency on {latency.target.short}, {how}")
    done = [f for c in finalists if (f := _finalist(c, kept, seeds, budget, latency)) is not None]
    if not done:
        raise DsearchError("every finalist had a failed full-schedule training; see the finals' log lines")
    if not any(f.within_budget for f in done):
        raise DsearchError(f"no finalist is within the budget ({budget.describe()}) as measured on the target; "
                           "the predictor's error put them over it: lower --budget-ms a little below the limit you "
                           "need, or rerun the finals")
    base = _finalist(baseline, kept, seeds, budget, latency) if baseline is not None else None
    _, resolution = study_deployment_budget(study)
    target = latency.target.short if latency is not None else None
    verdict = make_verdict(done, base, resolution, seeds, cost="latency_ms" if latency else "mflops", target=target)
    train = stored_settings(study, CONFIG_ATTR).get("proxy") or {}
    measured_on = {"latency_machine": latency.table.describe()} if latency is not None else {}
    return plain({**verdict, **measured_on, "plan": plan["id"], "budget": budget.as_record(), "made": made_by(),
                  "schedule": next(iter(kept.values()))["config"], "train_resolution":
                  next(iter(kept.values()))["train_resolution"], "proxy": train,
                  "baseline_absent": None if baseline is not None else "no baseline fits the budget"})


def _keep_pick_weights(study: optuna.Study, verdict: dict[str, Any], kept: dict[tuple[str, int], dict[str, Any]],
                       finalists: list[Candidate]) -> None:
    """The pick's fully trained weights (its seed with the best validation accuracy) as its `trained.N` weights."""
    pick = next(c for c in finalists if c.trial == verdict["pick"])
    seed, record = max(((s, r) for (t, s), r in kept.items() if t == pick.target),
                       key=lambda sr: (sr[1]["val_acc"], -sr[0]))
    kept_facts = ("epochs", "val_acc", "test_acc", "train_resolution", "train_time_s", "device", "history", "config")
    facts: dict[str, Any] = {k: record[k] for k in kept_facts if k in record}
    dataset = stored_settings(study, CONFIG_ATTR).get("dataset")
    assert pick.trial is not None  # the pick is a trial, never a baseline
    keep_full_weights(study, pick.trial, record["weights_artifact"],
                      {**facts, "dataset": dataset, "seed": seed, "from": "the finals' verdict"})
