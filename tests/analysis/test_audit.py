"""`dsearch audit`: the trials it picks, what it keeps and reuses, what it measures and says, and the CLI."""
import itertools
import json
import math

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState, create_trial

import dsearch.analysis.audit
import dsearch.analysis.pareto
import dsearch.training.full
from dsearch import ArchSpec, ConvSpec, StageSpec, StemSpec, build_model
from dsearch.analysis.audit import (
    AUDIT_ATTR,
    CLAIM_PREFIX,
    PREDICTORS,
    audit_config,
    run_audit,
    select_trials,
    study_audit,
    verdict,
)
from dsearch.analysis.pareto import pareto_front, trials_frame
from dsearch.cli import main
from dsearch.search.record import arch_attrs
from dsearch.search.weights import artifact_dir, save_full_weights, trial_weights
from dsearch.training.proxy import TrainResult


def brute_tau_b(x, y):
    pairs = list(itertools.combinations(range(len(x)), 2))
    s = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in pairs)
    untied_x = sum(x[i] != x[j] for i, j in pairs)
    untied_y = sum(y[i] != y[j] for i, j in pairs)
    return s / math.sqrt(untied_x * untied_y)


# --- selection, on synthetic frames --------------------------------------------------------------------------------

def synthetic_frame(n, seed):
    rng = np.random.default_rng(seed)
    cost = rng.permutation(n) + 1.0  # distinct values: median and tercile splits are unambiguous
    acc = 0.5 + 0.004 * cost + rng.normal(0, 0.05, n)
    trials = rng.permutation(np.arange(100, 100 + n))
    return pd.DataFrame({"trial": trials, "status": "complete", "val_acc": acc, "mflops": cost,
                         "mparams": cost / 10})


def strata(frame, m):
    """Quantile strata drawn independently: equal-count bins of each axis' ranks."""
    acc = pd.qcut(frame["val_acc"].rank(method="first"), m, labels=False)
    cost = pd.qcut(frame["mflops"].rank(method="first"), m, labels=False)
    return dict(zip(frame["trial"], zip(acc, cost, strict=True), strict=True))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k, m", [(6, 2), (8, 2), (13, 3)])
def test_selection_holds_the_front_and_k_or_more_trials_over_every_stratum(seed, k, m):
    frame = synthetic_frame(36, seed)
    chosen = select_trials(frame, k)
    front = set(pareto_front(frame)["trial"])
    assert front <= set(chosen)
    cells = strata(frame, m)
    empty = set(cells.values()) - {cells[t] for t in front}  # strata the front leaves without a member
    assert len(chosen) == len(set(chosen)) == max(k, len(front) + len(empty))
    assert {cells[t] for t in chosen} == set(cells.values())  # every stratum of accuracy x cost has a member
    extra = [cells[t] for t in chosen if t not in front]
    assert set(extra[:len(empty)]) == empty  # the empty strata are filled first


def test_selection_is_deterministic_whatever_the_row_order():
    frame = synthetic_frame(30, 7)
    chosen = select_trials(frame, 8)
    assert select_trials(frame.sample(frac=1, random_state=3), 8) == chosen


def test_selection_of_few_trials_or_a_wide_front():
    frame = synthetic_frame(5, 1)
    assert sorted(select_trials(frame, 6)) == sorted(frame["trial"])
    line = pd.DataFrame({"trial": range(10), "status": "complete", "val_acc": np.linspace(0.5, 0.9, 10),
                         "mflops": np.arange(1.0, 11.0), "mparams": 1.0})  # every trial on the front
    assert sorted(select_trials(line, 6)) == list(range(10))


# --- a hand-made study and a fast stand-in for the trainer inside the real train_full --------------------------------

WIDTHS = [4, 6, 8, 10, 12, 14, 16, 20]
PROXY_ACC = [0.70, 0.74, 0.71, 0.80, 0.76, 0.79, 0.82, 0.81]  # front: widths 4, 6, 10, 16


def small_spec(width):
    return ArchSpec(in_channels=1, num_classes=10, resolution=28, stem=StemSpec(4, 3, 2),
                    stages=(StageSpec("separable", width, 1, 2, 3, conv=ConvSpec.of("dsc")),))


def n_params(spec):
    return sum(p.numel() for p in build_model(spec).parameters())


