"""The Optuna driver: sample -> cost -> budget check -> proxy training -> storage.

Every candidate's cost is counted at the deployment resolution before any training. One over
budget is never trained: it is recorded (cost, reason) as a PRUNED trial whose constraint
values are positive, so the sampler learns from it (`trial.set_constraint`), and its repair
(dsearch.search.budget: the closest architecture within the budget by a documented rule) is enqueued
as the next trial, so every sample leads to a trainable candidate. An architecture already
trained in the study is not trained again: the repeat is recorded as a duplicate with the
original's result, and one that another worker is training is not trained a second time (dsearch.search.claims).
A run that cannot find anything new to train stops and says why. Several `dsearch run` processes on one storage
cooperate on one study; RDB storages (SQLite by default, PostgreSQL/MySQL for many machines) carry heartbeats, so
a killed worker's trial is marked failed. A time limit (`deadline`) ends the run: no trial starts after it, and
the trial in training when it passes is stopped and kept as failed with the reason.

The pieces live beside this loop: `config` (the settings and their checks), `storage`, `objective`
(one trial), `trials` (reading a study's trials back), `workers` (several processes of this loop).
"""
from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import optuna
from optuna.trial import TrialState

from ..checks import check_int, check_number
from ..data import Dataset, data_facts, load_dataset, small_split_note
from ..errors import Deadline, DsearchError, check_interrupted, deferred_interrupts, write_problem
from ..model.archspec import ArchSpecError
from ..paths import default_storage
from ..training.advice import clamp_warning, steps_warning
from ..training.failures import failure_reason, optuna_log_level, recording_failures
from ..training.proxy import DeviceData, select_device
from .budget import build, feasible_count, feasible_params, random_recorder, repair
from .claims import ArchClaims
from .config import PRUNER_FACTORIES, SAMPLER_FACTORIES, SearchConfig, check_budget_reachable, check_config, check_fits
from .latency import check_latency_reachable, search_latency_model
from .objective import TIMED_OUT, Objective, warn_stderr
from .record import DATA_ATTR, REASON, STATUS, TRAINED, arch_key, name_metrics
from .resume import bind, check_resume
from .spaces import Space, load_space, sample
from .storage import open_storage, storage_writes
from .trials import study_split_seed, trained_keys, trained_trials_since, trial_counts, untrained_seconds
from .weights import artifact_dir

MAX_FAILURES_IN_A_ROW = 5  # a broken setup should not burn through every sample
STALE_AFTER = 6  # trials in a row that trained nothing new before a random untried candidate is enqueued
FRESH_ATTEMPTS = 300  # random samples (repaired) tried when looking for an untried candidate


@dataclass
class SearchSummary:
    study: optuna.Study
    storage_url: str
    resolution: int
    counts: dict[str, int]
    wall_s: float
    interrupted: bool = False
    asked: int = 0  # architectures this run was asked to train
    trained: int = 0  # ... and trained (this worker, this run)
    failed: int = 0  # trials that failed in this run
    last_failure: str | None = None  # the last failed trial's reason
    untrained_s: float = 0.0  # this run's time in trials that trained nothing (rejected, invalid, duplicate)
    stopped: str | None = None  # why the run stopped before training what was asked, when it could not go on
    exhausted: str | None = None  # set when every architecture within the budget has been trained
    timed_out: str | None = None  # the time limit that ended the run before it trained what was asked ("--timeout 5 s")
    cut: list[str] = field(default_factory=list)  # the trials it stopped in training: "trial 3 (stopped by ...)"

    def shortfall(self) -> str | None:
        """Why this run trained fewer architectures than asked, when trials failed; None otherwise (also when the
        time limit ended it: then fewer is what was asked for)."""
        if self.interrupted or self.timed_out or self.trained >= self.asked or not self.failed:
            return None
        return (f"{self.trained} of {self.asked} architectures trained: {self.failed} trial(s) failed "
                f"(last: {self.last_failure})")


