"""Proxy audit: does the search's cheap proxy rank architectures the way full training does?

A stratified sample of a study's trained trials (always the Pareto front, the rest spread over
quantile strata of proxy validation accuracy x MFLOPs) is retrained with the full schedule of
`dsearch train`, and the rank agreement of proxy validation accuracy with full test accuracy
(Kendall tau-b, Spearman rho, bootstrap intervals) is set next to that of the trivial predictors
MFLOPs and params ("bigger is better").

Each full training is kept as `dsearch train STUDY --trial N` keeps it (weights + study user attr
`trained.N`) the moment it finishes, and one made with the same schedule is reused: so an
interrupted audit resumes where it stopped, and workers sharing the storage split the trials
(a claim per trial on the study, refreshed while it trains, taken over when its worker went quiet).
The result is stored on the study as user attr `dsearch_audit`.
"""
from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd

from ..checks import check_device
from ..data import EMBEDDED_NAME
from ..errors import DsearchError, check_interrupted, deferred_interrupts
from ..search.claims import Claim, claim_is_live
from ..search.record import AUDIT_ATTR as AUDIT_ATTR
from ..search.record import AUDIT_CLAIM_PREFIX, CONFIG_ATTR, IDENTITY_ATTR, made_by, stored_settings
from ..search.storage import heartbeat_seconds
from ..search.trials import trained_trials
from ..search.weights import artifact_dir, save_full_weights
from ..training.full import FullTrainConfig, full_proxy, kept_state, study_full_config, train_full
from ..training.schedule import schedule_key
from .baselines import run_baselines, trained_ok
from .pareto import arch_of, pareto_front, trained, trials_frame
from .rank import LEVEL, RESAMPLES, SEED, agreement, average_ranks, paired_difference

CLAIM_PREFIX = AUDIT_CLAIM_PREFIX  # + trial number: which worker is training it for an audit, and when it said so
DEFAULT_K = 6
MIN_TRIALS = 3  # fewer points have no ranking worth an interval
# predictor -> (column of the audited trials, how a report names it)
PREDICTORS = {"proxy": ("proxy_val_acc", "proxy val acc"), "mflops": ("mflops", "MFLOPs"),
              "mparams": ("mparams", "params")}
Log = Callable[[str], None]


@dataclass(frozen=True)
class AuditOutcome:
    """What `run_audit` stored (`audit`, the `dsearch_audit` dict) and the baselines it ran or found."""

    audit: dict[str, Any]
    baselines: list[dict[str, Any]]
    trained: tuple[int, ...]  # trials this worker trained now
    reused: tuple[int, ...]  # trials whose full training was already kept with the audit's schedule


def study_audit(study: optuna.Study) -> dict[str, Any] | None:
    """The audit stored on the study; None when it has not been audited."""
    value = study.user_attrs.get(AUDIT_ATTR)
    return value if isinstance(value, dict) else None


def audit_candidates(study: optuna.Study) -> pd.DataFrame:
    """The trials frame of the trials that trained an architecture to the end (each architecture once)."""
    numbers = {t.number for t in trained_trials(study)}
    done = trained(trials_frame(study))
    if done.empty:
        return done
    # Pruned or early-stopped trials are left out: their proxy score is from fewer epochs than the others'.
    return done[done["trial"].isin(numbers) & done["mflops"].notna() & done["mparams"].notna()]


def _strata(frame: pd.DataFrame, m: int) -> pd.Series:
    """(accuracy bin, cost bin) of each row: m quantile bins of proxy val acc and of MFLOPs, ties in one bin."""
    n = len(frame)

    def bins(values: pd.Series) -> np.ndarray:
        return np.minimum(m - 1, np.floor((average_ranks(values.to_numpy(float)) - 0.5) / n * m)).astype(int)

    return pd.Series(list(zip(bins(frame["val_acc"]), bins(frame["mflops"]), strict=True)), index=frame.index)


