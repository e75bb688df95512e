"""The search driver end to end on a tiny space: budget, resume, crashes, workers, bad input."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from dsearch import ArchSpec, spec_cost
from dsearch.errors import DsearchError
from dsearch.search.config import SearchConfig
from dsearch.search.driver import run_search
from dsearch.search.spaces import extreme_spec, load_space
from dsearch.training.proxy import ProxyConfig, TrainingDiverged

TINY_PROXY = ProxyConfig(epochs=1, batch_size=64, train_subset=256, augment=False)


def budget_between(space_path, share=0.5):
    space = load_space(str(space_path))
    lo = spec_cost(extreme_spec(space, 1, 10)).mflops
    hi = spec_cost(extreme_spec(space, 1, 10, cheapest=False)).mflops
    return lo + share * (hi - lo)


def config(space_path, **kw):
    return SearchConfig(space=str(space_path), proxy=TINY_PROXY, **{"budget_mflops": budget_between(space_path), **kw})


def quiet(_msg):
    pass


def test_search_respects_budget_and_records_everything(tiny_space, tmp_path):
    cfg = config(tiny_space, budget_mflops=budget_between(tiny_space, 0.15), sampler="random")
    summary = run_search(cfg, "s", f"sqlite:///{tmp_path}/s.db", n_trials=4, log=quiet)
    trials = summary.study.get_trials()
    trained = [t for t in trials if t.user_attrs.get("status") == "complete"]
    rejected = [t for t in trials if t.user_attrs.get("status") == "rejected"]
    assert len(trained) == 4 and summary.counts["complete"] == 4
    assert rejected, "a budget at 15% of the range must reject some samples"
    for t in trained:
        spec = ArchSpec.from_dict(t.user_attrs["arch"])
        cost = spec_cost(spec)  # recount independently from the stored spec
        assert cost.mflops <= cfg.budget_mflops
        assert t.values == [t.user_attrs["val_acc"], pytest.approx(cost.mflops)]
        assert 0 <= t.user_attrs["test_acc"] <= 1 and t.user_attrs["train_resolution"] == 28
        assert t.user_attrs["resolution"] == 32 and t.user_attrs["mflops_train"] > 0
        assert all(v <= 0 for v in t.constraints.values())
    for t in rejected:
        assert t.state == TrialState.PRUNED and "val_acc" not in t.user_attrs
        assert t.user_attrs["mflops"] > cfg.budget_mflops and "over budget" in t.user_attrs["reason"]
        assert t.constraints["mflops_over_budget"] == pytest.approx(t.user_attrs["mflops"] - cfg.budget_mflops)


def test_resume_continues_the_study(tiny_space, tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    cfg = config(tiny_space)
    first = run_search(cfg, "r", url, n_trials=2, log=quiet)
    n_first = len(first.study.get_trials())
    second = run_search(cfg, "r", url, n_trials=2, log=quiet)
    numbers = [t.number for t in second.study.get_trials()]
    assert second.counts["complete"] == 4
    assert numbers == list(range(len(numbers))) and len(numbers) > n_first


def test_resume_with_other_settings_is_refused(tiny_space, tmp_path):
    url = f"sqlite:///{tmp_path}/x.db"
    run_search(config(tiny_space), "x", url, n_trials=1, log=quiet)
    with pytest.raises(DsearchError, match="was created with budget_mflops="):
        run_search(config(tiny_space, budget_mflops=999.0), "x", url, n_trials=1, log=quiet)


def test_crashing_and_diverging_trials_do_not_stop_the_study(tiny_space, tmp_path, monkeypatch):
    import dsearch.search.objective as study_mod

    real = study_mod.train_proxy
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated crash")
        if calls["n"] == 2:
            raise TrainingDiverged("loss became nan in epoch 1 by step 3")
        return real(*args, **kwargs)

    monkeypatch.setattr(study_mod, "train_proxy", flaky)
    summary = run_search(config(tiny_space), "c", f"sqlite:///{tmp_path}/c.db", n_trials=3, log=quiet)
    trials = summary.study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 2
    assert [t.user_attrs["reason"] for t in failed] == ["RuntimeError: simulated crash",
                                                       "training diverged: loss became nan in epoch 1 by step 3"]
    assert summary.counts["complete"] == 3  # neither the crash nor the diverged trial counts as trained


def test_impossible_budget_fails_before_creating_anything(tiny_space, tmp_path):
    space = load_space(str(tiny_space))
    cheapest = spec_cost(extreme_spec(space, 1, 10)).mflops
    with pytest.raises(DsearchError, match=f"the cheapest costs {cheapest:.2f} MFLOPs at 32x32"):
        run_search(config(tiny_space, budget_mflops=cheapest * 0.9), "i", f"sqlite:///{tmp_path}/sub/i.db",
                   n_trials=1, log=quiet)
    assert not (tmp_path / "sub").exists()


def dsearch_cli(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "dsearch", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


TINY_ARGS = ("--n-trials", "2", "--epochs", "1", "--batch-size", "64", "--train-subset", "256", "--quiet",
             "--no-finals")


def test_cli_run_end_to_end(tiny_space, tmp_path):
    budget = f"{budget_between(tiny_space):.3f}"
    proc = dsearch_cli("run", "--space", str(tiny_space), "--budget-mflops", budget, *TINY_ARGS, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "study 'default': 2 trained" in proc.stdout
    assert "MFLOPs at 32x32" in proc.stdout and "Pareto-optimal" in proc.stdout
    assert (tmp_path / "studies" / "default" / "study.db").is_file()


@pytest.mark.parametrize("args,needle", [
    (("--space", "nosuch.yaml"), "space 'nosuch.yaml' not found"),
    (("--space", "{bad}"), "not found"),
    (("--budget-mflops", "-5"), "--budget-mflops must be a finite number > 0"),
    (("--budget-mflops", "0.001"), "the cheapest costs"),
    (("--dataset", "nosuchdata"), "unknown dataset 'nosuchdata'"),
    (("--dataset", "cifar10", "--data-dir", "DATA"), "cifar10"),
])
def test_cli_bad_inputs_give_one_line_and_no_study(tmp_path, args, needle, monkeypatch, capsys):
    from dsearch.cli import main

    (tmp_path / "DATA").mkdir()
    args = tuple(str(tmp_path / "DATA") if a == "DATA" else a for a in args)
    if "--budget-mflops" not in args:
        args = ("--budget-mflops", "300") + args
    monkeypatch.chdir(tmp_path)  # in process: a subprocess per case cost ~5 s of imports each
    code = main(["run", *args, *TINY_ARGS])
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "studies").exists()


@pytest.mark.parametrize("text,needle", [
    ("name: x\nresolution: 32\nstem: {width: 8\n", "invalid YAML"),
    ("name: x\nresolution: 32\nstem: {width: 8}\nstages: [{width: 8, stride: 1, conv: fancy}]", "unknown conv type"),
])
def test_cli_bad_space_files(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    proc = dsearch_cli("run", "--budget-mflops", "300", "--space", str(path), *TINY_ARGS, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and needle in proc.stderr and str(path) in proc.stderr
    assert not (tmp_path / "studies").exists()


def run_two_workers(tiny_space, cwd, storage, n):
    budget = f"{budget_between(tiny_space):.3f}"
    args = ["run", "--space", str(tiny_space), "--budget-mflops", budget, "--study-name", "shared",
            *TINY_ARGS[2:], "--n-trials", str(n)]
    if storage:
        args += ["--storage", storage]
    procs = [subprocess.Popen([sys.executable, "-m", "dsearch", *args, "--seed", str(seed)], cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    return optuna.load_study(study_name="shared", storage=storage or f"sqlite:///{cwd}/studies/shared/study.db")


def check_shared(study, n_total):
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # none lost, none duplicated
    assert sum(t.user_attrs.get("status") == "complete" for t in trials) == n_total
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def test_two_workers_share_the_default_storage(tiny_space, tmp_path):
    check_shared(run_two_workers(tiny_space, tmp_path, None, 2), 4)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on loopback (Debian's postgresql package)."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not bins or not (bins[-1] / "initdb").exists():
        pytest.skip("no PostgreSQL server installed (Debian package 'postgresql'; .ci/run installs it)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e .[test])")
    bindir = bins[-1]
    # Not under pytest's tmp dir: that one is private to root and the server runs as 'postgres'.
    root = Path(tempfile.mkdtemp(prefix="dsearch-pg-"))
    datadir = root / "data"
    user = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    port = _free_port()
    subprocess.run([*user, str(bindir / "initdb"), "-D", str(datadir), "-A", "trust", "-U", "dsearch"],
                   check=True, capture_output=True)
    log = root / "log"
    started = subprocess.run([*user, str(bindir / "pg_ctl"), "-D", str(datadir), "-l", str(log), "-w", "start", "-o",
                              f"-p {port} -k {root} -c listen_addresses=127.0.0.1"], capture_output=True, text=True)
    if started.returncode != 0:
        pytest.skip(f"PostgreSQL did not start: {started.stderr.strip()[:200]}")
    try:
        subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "dsearch", "search"],
                       check=True, capture_output=True)
        yield f"postgresql://dsearch@127.0.0.1:{port}/search"
    finally:
        subprocess.run([*user, str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_postgresql_study(tiny_space, tmp_path, postgres):
    check_shared(run_two_workers(tiny_space, tmp_path, postgres, 2), 4)


def _brute_force_feasible(space_path, mflops):
    from dsearch.search.budget import all_params, build

    space = load_space(str(space_path))
    return sum(spec_cost(build(space, p, 1, 10)[0]).mflops <= mflops for p in all_params(space))


def test_rejected_samples_are_repaired_into_trained_candidates(tiny_space, tmp_path):
    cfg = config(tiny_space, budget_mflops=budget_between(tiny_space, 0.05), sampler="random")
    summary = run_search(cfg, "t", f"sqlite:///{tmp_path}/t.db", n_trials=3, log=quiet)
    trials = summary.study.get_trials()
    assert summary.trained == 3 and summary.stopped is None
    rejected = [t for t in trials if t.user_attrs.get("status") == "rejected"]
    assert rejected, "a budget at 5% of the range must reject samples"
    repairs = {t.user_attrs["repair_of"]: t for t in trials if "repair_of" in t.user_attrs}
    for t in rejected[:-1]:  # the last rejection's repair may be left queued when the run reached its count
        fixed = repairs[t.number]
        assert fixed.params != t.params
        assert fixed.user_attrs["status"] in ("complete", "duplicate")
        assert spec_cost(ArchSpec.from_dict(fixed.user_attrs["arch"])).mflops <= cfg.budget_mflops


def test_duplicates_are_recorded_not_retrained(tiny_space, tmp_path):
    url = f"sqlite:///{tmp_path}/d.db"
    cfg = config(tiny_space)
    first = run_search(cfg, "d", url, n_trials=1, log=quiet)
    original = next(t for t in first.study.get_trials() if t.user_attrs.get("status") == "complete")
    first.study.enqueue_trial(original.params)
    second = run_search(cfg, "d", url, n_trials=1, log=quiet)
    trials = second.study.get_trials()
    repeat = next(t for t in trials if t.user_attrs.get("status") == "duplicate")
    assert repeat.user_attrs["duplicate_of"] == original.number
    assert repeat.values == original.values and "train_time_s" not in repeat.user_attrs
    assert second.trained == 1 and second.counts["duplicate"] == 1 and second.counts["complete"] == 2


def test_a_budget_that_few_architectures_fit_trains_them_all_and_says_so(tiny_space, tmp_path, capsys):
    from dsearch.cli import main

    cheapest = budget_between(tiny_space, 0.0)
    fits = _brute_force_feasible(tiny_space, cheapest)
    assert 1 <= fits <= 8
    url = f"sqlite:///{tmp_path}/e.db"
    args = ["run", "--space", str(tiny_space), "--budget-mflops", repr(cheapest), "--n-trials", str(fits + 2),
            "--epochs", "1", "--train-subset", "128", "--batch-size", "64", "--study-name", "e", "--storage", url,
            "--quiet", "--no-finals"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"all {fits} architectures of the space within the budget are trained" in out
    study = optuna.load_study(study_name="e", storage=url)
    assert sum(t.user_attrs.get("status") == "complete" for t in study.get_trials()) == fits
    assert main(args) == 0  # nothing left: says so again, trains nothing
    assert f"{fits} trained" in capsys.readouterr().out


def test_a_run_that_cannot_progress_stops_with_an_error(tiny_space, tmp_path, monkeypatch, capsys):
    import dsearch.search.driver as study_mod
    from dsearch.cli import main

    # As for a space too large to enumerate: the run cannot know that nothing is left, so it must call it stuck.
    monkeypatch.setattr(study_mod, "feasible_count", lambda *a, **k: None)
    monkeypatch.setattr(study_mod, "FRESH_ATTEMPTS", 20)
    cheapest = budget_between(tiny_space, 0.0)
    fits = _brute_force_feasible(tiny_space, cheapest)
    args = ["run", "--space", str(tiny_space), "--budget-mflops", repr(cheapest), "--n-trials", str(fits + 1),
            "--epochs", "1", "--train-subset", "128", "--batch-size", "64", "--study-name", "s", "--storage",
            f"sqlite:///{tmp_path}/s.db", "--quiet", "--no-finals"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"stopped after training {fits} of {fits + 1} architectures" in err
    assert "found no untrained architecture within the budget" in err


def test_early_stop_compares_with_cheaper_front_trials_at_the_same_epoch():
    from optuna.distributions import CategoricalDistribution

    from dsearch.search.objective import outpaced_by

    study = optuna.create_study(directions=["maximize", "minimize"])
    # (MFLOPs, final val acc, per-epoch history): trials 0 and 1 are on the front, 2 is dominated by 0
    for mflops, acc, history in ((10.0, 0.80, [0.60, 0.80]), (30.0, 0.90, [0.70, 0.90]), (20.0, 0.70, [0.68, 0.70])):
        study.add_trial(optuna.trial.create_trial(
            params={"x": 0}, distributions={"x": CategoricalDistribution([0])}, values=[acc, mflops],
            user_attrs={"status": "complete", "val_acc": acc, "mflops": mflops, "history": history}))
    assert outpaced_by(study, 25.0, 0, 0.50, 0.02).number == 0  # the cheaper front trial was 0.10 ahead
    assert outpaced_by(study, 25.0, 0, 0.59, 0.02) is None  # within the margin
    assert outpaced_by(study, 5.0, 0, 0.10, 0.02) is None  # nothing on the front is as cheap
    assert outpaced_by(study, 25.0, 0, 0.62, 0.02) is None  # trial 2 is ahead by 0.06 but is not on the front
    assert outpaced_by(study, 40.0, 0, 0.65, 0.02).number == 1


def test_the_same_command_seed_and_threads_give_the_same_numbers(tiny_space, tmp_path):
    from dsearch.search.config import SearchConfig
    from dsearch.search.driver import run_search
    from dsearch.training.proxy import ProxyConfig

    cfg = SearchConfig(space=str(tiny_space), budget_mflops=0.22, seed=3,
                       proxy=ProxyConfig(epochs=1, batch_size=64, train_subset=256, seed=3))
    runs = [run_search(cfg, "r", f"sqlite:///{tmp_path}/r{i}.db", n_trials=2, log=lambda _m: None).study
            for i in range(2)]
    first, second = ([(t.params, t.user_attrs.get("val_acc"), t.user_attrs.get("test_acc")) for t in s.trials]
                     for s in runs)
    assert first == second and any(v is not None for _, v, _ in first)
    recorded = [t.user_attrs for t in runs[0].trials if t.user_attrs.get("status") == "complete"]
    assert all(a["train_seed"] == 3 and a["versions"]["torch"] == torch.__version__ and "cpu_threads" in a
               for a in recorded)


def test_sampler_seeds_of_different_starts_never_coincide():
    from dsearch.search.driver import sampler_seed

    starts = [(seed, before, worker) for seed in range(12) for before in range(12) for worker in range(4)]
    seeds = [sampler_seed(*start) for start in starts]
    assert len(set(seeds)) == len(starts)  # seed 1 joining at trial 2 no longer replays seed 3 at trial 0
    assert sampler_seed(7, 0, 0) == 7  # a fresh study's first worker samples with --seed itself
    assert all(0 <= s < 2**32 for s in seeds)