def sampler_seed(seed: int, trials_before: int, worker: int) -> int:
    """The sampler seed of a run that starts with `trials_before` trials in the study, as worker `worker`.

    A distinct seed per start, so that a resumed run or another worker does not replay the same samples; the
    three values are hashed together, so that different --seed values never give one stream (a sum would: seed 1
    joining at trial 2 replayed seed 3 at trial 0). A fresh study's first worker samples with --seed itself.
    """
    if trials_before == 0 and worker == 0:
        return seed
    digest = hashlib.sha256(f"{seed}/{trials_before}/{worker}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def prepare_study(cfg: SearchConfig, study_name: str, storage_url: str, identity: dict[str, Any],
                  allow_changed_settings: bool = False, worker: int = 0) -> optuna.Study:
    """Create the study, or load it and check that it was made with the same settings (see dsearch.search.resume).

    `worker` numbers the parallel workers of one `dsearch run --jobs N` (0 for the first): each gets its own
    sampler seed, so that workers started at the same moment do not propose the same architectures.
    """
    storage = open_storage(storage_url)
    directions: list[Literal["maximize", "minimize"]] = ["maximize"]  # val acc, then MFLOPs for "multi"
    if cfg.objective == "multi":
        directions.append("minimize")
    try:
        existing = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        existing = None
    changes = check_resume(study_name, existing, identity, allow_changed_settings)
    seed = sampler_seed(cfg.seed, len(existing.get_trials(deepcopy=False)) if existing is not None else 0, worker)
    study = optuna.create_study(study_name=study_name, storage=storage, directions=directions, load_if_exists=True,
                                sampler=SAMPLER_FACTORIES[cfg.sampler](seed), pruner=PRUNER_FACTORIES[cfg.pruner]())
    bind(study, identity, asdict(cfg), existing is None, changes)
    target = cfg.cost_target
    name_metrics(study, cfg.objective, cfg.resolution or load_space(cfg.space).resolution,
                 target.short if target is not None else None)
    return study