def select_trials(frame: pd.DataFrame, k: int = DEFAULT_K) -> list[int]:
    """Trial numbers to retrain: the Pareto front (val acc vs MFLOPs), then one trial per quantile stratum of
    val acc x MFLOPs in turn (the least covered stratum first, its most central trial), until there are k and every
    stratum has one (floor(sqrt(k)) bins per axis, at least 2): more than k when the front alone is that large.

    Deterministic: the same trials give the same choice whatever their row order.
    """
    frame = frame.sort_values("trial")
    chosen = [int(t) for t in pareto_front(frame)["trial"]]
    if len(frame) <= k:
        return chosen + [int(t) for t in frame["trial"] if int(t) not in chosen]
    m = max(2, math.isqrt(k))
    strata = _strata(frame, m)
    n = len(frame)
    coords = pd.DataFrame({"acc": average_ranks(frame["val_acc"].to_numpy(float)) / n,
                           "cost": average_ranks(frame["mflops"].to_numpy(float)) / n}, index=frame.index)
    trial_of = frame["trial"].astype(int)
    size = strata.value_counts()
    while True:
        left = strata[~trial_of.isin(chosen)]
        count = {s: int((strata[trial_of.isin(chosen)] == s).sum()) for s in set(left)}
        if len(chosen) >= k and all(count.values()):
            return chosen
        # The least covered stratum first; among equals the more populous (it stands for more trials), then by bins.
        stratum = min(count, key=lambda s: (count[s], -int(size[s]), s))
        members = left[left == stratum].index
        centre = coords.loc[strata[strata == stratum].index].mean()
        distance = ((coords.loc[members] - centre) ** 2).sum(axis=1)
        pick = min(members, key=lambda i: (float(distance[i]), int(trial_of[i])))
        chosen.append(int(trial_of[pick]))


def audit_config(study: optuna.Study, epochs: int | None = None, device: str = "auto") -> FullTrainConfig:
    """The full schedule of `dsearch train` for this study (its dataset and training resolution)."""
    return study_full_config(stored_settings(study, CONFIG_ATTR), epochs, device)


def schedule_of(study: optuna.Study, cfg: FullTrainConfig) -> dict[str, Any]:
    """The facts a kept full training must have to count for this audit, in the form `trained.N` records them."""
    identity = stored_settings(study, IDENTITY_ATTR)
    # train_full records the learning rate it filled in
    return schedule_key(full_proxy(cfg.proxy), "config", dataset=cfg.dataset or EMBEDDED_NAME,
                        train_resolution=cfg.train_resolution or identity.get("train_resolution"))


def matches(facts: Any, schedule: dict[str, Any]) -> bool:
    """Whether kept full-training facts were made with the audit's schedule."""
    if not isinstance(facts, dict) or facts.get("test_acc") is None:
        return False
    resolution = schedule.get("train_resolution")
    return (facts.get("config") == schedule["config"] and facts.get("dataset") == schedule["dataset"]
            and (resolution is None or facts.get("train_resolution") == resolution))


def _train_trial(study: optuna.Study, url: str, number: int, cfg: FullTrainConfig, claim: Claim, log: Log,
                 progress: Callable[[int, int], None] | None) -> dict[str, Any]:
    spec = arch_of(study, number)

    def on_step(step: int, total: int) -> None:
        claim.refresh()
        if progress is not None:
            progress(step, total)

    def on_log(message: str) -> None:
        claim.refresh()
        log(f"  {message}")

    result, facts = train_full(spec, cfg, on_step, on_log)
    save_full_weights(study, number, kept_state(result), artifact_dir(study, url), facts)
    return facts