def make_study(tmp_path, n=8, name="hand"):
    url = f"sqlite:///{tmp_path}/study.db"
    study = optuna.create_study(study_name=name, storage=url, directions=["maximize", "minimize"])
    study.set_user_attr("dsearch_config", {"dataset": "fashion-mnist-embedded", "proxy": {"train_resolution": None}})
    study.set_user_attr("dsearch_identity", {"train_resolution": 28, "resolution": 28, "budget_mflops": None,
                                             "budget_mparams": None})
    for width, acc in list(zip(WIDTHS, PROXY_ACC, strict=True))[:n]:
        spec = small_spec(width)
        attrs = {**arch_attrs(spec), "status": "complete", "trained": True, "val_acc": acc, "test_acc": acc,
                 "mflops": width / 10, "mparams": n_params(spec) / 1e6, "resolution": 28, "epochs": 1}
        study.add_trial(create_trial(state=TrialState.COMPLETE, values=[acc, width / 10], user_attrs=attrs))
    return study, url


def full_acc(spec):
    """The stand-in's test accuracy: rises with the parameter count, so params (and MFLOPs here) rank it exactly."""
    return 0.5 + n_params(spec) / 1e5


@pytest.fixture
def fake_trainer(monkeypatch):
    """Replaces the training loop inside dsearch.training.full.train_full (data, facts and saving stay real)."""
    calls = []

    def train(spec, data, proxy, on_epoch=None, progress=None):
        calls.append(spec.stages[0].out_channels)
        if fake_trainer_hook:
            fake_trainer_hook[0](len(calls))
        model = build_model(spec)
        acc = full_acc(spec)
        if progress:
            progress(1, 1)
        if on_epoch:
            on_epoch(0, acc)
        return TrainResult(val_acc=acc - 0.01, test_acc=acc, history=[acc], epochs=proxy.epochs, train_time_s=0.01,
                           state=model.state_dict())

    monkeypatch.setattr(dsearch.training.full, "train_proxy", train)
    fake_trainer_hook.clear()
    return calls


fake_trainer_hook: list = []  # optional callable(call number) run at the start of each fake training


def quiet(_msg):
    pass


def reload(study):
    return optuna.load_study(study_name=study.study_name, storage=study._storage)


def test_audit_trains_keeps_and_measures(tmp_path, fake_trainer):
    study, url = make_study(tmp_path)
    outcome = run_audit(study, url, k=6, epochs=1, baselines=False, log=quiet)
    audit = study_audit(reload(study))
    assert audit == outcome.audit and json.loads(json.dumps(audit, allow_nan=False)) == audit  # strict JSON
    chosen = sorted(int(n) for n in audit["trials"])
    assert len(chosen) == 6 and {0, 1, 3, 6} <= set(chosen)  # the front: widths 4, 6, 10, 16
    assert sorted(outcome.trained) == chosen and len(fake_trainer) == 6
    for n in chosen:  # kept as `dsearch train STUDY --trial N` keeps it
        facts = study.user_attrs[f"trained.{n}"]
        spec = small_spec(WIDTHS[n])
        assert facts["test_acc"] == pytest.approx(full_acc(spec)) and facts["epochs"] == 1
        assert audit["trials"][str(n)]["full_test_acc"] == pytest.approx(full_acc(spec))
        assert audit["trials"][str(n)]["proxy_val_acc"] == PROXY_ACC[n]
        state, what = trial_weights(study, n, url)
        assert "fully trained" in what and state.keys() == build_model(spec).state_dict().keys()
    proxy = [PROXY_ACC[n] for n in chosen]
    truth = [full_acc(small_spec(WIDTHS[n])) for n in chosen]
    agree = audit["agreement"]
    assert agree["proxy"]["tau"] == pytest.approx(brute_tau_b(proxy, truth)) and agree["proxy"]["n"] == 6
    assert agree["mflops"]["tau"] == pytest.approx(1) and agree["mparams"]["spearman"] == pytest.approx(1)
    assert agree["proxy"]["tau_ci"][0] <= agree["proxy"]["tau"] <= agree["proxy"]["tau_ci"][1]
    assert "the proxy ranks no better than MFLOPs alone" in audit["verdict"]
    assert audit["schedule"]["epochs"] == 1 and audit["schedule"]["k"] == 6 and audit["made"].startswith("dsearch ")
    assert all(study.user_attrs[f"{CLAIM_PREFIX}{n}"] is None for n in chosen)  # claims released