def run_search(cfg: SearchConfig, study_name: str, storage_url: str | None = None, n_trials: int = 10,
               timeout: float | None = None, log: Callable[[str], None] = print,
               progress_factory: Callable[[int], Any] | None = None,
               trial_progress: Callable[[int, int], None] | None = None,
               allow_changed_settings: bool = False, worker: int | None = None,
               on_study: Callable[[optuna.Study, int], None] | None = None,
               shared_from: int | None = None, deadline: Deadline | None = None,
               warn: Callable[[str], None] = warn_stderr) -> SearchSummary:
    """Run (or resume) a search until this worker has trained `n_trials` architectures or its time is up.

    The time limit is `deadline` (a moment; what `dsearch run` passes, counted from its start), else `timeout`
    seconds from now: no trial starts after it, and the trial in training then is stopped and kept as failed.

    Every input is checked before anything is written, so bad input creates no study. A resume with
    other settings is refused unless `allow_changed_settings` (then the change is recorded on the study).
    `worker` numbers the parallel workers of one run (see dsearch.search.workers; None: a standalone run);
    `on_study(study, first)` is called once the study exists, before any trial, with the number this run's
    trials start from. With `shared_from` (the study's
    trial count when a parallel run began; -1: when this worker begins), `n_trials` counts what all the
    run's workers train from there on, and this worker starts no trial once those trained and those
    running reach it. `warn` hears what must be said even under --quiet (weights that could not be kept).
    A storage whose disk refuses a write (full, read-only) ends the run with one line (DsearchError).
    """
    check_config(cfg)
    optuna.logging.set_verbosity(optuna_log_level())  # dsearch prints its own one line per trial
    check_int(n_trials, "--n-trials", 1)
    if timeout is not None:
        check_number(timeout, "--timeout", low=0, low_open=True)
        deadline = deadline or Deadline.after(timeout)
    storage_url = storage_url or default_storage(study_name)
    space = load_space(cfg.space)
    data = load_dataset(cfg.dataset, cfg.data_dir, seed=cfg.seed)
    try:
        device = select_device(cfg.device)
    except (ValueError, RuntimeError) as err:
        raise DsearchError(str(err).splitlines()[0]) from None
    check_budget_reachable(space, data, cfg)  # before memory: an unreachable budget is what to fix first
    latency = search_latency_model(cfg, device)
    if latency is not None and cfg.cost_target is not None:
        check_latency_reachable(space, data, cfg, latency)
        if not worker:
            log(f"latency: predicted on {latency.table.describe()}, table {latency.table.path} "
                f"({len(latency.table.parts)} parts, {len(latency.table.networks)} whole networks so far)")
    check_fits(space, data, cfg, device)
    identity = cfg.identity(space, cfg.proxy.train_resolution or data.image_size[0])
    with storage_writes(storage_url):  # a full disk under the storage: one line, whichever write met it
        study = prepare_study(cfg, study_name, storage_url, identity, allow_changed_settings, worker or 0)
        split_seed = study_split_seed(study, cfg.seed)
        if split_seed != cfg.seed:  # every trial of a study is validated on the same images, whoever trains it
            data = load_dataset(cfg.dataset, cfg.data_dir, seed=split_seed)
            log(f"validating on the study's split (seed {split_seed}, the seed it was made with); --seed {cfg.seed} "
                "seeds this worker's sampler and training")
        small = small_split_note(data)
        if small:
            log(f"warning: {small}")
        if DATA_ATTR not in study.user_attrs:
            study.set_user_attr(DATA_ATTR, data_facts(data))
        device_data = DeviceData(data, device, cfg.proxy.train_subset, cfg.proxy.train_resolution)
        if not worker:  # every worker trains with the same settings on the same images: said once
            say_batch_warnings(cfg, len(device_data.train_x), log, warn)
        claims = ArchClaims(study, lambda params: params_key(space, data, cfg, params))
        objective = Objective(cfg, space, data, device_data, log, trial_progress, artifact_dir(study, storage_url),
                              worker, claims, deadline, warn)
        target, exhausted = _target(study, space, data, cfg, n_trials, log)
        bar = progress_factory(target) if progress_factory and target else None
        trained = 0
        failures_in_a_row = 0
        failed: list[str] = []  # this run's failure reasons
        cut: list[str] = []  # the trials the time limit stopped in training
        stale = 0  # trials in a row that trained nothing new
        stopped: str | None = None
        first = len(study.get_trials(deepcopy=False))  # this run's trials come after
        rng = random.Random(f"{cfg.seed}/{first}" + (f"/{worker}" if worker else ""))  # worker 0 as a standalone run
        if shared_from is not None and shared_from < 0:
            shared_from = first
        if on_study is not None:
            on_study(study, first)

        def run_done() -> int:
            """Architectures this run has trained: this worker's, or with shared_from every worker's."""
            return trained if shared_from is None else len(trained_trials_since(study, shared_from))

        def shared_done(first_of_run: int) -> bool:
            """Whether a shared run's trained and running trials (all workers') reach the target."""
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            busy = sum(t.number >= first_of_run for t in running)  # this run's; not a dead worker's stale trial
            return len(trained_trials_since(study, first_of_run)) + busy >= target

        def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            nonlocal trained, failures_in_a_row, stale, stopped, exhausted
            check_interrupted()  # Optuna has written this trial's state: now an interrupt can stop the run
            if shared_from is not None and shared_done(shared_from):  # this one's trial included
                study.stop()
            if trial.state == TrialState.FAIL and trial.user_attrs.get(TIMED_OUT):  # the user's limit, not a failure
                cut.append(f"trial {trial.number} ({failure_reason(trial)})")
                log(f"trial {trial.number}: {failure_reason(trial)}; kept as failed (not trained)")
                study.stop()
                return
            if trial.state == TrialState.FAIL:
                failures_in_a_row += 1
                reason = failure_reason(trial)
                failed.append(reason)
                log(f"trial {trial.number}: failed: {reason}")
                if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                    stopped = f"{failures_in_a_row} trials in a row failed; last error: {reason}"
                    log(f"stopping: {stopped}")
                    study.stop()
                return
            # Only training resets the counts: rejections and repeats between failures do not.
            if trial.user_attrs.get(TRAINED) and trial.user_attrs.get(STATUS) != "duplicate":
                failures_in_a_row, stale = 0, 0
                trained += 1
                if bar is not None:
                    bar.update(run_done() - bar.n)
                if shared_from is None and trained >= target:
                    study.stop()
                return
            stale += 1
            if stale >= STALE_AFTER and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                held = claims.held_keys(study)  # what other workers are training is not new either
                params = fresh_candidate(study, space, data, cfg, rng, held)
                if params is None:
                    count = feasible_count(space, cfg.counted_budget, data.in_channels, data.num_classes)
                    if count is not None and count <= len(trained_keys(study) | held):
                        exhausted = all_trained(count, bool(held - trained_keys(study)))
                    else:
                        stopped = (f"the sampler proposed nothing new in {stale} trials and {FRESH_ATTEMPTS} random "
                                   "samples found no untrained architecture within the budget")
                    log(f"stopping: {exhausted or stopped}")
                    study.stop()
                    return
                study.enqueue_trial(params, user_attrs={"fresh_after": stale})
                log(f"the sampler proposed nothing new in {stale} trials: queued an untried random architecture")
                stale = 0

        recorded = recording_failures(objective)
        running: list[optuna.Trial] = []  # this worker's trial, while it runs
        refused: list[Exception] = []  # a write the storage's disk refused inside a trial

        def one_trial(trial: optuna.Trial) -> float | tuple[float, float]:
            running[:] = [trial]
            try:
                return recorded(trial)
            except Exception as err:
                if write_problem(err) is not None:  # every next trial would meet the same full disk
                    refused.append(err)
                    trial.study.stop()
                raise

        start = time.perf_counter()
        interrupted = False
        if target and not exhausted and not (shared_from is not None and shared_done(shared_from)) \
                and not (deadline is not None and deadline.passed()):  # a late worker; a limit spent on loading
            try:
                with deferred_interrupts():
                    study.optimize(one_trial, n_trials=1000 + 100 * target,
                                   timeout=None if deadline is None else deadline.left(),
                                   callbacks=[after_trial], catch=(Exception,), gc_after_trial=False,
                                   show_progress_bar=False)
                if refused:
                    raise refused[0]  # storage_writes makes it the storage's one line
            except KeyboardInterrupt:
                interrupted = True
            except Exception as err:
                why = write_problem(err) or type(err).__name__
                fail_if_running(running[0] if running else None, f"the run ended: {why}")
                raise
            finally:
                if bar is not None:
                    bar.close()
        wall = time.perf_counter() - start
        this_run = study.get_trials(deepcopy=False)[first:]
        # A shared run's workers stop as the others take the last trials: the run as a whole is judged by its caller.
        if not interrupted and not stopped and not exhausted and trained < target and deadline is None \
                and shared_from is None:
            stopped = f"sampled {len(this_run)} trials without training {target} architectures"
        if target < n_trials and run_done() >= target and not exhausted:
            exhausted = all_trained(len(trained_keys(study)))
        timed_out = None
        if deadline is not None and (cut or (deadline.passed() and not interrupted and not stopped and not exhausted
                                             and run_done() < target)):
            timed_out = deadline.what
        return SearchSummary(study=study, storage_url=storage_url, resolution=cfg.resolution or space.resolution,
                             counts=trial_counts(study), wall_s=wall, interrupted=interrupted, asked=target,
                             trained=trained, failed=len(failed), last_failure=failed[-1] if failed else None,
                             untrained_s=untrained_seconds(this_run), stopped=stopped, exhausted=exhausted,
                             timed_out=timed_out, cut=cut)