def train_selection(study: optuna.Study, url: str, selection: list[int], cfg: FullTrainConfig, *,
                    log: Log = print, progress: Callable[[int, int], None] | None = None
                    ) -> tuple[dict[int, dict[str, Any]], list[int], list[int]]:
    """Make sure every selected trial has a full training with the audit's schedule; returns each one's facts and
    which trials this worker trained and which it did not have to. Each result is kept the moment it finishes."""
    schedule = schedule_of(study, cfg)
    worker = uuid.uuid4().hex
    done_now: list[int] = []
    waiting_said = False
    first = True
    while True:
        attrs = study.user_attrs
        missing = [n for n in selection if not matches(attrs.get(f"trained.{n}"), schedule)]
        kept = [n for n in selection if n not in missing]
        if first and kept:
            log(f"trial(s) {', '.join(map(str, kept))}: reusing their kept full training with this schedule")
        first = False
        if not missing:
            return {n: attrs[f"trained.{n}"] for n in selection}, done_now, [n for n in selection if n not in done_now]
        free = [n for n in missing if not claim_is_live(attrs.get(f"{CLAIM_PREFIX}{n}"), worker)]
        if not free:  # the rest are being trained by other workers: wait for them rather than train them twice
            if not waiting_said:
                log(f"waiting for trial(s) {', '.join(map(str, missing))}, being trained by another worker")
                waiting_said = True
            time.sleep(heartbeat_seconds())
            check_interrupted()
            continue
        number = free[0]
        claim = Claim(study, f"{CLAIM_PREFIX}{number}", worker)
        claim.refresh(force=True)
        if not claim.held():  # another worker claimed it at the same moment and wrote last: leave it to them
            continue
        try:
            old = attrs.get(f"trained.{number}")
            if isinstance(old, dict):
                log(f"trial {number}: its kept full training ({old.get('epochs')} epochs, {old.get('config')}) is "
                    "not the audit's schedule; retraining (the new weights replace it for export)")
            log(f"trial {number} ({len(selection) - len(missing) + 1} of {len(selection)}): full training")
            facts = _train_trial(study, url, number, cfg, claim, log, progress)
        finally:
            claim.release()
        done_now.append(number)
        log(f"trial {number}: test accuracy {facts['test_acc']:.4f} after {facts['epochs']} epochs "
            f"({facts.get('train_time_s')} s); kept with the study")


def _clean(value: Any) -> Any:
    """JSON-able, with nan as None (strict JSON has no nan)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def rank_agreement(rows: pd.DataFrame, *, resamples: int = RESAMPLES, level: float = LEVEL,
                   seed: int = SEED) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each predictor's agreement with full test accuracy, and the proxy's tau minus each cost's (paired)."""
    truth = rows["full_test_acc"].to_numpy(float)
    values = {name: rows[column].to_numpy(float) for name, (column, _) in PREDICTORS.items()}
    found = {name: agreement(v, truth, resamples=resamples, level=level, seed=seed) for name, v in values.items()}
    against = {name: paired_difference(values["proxy"], values[name], truth, resamples=resamples, level=level,
                                       seed=seed) for name in PREDICTORS if name != "proxy"}
    return found, against


