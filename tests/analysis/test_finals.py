import shutil
import textwrap
import threading
import time
from dataclasses import replace

import numpy as np
import optuna
import pytest
import torch
from conftest import TINY_SPACE
from scipy import stats

import dsearch
from dsearch.analysis import finals as finals_mod
from dsearch.analysis.finals import FinalsConfig, pending_finals, run_finals
from dsearch.analysis.pareto import trials_frame
from dsearch.analysis.promotion import promoted_count
from dsearch.analysis.verdict import RECORD_PREFIX, study_verdict
from dsearch.data import load_dataset
from dsearch.errors import Deadline, DsearchError, TimedOut
from dsearch.search.config import SearchConfig
from dsearch.search.driver import run_search
from dsearch.search.storage import open_study
from dsearch.training.proxy import DeviceData, ProxyConfig, evaluate

QUIET = lambda _msg: None  # noqa: E731
CFG = FinalsConfig(eta=2, proxy_seeds=2, seeds=2, epochs=1, baselines=False, device="cpu")


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A finished search of 5 architectures, copied per test (the finals write to their study)."""
    root = tmp_path_factory.mktemp("finals-search")
    space = root / "tiny.yaml"
    space.write_text(textwrap.dedent(TINY_SPACE))
    cfg = SearchConfig(space=str(space), budget_mflops=0.22, seed=1, device="cpu",
                       proxy=ProxyConfig(epochs=1, batch_size=64, train_subset=512, augment=False))
    run_search(cfg, "fin", f"sqlite:///{root}/study.db", n_trials=5, log=QUIET)
    return root


@pytest.fixture
def study_dir(searched, tmp_path, monkeypatch):
    monkeypatch.setenv("DSEARCH_HEARTBEAT_S", "1")
    target = tmp_path / "copy"
    shutil.copytree(searched, target)
    return target


def _open(root):
    return open_study("fin", f"sqlite:///{root}/study.db")


def _records(study):
    return {k: v for k, v in study.user_attrs.items() if k.startswith(RECORD_PREFIX)}


def test_finals_promote_by_rungs_and_the_verdict_holds_the_kept_figures(study_dir):
    study, url = _open(study_dir)
    n = len(trials_frame(study).query("status == 'complete'"))
    verdict = run_finals(study, url, CFG, log=QUIET)
    records = _records(study)
    rung1 = {k.split(".")[1] for k in records if k.startswith(f"{RECORD_PREFIX}1.")}
    rung2 = {k.split(".")[1] for k in records if k.startswith(f"{RECORD_PREFIX}2.")}
    assert len(rung1) == promoted_count(n, CFG.eta) and len(rung2) == promoted_count(len(rung1), CFG.eta)
    assert rung2 <= rung1
    assert len(records) == len(rung1) * (CFG.proxy_seeds - 1) + len(rung2) * CFG.seeds
    for row in verdict["rows"]:  # each mean and interval is the t interval of the kept trainings' accuracies
        vals = [records[f"{RECORD_PREFIX}2.trial{row['trial']}.s{s}"]["val_acc"] for s in verdict["seeds"]]
        assert row["val"] == vals and row["val_mean"] == pytest.approx(np.mean(vals))
        if np.std(vals) > 0:
            low, high = stats.t.interval(0.95, len(vals) - 1, loc=np.mean(vals), scale=stats.sem(vals))
            assert (row["val_low"], row["val_high"]) == (pytest.approx(low), pytest.approx(high))
    assert verdict["pick"] in {row["trial"] for row in verdict["rows"]}
    assert study_verdict(study) == verdict
    # The rung each trial reached is in the trials' frame (and so in `dsearch show` and the CSV).
    frame = trials_frame(study).set_index("trial")
    assert {int(t.removeprefix("trial")) for t in rung2} == set(frame.index[frame["rung"] == 2])


def test_best_is_the_pick_with_fully_trained_weights_that_score_as_recorded(study_dir):
    study, url = _open(study_dir)
    verdict = run_finals(study, url, CFG, log=QUIET)
    pick = verdict["pick"]
    kept = study.user_attrs[f"trained.{pick}"]
    row = next(r for r in verdict["rows"] if r["role"] == "pick")
    assert kept["val_acc"] == max(row["val"]) and kept["epochs"] == CFG.epochs
    model = dsearch.load_trial(study, "best", storage=url)
    # Round trip: the weights export and load_trial take score on the study's validation split what the finals
    # recorded for that seed.
    data = load_dataset(seed=1)
    device_data = DeviceData(data, torch.device("cpu"))
    assert evaluate(model, device_data, device_data.val_x, device_data.val_y) == pytest.approx(kept["val_acc"])


@pytest.mark.slow
def test_a_killed_finals_resumes_to_the_same_verdict_without_training_twice(study_dir, tmp_path, monkeypatch):
    twin = tmp_path / "twin"
    shutil.copytree(study_dir, twin)
    study, url = _open(study_dir)
    whole = run_finals(study, url, CFG, log=QUIET)

    real = finals_mod.train_proxy
    calls = []

    def dies_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(finals_mod, "train_proxy", dies_on_third)
    study2, url2 = _open(twin)
    with pytest.raises(KeyboardInterrupt):
        run_finals(study2, url2, CFG, log=QUIET)
    done_before = len(_records(study2))
    assert done_before == 2 and pending_finals(study2, study2.user_attrs["dsearch_config"]) is not None
    calls.clear()
    monkeypatch.setattr(finals_mod, "train_proxy", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    resumed = run_finals(study2, url2, replace(CFG, seeds=5), log=QUIET)  # the stored plan's settings win
    assert len(calls) == len(_records(study2)) - done_before  # nothing trained twice
    strip = ("made", "plan")
    assert {k: v for k, v in resumed.items() if k not in strip} == {k: v for k, v in whole.items() if k not in strip}
    assert pending_finals(study2, study2.user_attrs["dsearch_config"]) is None


@pytest.mark.slow
def test_the_time_limit_stops_a_finals_training_and_leaves_the_finals_to_resume(study_dir):
    study, url = _open(study_dir)
    start = time.monotonic()
    with pytest.raises(TimedOut, match=r"^stopped by --timeout 15 s after \d+ of 100000 epochs$"):
        run_finals(study, url, replace(CFG, epochs=100000), log=QUIET, deadline=Deadline.after(15))
    assert time.monotonic() - start < 15 + 10  # stopped at a training step, not after 100000 epochs
    records = _records(study)
    assert records and all(k.startswith(f"{RECORD_PREFIX}1.") for k in records)  # rung 1 kept; the cut one not
    assert not any(k.startswith("dsearch_claim.") and v for k, v in study.user_attrs.items())  # its claim released
    assert study_verdict(study) is None and pending_finals(study, study.user_attrs["dsearch_config"]) is not None


@pytest.mark.slow
def test_two_workers_on_one_storage_split_the_finals_and_agree(study_dir, monkeypatch):
    real = finals_mod.train_proxy
    calls = []
    monkeypatch.setattr(finals_mod, "train_proxy", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    results: list = [None, None]

    def worker(i: int) -> None:
        study, url = _open(study_dir)  # each worker its own Study object on the shared storage
        results[i] = run_finals(study, url, CFG, log=QUIET)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    study, _ = _open(study_dir)
    strip = ("made",)
    assert results[0] is not None and results[1] is not None
    assert {k: v for k, v in results[0].items() if k not in strip} == \
        {k: v for k, v in results[1].items() if k not in strip}
    assert len(calls) < 2 * len(_records(study))  # the work was split, not done by both


def test_finals_refuse_bad_settings_in_one_line(study_dir):
    study, url = _open(study_dir)
    for bad, flag in ((replace(CFG, eta=1), "--eta"), (replace(CFG, seeds=1), "--final-seeds"),
                      (replace(CFG, epochs=0), "--final-epochs")):
        with pytest.raises(DsearchError, match=flag):
            run_finals(study, url, bad, log=QUIET)
    assert not _records(study) and "dsearch_finals" not in study.user_attrs


def test_no_trained_trial_within_the_budget_is_a_clear_error(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/e.db", study_name="e")
    study.set_user_attr("dsearch_config", {"seed": 0, "dataset": "fashion-mnist-embedded", "proxy": {}})
    with pytest.raises(DsearchError, match="trained trials within the budget"):
        run_finals(study, f"sqlite:///{tmp_path}/e.db", CFG, log=QUIET)


@pytest.mark.slow
def test_cli_run_ends_with_the_verdict_and_resumes_interrupted_finals(tmp_path, monkeypatch, capsys):
    from dsearch.cli import main

    monkeypatch.setenv("DSEARCH_HEARTBEAT_S", "1")
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "tiny.yaml"
    space.write_text(textwrap.dedent(TINY_SPACE))
    url = f"sqlite:///{tmp_path}/c.db"
    args = ["run", "--space", str(space), "--budget-mflops", "0.22", "--n-trials", "4", "--epochs", "1",
            "--batch-size", "64", "--train-subset", "256", "--quiet", "--eta", "2", "--proxy-seeds", "2",
            "--final-seeds", "2", "--final-epochs", "1", "--study-name", "c", "--storage", url]
    real = finals_mod.train_proxy
    calls = []

    def dies_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(finals_mod, "train_proxy", dies_on_second)
    assert main(args) == 130
    assert "interrupted during the finals" in capsys.readouterr().err
    trials_before = len(optuna.load_study(study_name="c", storage=url).trials)
    monkeypatch.setattr(finals_mod, "train_proxy", real)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "its finals were interrupted; resuming them" in out and "verdict:" in out and "the pick" in out
    study = optuna.load_study(study_name="c", storage=url)
    assert len(study.trials) == trials_before  # the search was not run again
    pick = study_verdict(study)["pick"]
    assert main(["show", "c", "--storage", url]) == 0
    assert "the pick" in capsys.readouterr().out
    assert main(["export", "c", "--storage", url, "--trial", "best", "--out", str(tmp_path / "exp")]) == 0
    out = capsys.readouterr().out
    assert "chose the verdict's pick" in out and f"trial {pick}" in out and "fully trained weights" in out


def test_the_baselines_speak_the_spaces_conv_kinds(tmp_path):
    from dsearch.analysis.finals import baseline_kinds

    space = tmp_path / "tiny.yaml"
    space.write_text(textwrap.dedent(TINY_SPACE))  # offers regular, dsc, bsconv_u and scc
    assert baseline_kinds(str(space)) == ["dsc", "bsconv_u", "scc"]  # regular is no baseline; bsconv_s not offered
    assert baseline_kinds("mobile") == ["dsc", "bsconv_u", "bsconv_s", "scc"]
    assert baseline_kinds(str(tmp_path / "gone.yaml"))[:4] == ["dsc", "bsconv_u", "bsconv_s", "scc"]


@pytest.mark.slow
def test_finals_on_two_processes_give_exactly_the_verdict_of_one(searched, tmp_path, monkeypatch):
    """Every finals training is seeded and independent: split over two processes with one thread each, the verdict's
    figures equal those of one process with one thread, bit for bit, and no worker process is left behind."""
    import multiprocessing

    from dsearch.analysis.finals_workers import run_finals_parallel

    monkeypatch.setenv("DSEARCH_HEARTBEAT_S", "1")
    copies = [tmp_path / "one", tmp_path / "two"]
    for c in copies:
        shutil.copytree(searched, c)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        study, url = _open(copies[0])
        alone = run_finals(study, url, CFG, log=QUIET)
    finally:
        torch.set_num_threads(threads)
    study, url = _open(copies[1])
    shared = run_finals_parallel(study, url, CFG, jobs=2, log=QUIET, quiet=True)
    figures = ("pick", "rows", "sentences")
    assert {k: alone.get(k) for k in figures} == {k: shared.get(k) for k in figures}
    records = _records(study)
    assert records and all(r["cpu_threads"] == 1 for r in records.values())
    assert not multiprocessing.active_children()


def test_the_finals_default_to_a_worker_per_core_up_to_four_and_one_on_a_gpu(monkeypatch):
    from dsearch.analysis import finals_workers

    for cores, jobs in ((1, 1), (2, 2), (3, 3), (16, 4)):
        monkeypatch.setattr(finals_workers.os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert finals_workers.auto_final_jobs("cpu") == jobs
    assert finals_workers.auto_final_jobs("cuda") == 1 and finals_workers.auto_final_jobs("cuda:1") == 1