def say_batch_warnings(cfg: SearchConfig, n_train: int, log: Callable[[str], None],
                       warn: Callable[[str], None]) -> None:
    """Before training: a batch the split cannot fill (whatever --quiet says: it overrides a setting), too few steps."""
    clamped = clamp_warning(cfg.proxy, n_train)
    if clamped:
        warn(f"warning: {clamped}")
    few = steps_warning(cfg.proxy, n_train)
    if few:
        log(f"warning: {few}")


def fail_if_running(trial: optuna.Trial | None, reason: str) -> None:
    """Mark this worker's trial failed, with `reason`, when Optuna could not finish it, where the storage still
    takes these small writes; where not (a full disk), the next worker to start a trial marks it failed once its
    heartbeats stop (an RDB storage)."""
    if trial is None:
        return
    try:
        if trial.study.get_trials(deepcopy=False)[trial.number].state != TrialState.RUNNING:
            return
    except Exception:  # noqa: BLE001 - best effort: the error that ended the run is what the user must see
        return
    for write in (lambda: trial.set_user_attr(STATUS, "failed"), lambda: trial.set_user_attr(REASON, reason),
                  lambda: trial.study.tell(trial, state=TrialState.FAIL)):
        try:
            write()
        except Exception:  # noqa: BLE001 - as above
            pass