def test_baselines_join_the_trials_in_a_second_agreement():
    """Trials and fully trained baselines ranked together; a failed or proxy-only baseline is left out."""
    trials = {str(n): {"proxy_val_acc": p, "full_test_acc": f, "mflops": c, "mparams": c / 100}
              for n, (p, f, c) in enumerate([(0.75, 0.856, 170.0), (0.76, 0.855, 157.0), (0.74, 0.856, 258.0),
                                             (0.79, 0.860, 207.0)])}
    done = {"status": "complete"}
    baselines = [
        {"label": "a", "mflops": 289.0, "mparams": 2.0, "proxy": {**done, "val_acc": 0.62},
         "full": {**done, "val_acc": 0.83, "test_acc": 0.841}},
        {"label": "b", "mflops": 275.0, "mparams": 2.1, "proxy": {**done, "val_acc": 0.68},
         "full": {**done, "val_acc": 0.84, "test_acc": 0.852}},
        {"label": "failed", "mflops": 290.0, "mparams": 1.5, "proxy": {**done, "val_acc": 0.55},
         "full": {"status": "failed", "val_acc": None, "test_acc": None}},
        {"label": "proxy only", "mflops": 290.0, "mparams": 1.5, "proxy": {**done, "val_acc": 0.55}, "full": None}]
    part = dsearch.analysis.audit.with_baselines({"trials": trials}, baselines)
    assert part["baselines"] == ["a", "b"]
    proxy = [t["proxy_val_acc"] for t in trials.values()] + [0.62, 0.68]
    truth = [t["full_test_acc"] for t in trials.values()] + [0.841, 0.852]
    cost = [t["mflops"] for t in trials.values()] + [289.0, 275.0]
    assert part["agreement"]["proxy"]["tau"] == pytest.approx(brute_tau_b(proxy, truth))
    assert part["agreement"]["mflops"]["tau"] == pytest.approx(brute_tau_b(cost, truth))
    assert part["agreement"]["proxy"]["n"] == 6 and part["verdict"].startswith("verdict: ")
    assert dsearch.analysis.audit.with_baselines({"trials": trials}, baselines[2:]) is None
    from dsearch.analysis.dashboard import audit_caption

    audit = {"trials": trials, "agreement": part["agreement"], "verdict": "verdict: x", "with_baselines": part}
    assert f"With the 2 fully trained baselines added: proxy val acc {part['agreement']['proxy']['tau']:.2f}" in \
        audit_caption(audit)


def test_kept_trainings_are_reused_and_other_schedules_retrained(tmp_path, fake_trainer):
    study, url = make_study(tmp_path, n=4)
    first = run_audit(study, url, k=6, epochs=1, baselines=False, log=quiet)
    assert len(fake_trainer) == 4
    again = run_audit(study, url, k=6, epochs=1, baselines=False, log=quiet)
    assert len(fake_trainer) == 4 and again.trained == () and sorted(again.reused) == [0, 1, 2, 3]
    assert again.audit["trials"] == first.audit["trials"]
    stale = {**study.user_attrs["trained.2"], "epochs": 5, "config": {**study.user_attrs["trained.2"]["config"],
                                                                       "epochs": 5}}
    study.set_user_attr("trained.2", stale)  # as if `dsearch train --trial 2 --epochs 5` had run
    said = []
    third = run_audit(study, url, k=6, epochs=1, baselines=False, log=said.append)
    assert third.trained == (2,) and fake_trainer[-1] == WIDTHS[2]
    assert any("not the audit's schedule" in line for line in said)