def with_baselines(audit: dict[str, Any], baselines: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The rank agreement over the audited trials and the baselines with both a proxy and a full result.

    The baselines are architectures of the same budget trained with the same proxy and full schedule: they add
    points, often further apart in accuracy than the searched trials, where seed noise matters less.
    """
    usable = [b for b in baselines if trained_ok(b.get("proxy")) and trained_ok(b.get("full"))]
    if not usable:
        return None
    rows = pd.DataFrame(
        [{column: t[column] for column in ("proxy_val_acc", "full_test_acc", "mflops", "mparams")}
         for t in audit["trials"].values()]
        + [{"proxy_val_acc": b["proxy"]["val_acc"], "full_test_acc": b["full"]["test_acc"], "mflops": b["mflops"],
            "mparams": b["mparams"]} for b in usable])
    found, against = rank_agreement(rows)
    part = _clean({"baselines": [b["label"] for b in usable], "agreement": found, "proxy_vs": against})
    part["verdict"] = verdict(part)
    return part


def verdict(audit: dict[str, Any]) -> str:
    """One plain sentence: does the proxy rank the audited trials better than MFLOPs alone?"""
    agree, diff = audit["agreement"], audit["proxy_vs"]["mflops"]
    proxy, mflops = agree["proxy"]["tau"], agree["mflops"]["tau"]
    n = agree["proxy"]["n"]
    if proxy is None or mflops is None:
        return f"verdict: undecided: Kendall tau is undefined on these {n} trials (all tied in one variable)"
    low, high = diff["ci"]
    figures = (f"Kendall tau {proxy:.2f} vs {mflops:.2f}, difference {diff['difference']:+.2f}"
               + (f", 95% CI [{low:+.2f}, {high:+.2f}]" if low is not None else "") + f"; {n} trials")
    if diff["difference"] <= 0:
        return f"verdict: the proxy ranks no better than MFLOPs alone ({figures})"
    if low is not None and low > 0:
        return f"verdict: the proxy ranks better than MFLOPs alone ({figures})"
    return (f"verdict: the proxy is not shown to rank better than MFLOPs alone: its tau is higher, but the "
            f"interval of the difference includes 0 ({figures})")


def build_audit(study: optuna.Study, selection: list[int], facts: dict[int, dict[str, Any]], cfg: FullTrainConfig,
                k: int, candidates: pd.DataFrame) -> dict[str, Any]:
    """The `dsearch_audit` dict of the selected trials' proxy and full results."""
    by_trial = candidates.set_index("trial")
    trials = {n: {"proxy_val_acc": float(by_trial.loc[n, "val_acc"]), "full_test_acc": float(facts[n]["test_acc"]),
                  "full_val_acc": facts[n].get("val_acc"), "mflops": float(by_trial.loc[n, "mflops"]),
                  "mparams": float(by_trial.loc[n, "mparams"]), "resolution": _int(by_trial.loc[n, "resolution"]),
                  "arch": by_trial.loc[n, "arch"], "pareto": bool(by_trial.loc[n, "pareto"])}
              for n in sorted(selection)}
    rows = pd.DataFrame.from_dict(trials, orient="index")
    found, against = rank_agreement(rows)
    schedule = schedule_of(study, cfg)
    audit = _clean({
        "schedule": {"k": k, "epochs": cfg.proxy.epochs, **schedule, "candidates": len(candidates),
                     "strata_per_axis": max(2, math.isqrt(k)),
                     "bootstrap": {"resamples": RESAMPLES, "level": LEVEL, "seed": SEED}},
        "trials": trials, "agreement": found, "proxy_vs": against, "baselines": [], "made": made_by()})
    audit["verdict"] = verdict(audit)
    return audit


def _int(value: Any) -> int | None:
    return int(value) if value is not None and pd.notna(value) else None


@deferred_interrupts()  # Ctrl-C and SIGTERM stop it between storage writes, never inside one
def run_audit(study: optuna.Study, url: str, *, k: int = DEFAULT_K, epochs: int | None = None, device: str = "auto",
              baselines: bool = True, log: Log = print,
              progress: Callable[[int, int], None] | None = None) -> AuditOutcome:
    """Select, retrain (or reuse), measure and store the audit; then the baselines unless told not to."""
    if k < MIN_TRIALS:
        raise DsearchError(f"--k {k}: the audit needs at least {MIN_TRIALS} trials to rank; give --k 6 or more")
    check_device(device)
    candidates = audit_candidates(study)
    if len(candidates) < MIN_TRIALS:
        raise DsearchError(f"study '{study.study_name}' has {len(candidates)} trained trial(s); the audit needs at "
                           f"least {MIN_TRIALS}: run `dsearch run` longer, then audit")
    cfg = audit_config(study, epochs, device)
    selection = select_trials(candidates, k)
    front = set(pareto_front(candidates)["trial"].astype(int))
    log(f"auditing {len(selection)} of {len(candidates)} trained trials ({len(front)} on the Pareto front, the rest "
        f"spread over proxy accuracy x MFLOPs): {', '.join(map(str, sorted(selection)))}; full schedule: "
        f"{cfg.proxy.epochs} epochs on {cfg.dataset}")
    facts, done_now, reused = train_selection(study, url, selection, cfg, log=log, progress=progress)
    audit = build_audit(study, selection, facts, cfg, k, candidates)
    study.set_user_attr(AUDIT_ATTR, audit)  # stored before the baselines: an interrupted baseline loses no audit
    found: list[dict[str, Any]] = []
    if baselines:
        found = list(run_baselines(study, url, epochs=cfg.proxy.epochs, log=log))
        audit = {**audit, "baselines": [b["label"] for b in found], "with_baselines": with_baselines(audit, found)}
        study.set_user_attr(AUDIT_ATTR, audit)
    return AuditOutcome(audit, found, tuple(done_now), tuple(reused))


def _acc(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) and math.isfinite(value) else "n/a"


def _ci(values: Any) -> str:
    if not values or values[0] is None:
        return "n/a"
    return f"[{values[0]:+.2f}, {values[1]:+.2f}]"


def _agreement_lines(part: dict[str, Any], res: str) -> list[str]:
    """Kendall tau and Spearman rho with intervals per predictor, then the verdict."""
    lines = [f"  {'predictor':<16}{'Kendall tau':>12} {'interval':<16}{'Spearman':>9} {'interval':<16}"]
    for name, (_, label) in PREDICTORS.items():
        a = part["agreement"][name]
        tau = f"{a['tau']:+.2f}" if a["tau"] is not None else "n/a"
        rho = f"{a['spearman']:+.2f}" if a["spearman"] is not None else "n/a"
        lines.append(f"  {label + (res if name == 'mflops' else ''):<16}{tau:>12} {_ci(a['tau_ci']):<16}"
                     f"{rho:>9} {_ci(a['spearman_ci']):<16}")
    return [*lines, part["verdict"]]


def report_lines(audit: dict[str, Any], baselines: list[dict[str, Any]]) -> list[str]:
    """The human report: audited trials, agreement per predictor, the verdict, then the baselines."""
    trials = audit["trials"]
    resolutions = {t.get("resolution") for t in trials.values()} - {None}
    res = f"@{resolutions.pop()}" if len(resolutions) == 1 else ""
    res = f"{res}x{res[1:]}" if res else ""
    schedule = audit["schedule"]
    table = pd.DataFrame([{"trial": int(n), "pareto": "*" if t.get("pareto") else "",
                           "proxy val acc": t["proxy_val_acc"], "full test acc": t["full_test_acc"],
                           f"MFLOPs{res}": t["mflops"], "M params": t["mparams"]} for n, t in trials.items()])
    lines = [f"proxy audit of {len(trials)} trials (* on the Pareto front), full schedule {schedule['epochs']} "
             f"epochs on {schedule['dataset']} at {schedule.get('train_resolution')}x"
             f"{schedule.get('train_resolution')}; {audit['made']}",
             table.to_string(index=False, float_format=lambda v: f"{v:.4f}"),
             "",
             f"rank agreement with full test accuracy (95% bootstrap intervals, "
             f"{schedule['bootstrap']['resamples']} resamples of the trials):",
             *_agreement_lines(audit, res)]
    if baselines:
        lines += ["", "hand-designed baselines at the budget:"]
        rows = [{"baseline": b["label"], "MFLOPs": f"{b['mflops']:.2f}@{b.get('resolution')}x{b.get('resolution')}",
                 "M params": f"{b['mparams']:.3f}", "proxy val acc": _acc((b.get("proxy") or {}).get("val_acc")),
                 "full test acc": _acc((b.get("full") or {}).get("test_acc"))} for b in baselines]
        lines.append(pd.DataFrame(rows).to_string(index=False))
    both = audit.get("with_baselines")
    if both:
        lines += ["", f"rank agreement over the audited trials and the {len(both['baselines'])} baselines together "
                  f"({both['agreement']['proxy']['n']} architectures):", *_agreement_lines(both, res)]
    return lines