def _target(study: optuna.Study, space: Space, data: Dataset, cfg: SearchConfig, n_trials: int,
            log: Callable[[str], None]) -> tuple[int, str | None]:
    """How many architectures this run trains: n_trials, or fewer where the space has fewer left within the budget."""
    count = feasible_count(space, cfg.counted_budget, data.in_channels, data.num_classes)
    if count is None:
        return n_trials, None
    left = count - len(trained_keys(study))
    if left <= 0:
        return 0, all_trained(count)
    if left < n_trials:
        log(f"only {count} architectures of space '{space.name}' fit the budget and {left} are untrained: "
            f"training those {left}")
        return left, None
    return n_trials, None


def all_trained(count: int, some_in_training: bool = False) -> str:
    if some_in_training:
        return f"all {count} architectures of the space within the budget are trained or being trained by other workers"
    return f"all {count} architectures of the space within the budget are trained"


def params_key(space: Space, data: Dataset, cfg: SearchConfig, params: Mapping[str, Any]) -> str | None:
    """The architecture key of a full set of the space's parameters; None when they are partial or invalid."""
    try:
        return arch_key(build(space, params, data.in_channels, data.num_classes, cfg.resolution)[0])
    except (KeyError, ArchSpecError, DsearchError):
        return None


def fresh_candidate(study: optuna.Study, space: Space, data: Dataset, cfg: SearchConfig,
                    rng: random.Random, held: set[str] | None = None) -> dict[str, Any] | None:
    """The parameters of a random architecture within the budget (repaired) that the study has not trained and
    that no running trial (`held`: their keys) is training."""
    known = trained_keys(study) | (held or set())
    feasible = feasible_params(space, cfg.counted_budget, data.in_channels, data.num_classes)
    if feasible is not None:  # a small space: pick straight from the architectures that fit
        untried = [p for p in feasible if arch_key(build(space, p, data.in_channels, data.num_classes,
                                                         cfg.resolution)[0]) not in known]
        return rng.choice(untried) if untried else None
    for _ in range(FRESH_ATTEMPTS):
        recorder = random_recorder(rng)
        try:
            sample(space, recorder, data.in_channels, data.num_classes, cfg.resolution)
        except ArchSpecError:
            continue
        spec, params, _ = repair(space, recorder.used, cfg.counted_budget, data.in_channels, data.num_classes)
        if arch_key(spec) not in known:
            return params
    return None