def test_an_interrupted_audit_keeps_what_finished(tmp_path, fake_trainer):
    study, url = make_study(tmp_path, n=4)

    def interrupt(call):
        if call == 3:
            raise KeyboardInterrupt

    fake_trainer_hook.append(interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_audit(study, url, k=6, epochs=1, baselines=False, log=quiet)
    attrs = reload(study).user_attrs
    kept = [n for n in range(4) if f"trained.{n}" in attrs]
    assert len(kept) == 2 and AUDIT_ATTR not in attrs
    assert all(attrs.get(f"{CLAIM_PREFIX}{n}") is None for n in range(4))  # the interrupted trial's claim released
    fake_trainer_hook.clear()
    resumed = run_audit(study, url, k=6, epochs=1, baselines=False, log=quiet)
    assert sorted(resumed.trained) == sorted(set(range(4)) - set(kept)) and len(fake_trainer) == 3 + 2


def test_workers_leave_each_other_their_trials(tmp_path, fake_trainer, monkeypatch):
    study, url = make_study(tmp_path, n=4)
    cfg = audit_config(study, 1)
    other = {"worker": "elsewhere", "at": __import__("time").time()}
    study.set_user_attr(f"{CLAIM_PREFIX}0", other)  # another worker is training trial 0
    study.set_user_attr(f"{CLAIM_PREFIX}1", {"worker": "gone", "at": 0.0})  # a worker that stopped long ago

    def other_worker_finishes(_seconds):  # while this worker waits, the other one keeps trial 0's result
        result, facts = dsearch.training.full.train_full(small_spec(WIDTHS[0]), cfg, log=quiet)
        save_full_weights(study, 0, result.state, artifact_dir(study, url), facts)
        study.set_user_attr(f"{CLAIM_PREFIX}0", None)

    monkeypatch.setattr(dsearch.analysis.audit.time, "sleep", other_worker_finishes)
    said = []
    outcome = run_audit(study, url, k=6, epochs=1, baselines=False, log=said.append)
    assert sorted(outcome.trained) == [1, 2, 3] and outcome.reused == (0,)
    # The selection's order is the front (trials 0, 1, 3) then the rest; the last training is the other worker's.
    assert fake_trainer == [WIDTHS[1], WIDTHS[3], WIDTHS[2], WIDTHS[0]]
    assert any("waiting for trial(s) 0" in line for line in said)


def audit_with(proxy_tau, mflops_tau, diff, ci):
    def agreement(tau):
        return {"tau": tau, "tau_ci": [tau - 0.2, tau + 0.2], "spearman": tau, "spearman_ci": [0, 1], "n": 8}

    return {"agreement": {"proxy": agreement(proxy_tau), "mflops": agreement(mflops_tau),
                          "mparams": agreement(0.1)},
            "proxy_vs": {"mflops": {"difference": diff, "ci": ci}, "mparams": {"difference": 0.0, "ci": [0, 0]}}}


def test_verdict_says_plainly_when_the_proxy_is_no_better_than_mflops():
    assert "ranks no better than MFLOPs alone" in verdict(audit_with(0.4, 0.6, -0.2, [-0.5, 0.1]))
    assert "ranks no better than MFLOPs alone" in verdict(audit_with(0.5, 0.5, 0.0, [-0.3, 0.3]))
    assert "not shown to rank better than MFLOPs alone" in verdict(audit_with(0.6, 0.5, 0.1, [-0.2, 0.4]))
    better = verdict(audit_with(0.8, 0.3, 0.5, [0.1, 0.8]))
    assert "ranks better than MFLOPs alone" in better and "no better" not in better and "+0.10" in better


# --- the command line -----------------------------------------------------------------------------------------------

def test_cli_refuses_a_study_with_too_few_trials(tmp_path, capsys):
    study, url = make_study(tmp_path, n=2)
    assert main(["audit", "hand", "--storage", url, "--no-baselines"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has 2 trained trial(s); the audit needs at least 3" in err[0]
    assert AUDIT_ATTR not in reload(study).user_attrs
    assert main(["audit", "hand", "--storage", url, "--k", "2"]) == 2
    assert "--k must be an integer >= 3" in capsys.readouterr().err
    assert main(["audit", "hand", "--storage", url, "--device", "toaster"]) == 2
    assert "--device 'toaster' is not a device" in capsys.readouterr().err


def test_cli_prints_the_table_agreement_verdict_and_baselines(tmp_path, fake_trainer, monkeypatch, capsys):
    study, url = make_study(tmp_path, n=4)
    asked = {}

    def run_baselines(study_, storage_url, *, epochs=None, log=print, full=True):
        asked.update(study=study_.study_name, url=storage_url, epochs=epochs)
        return [{"label": "mobilenet_v2_w0.35_dsc", "conv": "dsc", "width": 0.35, "mflops": 1.2345, "mparams": 0.0321,
                 "resolution": 28, "train_resolution": 28, "proxy": {"val_acc": 0.6543, "test_acc": 0.65, "epochs": 1},
                 "full": {"val_acc": 0.7, "test_acc": 0.7123, "epochs": 1, "config": {}}}]

    monkeypatch.setattr(dsearch.analysis.audit, "run_baselines", run_baselines)
    assert main(["audit", "hand", "--storage", url, "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert asked == {"study": "hand", "url": url, "epochs": 1}
    table = out[out.index("proxy audit of"):]
    for n in range(4):
        assert f"{PROXY_ACC[n]:.4f}" in table and f"{full_acc(small_spec(WIDTHS[n])):.4f}" in table
    assert "MFLOPs@28x28" in out
    for _, label in PREDICTORS.values():
        assert label in out[out.index("rank agreement"):]
    assert "verdict: the proxy ranks no better than MFLOPs alone" in out
    line = next(x for x in out.splitlines() if "mobilenet_v2_w0.35_dsc" in x)
    assert "1.23@28x28" in line and "0.032" in line and "0.6543" in line and "0.7123" in line
    assert study_audit(reload(study))["baselines"] == ["mobilenet_v2_w0.35_dsc"]


def test_cli_end_to_end_with_real_training_and_json(searched_study, tmp_path, fake_trainer, monkeypatch, capsys):
    """On a copy of a real tiny search: two trials kept by the stand-in, the third trained for real (1 epoch);
    --json prints exactly the stored audit; a second run reuses all three."""
    # Optuna's copy, not the files: copying a live SQLite database in WAL mode broke the original for later tests.
    root = tmp_path / "copy"
    root.mkdir()
    url = f"sqlite:///{root}/study.db"
    optuna.copy_study(from_study_name="searched", from_storage=searched_study["storage"], to_storage=url)
    study = optuna.load_study(study_name="searched", storage=url)
    for key in list(study.user_attrs):
        if key.startswith("trained.") or key == AUDIT_ATTR:
            study.set_user_attr(key, None)  # a copy without full trainings, whatever other tests did before
    numbers = sorted(trials_frame(study).query("status == 'complete'")["trial"])
    assert len(numbers) == 3
    cfg = audit_config(study, 1, "cpu")
    for n in numbers[:2]:
        spec = dsearch.analysis.pareto.arch_of(study, n)
        result, facts = dsearch.training.full.train_full(spec, cfg, log=quiet)
        save_full_weights(study, n, result.state, artifact_dir(study, url), facts)
    monkeypatch.undo()  # the real trainer from here on
    real = dsearch.training.full.train_full
    runs = []
    monkeypatch.setattr(dsearch.analysis.audit, "train_full", lambda *a, **kw: runs.append(1) or real(*a, **kw))
    args = ["audit", "searched", "--storage", url, "--epochs", "1", "--no-baselines", "--device", "cpu", "--json"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert runs == [1] and printed == study_audit(reload(study))
    trained = reload(study).user_attrs[f"trained.{numbers[2]}"]
    assert printed["trials"][str(numbers[2])]["full_test_acc"] == trained["test_acc"] and trained["epochs"] == 1
    assert main(args) == 0  # the real training's record matches the audit's schedule: nothing to train
    assert runs == [1] and json.loads(capsys.readouterr().out)["trials"] == printed["trials"]


def test_dashboard_draws_the_audit(tmp_path, fake_trainer):
    from dsearch.analysis.dashboard import TITLE_AUDIT, audit_figure, build_dashboard

    study, url = make_study(tmp_path, n=4)
    assert TITLE_AUDIT not in [s.title for s in build_dashboard(study).sections]
    audit = run_audit(study, url, k=6, epochs=1, baselines=False, log=quiet).audit
    fig = audit_figure(audit)
    points = sorted(zip(fig.data[0].x, fig.data[0].y, strict=True))
    assert points == sorted((PROXY_ACC[n], full_acc(small_spec(WIDTHS[n]))) for n in range(4))
    assert "0.40 MFLOPs at 28x28" in str(fig.data[0].customdata)
    section = next(s for s in build_dashboard(reload(study)).sections if s.title == TITLE_AUDIT)
    assert section.figure is not None
    assert f"proxy val acc {audit['agreement']['proxy']['tau']:.2f}" in section.caption
    assert "MFLOPs at 28x28 1.00" in section.caption
    assert "The proxy ranks no better than MFLOPs alone" in section.caption
