"""A hostile or careless user: names that are paths, copied studies, changed settings on resume, bad numbers,
diverging training, corrupt artifacts, Ctrl-C, and a worker killed with SIGKILL mid-trial."""
import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import optuna
import pytest
import torch
from conftest import dsearch, one_line_error
from optuna.trial import TrialState

from dsearch import cli, preset
from dsearch.cost.memory import activation_bytes
from dsearch.errors import DsearchError
from dsearch.model.builder import build_model
from dsearch.paths import check_study_name, default_storage
from dsearch.search.config import SearchConfig
from dsearch.search.driver import run_search
from dsearch.search.weights import ARTIFACTS_ATTR, recorded_artifact_dir, trial_weights
from dsearch.training.failures import check_finite_state
from dsearch.training.proxy import ProxyConfig, TrainingDiverged

FAST = ProxyConfig(epochs=1, batch_size=64, train_subset=128, augment=False)
BUDGET = 0.3  # MFLOPs at 32x32: about the middle of the tiny space's range
RUN = ("--budget-mflops", str(BUDGET), "--epochs", "1", "--batch-size", "64", "--train-subset", "128", "--quiet",
       "--no-finals")


def quiet(_msg):
    pass


def cfg(space, **kw):
    return SearchConfig(space=str(space), budget_mflops=BUDGET, sampler="random", **{"proxy": FAST, **kw})


# --- 1. names are not paths -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "/", "..", "../../etc", "a/b", ".hidden", "-x", "with space", "x" * 65, "é"])
def test_study_names_that_are_not_names_are_refused(name):
    with pytest.raises(DsearchError, match="is not allowed: use 1 to 64 characters"):
        check_study_name(name)
    with pytest.raises(DsearchError):
        default_storage(name)


def test_study_names_that_are_names_are_kept():
    for name in ("default", "m300", "a.b_c-D9", "x" * 64):
        assert default_storage(name) == f"sqlite:///studies/{name}/study.db"


@pytest.mark.parametrize("name", ["/", "../../escaped", ""])
def test_run_with_a_path_as_study_name_writes_nothing(tiny_space, tmp_path, monkeypatch, capfd, name):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    code, _, err = dsearch(capfd, "run", "--space", tiny_space, "--study-name", name, *RUN)
    one_line_error(code, err, "is not allowed")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "tiny.yaml"]


# --- 2. a copied study folder is self-contained -----------------------------------------------------------------

def test_a_copied_study_reads_its_own_artifacts(searched_study, tmp_path):
    first = tmp_path / "first"
    shutil.copytree(searched_study["root"], first)
    second = tmp_path / "second"
    shutil.copytree(first, second)
    shutil.rmtree(first)  # nothing may depend on the folder it was copied from
    url = f"sqlite:///{second}/study.db"
    study = optuna.load_study(study_name="searched", storage=url)
    study.set_user_attr(ARTIFACTS_ATTR, str(first / "artifacts"))  # as older versions recorded it
    assert recorded_artifact_dir(study, url) == (second / "artifacts").resolve()
    number = next(t.number for t in study.trials if t.user_attrs.get("weights_artifact"))
    copied, _ = trial_weights(study, number, url)
    original, _ = trial_weights(searched_study["study"], number, searched_study["storage"])
    assert copied.keys() == original.keys() and all(torch.equal(copied[k], original[k]) for k in copied)


# --- 3. a resume never mixes settings ----------------------------------------------------------------------------

def test_resume_with_changed_settings_is_refused_or_recorded(tiny_space, tmp_path):
    url = f"sqlite:///{tmp_path}/bind.db"
    run_search(cfg(tiny_space), "bind", url, n_trials=1, log=quiet)
    n_before = len(optuna.load_study(study_name="bind", storage=url).trials)
    other = ProxyConfig(epochs=2, batch_size=64, train_subset=192, lr=0.05, optimizer="adamw", train_resolution=32)
    with pytest.raises(DsearchError) as refused:
        run_search(cfg(tiny_space, proxy=other, resolution=40), "bind", url, n_trials=1, log=quiet)
    message = str(refused.value)
    for named in ("resolution=32 (now 40)", "train_resolution=28 (now 32)", "proxy.epochs=1 (now 2)",
                  "proxy.train_subset=128 (now 192)", "proxy.lr=None (now 0.05)", "proxy.optimizer='sgd' (now 'adamw')",
                  "proxy.augment=False (now True)", "--allow-changed-settings"):
        assert named in message
    # The same path with other content: an edited space file is another space.
    original = tiny_space.read_text()
    tiny_space.write_text(original.replace("kernel: [3, 5]", "kernel: [3]"))
    with pytest.raises(DsearchError, match="was created with space content sha256="):
        run_search(cfg(tiny_space), "bind", url, n_trials=1, log=quiet)
    assert len(optuna.load_study(study_name="bind", storage=url).trials) == n_before  # refusals wrote nothing
    # Asked for explicitly: the change is recorded on the study, and the new settings bind from then on.
    # (This worker's own seed is no setting of the study: it is not a change.)
    summary = run_search(cfg(tiny_space, seed=7, proxy=ProxyConfig(**{**FAST.__dict__, "seed": 7})), "bind", url,
                         n_trials=1, log=quiet, allow_changed_settings=True)
    changes = summary.study.user_attrs["dsearch_changes"]
    assert len(changes) == 1 and list(changes[0]["changes"]) == ["space_sha256"]
    assert changes[0]["from_trial"] == n_before
    tiny_space.write_text(original)
    with pytest.raises(DsearchError, match="space content sha256="):
        run_search(cfg(tiny_space), "bind", url, n_trials=1, log=quiet)


def test_a_study_made_before_the_binding_is_checked_on_what_it_recorded(tiny_space, tmp_path):
    url = f"sqlite:///{tmp_path}/old.db"
    study = optuna.create_study(study_name="old", storage=url, directions=["maximize", "minimize"])
    study.set_user_attr("dsearch_identity", {"space": str(tiny_space), "dataset": "fashion-mnist-embedded",
                                             "budget_mflops": 9.0, "budget_mparams": None, "resolution": None,
                                             "objective": "multi"})
    with pytest.raises(DsearchError, match=r"budget_mflops=9.0 \(now 0.3\)"):
        run_search(cfg(tiny_space), "old", url, n_trials=1, log=quiet)


# --- 4. numbers are checked up front -----------------------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (("--lr", "-1"), "--lr must be a finite number > 0, got -1.0"),
    (("--lr", "nan"), "--lr must be a finite number > 0"),
    (("--train-resolution", "-5"), "--train-resolution must be an integer >= 8, got -5"),
    (("--train-resolution", "0"), "--train-resolution must be an integer >= 8, got 0"),
    (("--budget-mflops", "inf"), "--budget-mflops must be a finite number > 0, got inf"),
    (("--budget-mparams", "nan"), "--budget-mparams must be a finite number > 0"),
    (("--resolution", "4"), "--resolution must be an integer >= 8"),
    (("--epochs", "0"), "--epochs must be an integer >= 1"),
    (("--batch-size", "1"), "--batch-size must be an integer >= 2"),
    (("--n-trials", "0"), "--n-trials must be an integer >= 1"),
    (("--timeout", "-3"), "--timeout must be a finite number > 0"),
    (("--seed", "-1"), "--seed must be an integer from 0 to"),
    (("--device", "bogus"), "--device 'bogus' is not a device"),
    (("--resolution", "100000", "--budget-mflops", "1e12"), "--resolution 100000 needs about"),  # budget first
    (("--train-resolution", "6000"), "--train-resolution 6000 needs about"),
    (("--storage", "/proc/dsearch/journal.log"), "storage /proc/dsearch/journal.log"),
    (("--storage", "FOLDER"), "is a folder; give a file path"),
])
def test_bad_numbers_and_places_are_one_line_before_anything_is_written(tiny_space, tmp_path, monkeypatch, capfd,
                                                                         args, needle):
    monkeypatch.chdir(tmp_path)
    args = tuple(str(tmp_path) if a == "FOLDER" else a for a in args)
    code, _, err = dsearch(capfd, "run", "--space", tiny_space, *RUN, *args)
    one_line_error(code, err, needle)
    assert not (tmp_path / "studies").exists()


def test_cost_and_train_check_their_numbers(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    one_line_error(*dsearch(capfd, "train", "resnet20", "--lr", "inf")[::2], "--lr must be a finite number > 0")
    one_line_error(*dsearch(capfd, "train", "resnet20", "--label-smoothing", "1.5")[::2],
                   "--label-smoothing must be a finite number >= 0 and < 1")
    one_line_error(*dsearch(capfd, "train", "resnet20", "--train-resolution", "0")[::2],
                   "--train-resolution must be an integer >= 8")
    one_line_error(*dsearch(capfd, "spaces", "--num-classes", "0")[::2], "--num-classes must be an integer >= 2")
    assert list(tmp_path.iterdir()) == []


def test_cost_refuses_a_resolution_that_cannot_fit(capfd):
    one_line_error(*dsearch(capfd, "cost", "resnet20", "--resolution", "100000")[::2], "needs about")
    one_line_error(*dsearch(capfd, "cost", "resnet20", "--resolution", "0")[::2],
                   "--resolution must be an integer >= 8")
    one_line_error(*dsearch(capfd, "cost", "resnet20", "--width", "inf")[::2], "--width must be a finite number > 0")


def test_an_unreachable_budget_is_said_before_memory(tiny_space, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    args = ("--space", tiny_space, *RUN, "--budget-mflops", "0.0001", "--train-resolution", "6000")
    code, _, err = dsearch(capfd, "run", *args)
    one_line_error(code, err, "no architecture of space 'tiny' fits --budget-mflops 0.0001: the cheapest costs")
    assert "--train-resolution" not in err and not (tmp_path / "studies").exists()


def memory_facts(tiny_space):
    """The tiny space's largest candidate and the embedded data: what a run's memory check weighs."""
    from dsearch.cost.memory import TRAINING_ACTIVATION_FACTOR
    from dsearch.data import EMBEDDED_NAME, load_dataset
    from dsearch.search.spaces import extreme_spec, load_space

    space, data = load_space(str(tiny_space)), load_dataset(EMBEDDED_NAME)
    largest = extreme_spec(space, data.in_channels, data.num_classes, cheapest=False)
    per_image = activation_bytes(largest, data.image_size[0], 1) * TRAINING_ACTIVATION_FACTOR
    return space, data, per_image, data.train_x[:1].numel()  # uint8 images: one byte a value


def test_a_batch_too_large_is_named_with_one_that_fits(tiny_space, tmp_path, monkeypatch, capfd):
    from dsearch.cost import memory

    monkeypatch.chdir(tmp_path)
    _, data, per_image, _ = memory_facts(tiny_space)
    monkeypatch.setattr(memory, "free_memory", lambda _device: 40 * per_image)  # room for 40 images' training
    fast = ("--budget-mflops", str(BUDGET), "--epochs", "1", "--quiet", "--no-finals")
    code, _, err = dsearch(capfd, "run", "--space", tiny_space, *fast, "--batch-size", "64", "--train-subset", "128")
    one_line_error(code, err, "--batch-size 64 is too large: training of tiny at batch 64 needs about")
    assert re.search(r"use --batch-size 32 \(about [\d.]+ MiB\) or a smaller --train-resolution$", err.strip()), err
    code, _, err = dsearch(capfd, "run", "--space", tiny_space, *fast, "--batch-size", "100000")
    n = len(data.train_x)
    one_line_error(code, err, f"--batch-size 100000 is too large: training of tiny at batch {n} (a step takes at "
                              f"most the {n} training images)")
    assert "use --batch-size 32 " in err and "resolution 28" not in err
    assert not (tmp_path / "studies").exists()


def test_training_images_held_on_the_device_are_named_with_a_subset_that_fits(tiny_space, monkeypatch):
    from dsearch.cost import memory
    from dsearch.search.config import check_fits

    space, data, per_image, image = memory_facts(tiny_space)
    other = (len(data.val_x) + len(data.test_x)) * image
    room = {"cpu": 10**12}
    monkeypatch.setattr(memory, "free_memory", lambda device: room.get(device.type, room["device"]))
    # A device (here "meta": not the CPU, so the images are copied there) with room for a batch of 64, the
    # validation and test images and 1000 training images, not all of them.
    room["device"] = 64 * per_image + other + 1000 * image
    assert len(data.train_x) > 1000
    with pytest.raises(DsearchError, match=r"training images held on meta .* use --train-subset 1000 or fewer"):
        check_fits(space, data, cfg(tiny_space, proxy=ProxyConfig(batch_size=64)), torch.device("meta"))
    check_fits(space, data, cfg(tiny_space, proxy=ProxyConfig(batch_size=64, train_subset=1000)),
               torch.device("meta"))  # the subset it named fits
    room["device"] = per_image // 2  # not even one image's activations
    with pytest.raises(DsearchError, match=r"^--train-resolution 28 needs about .* on one 28x28 image, .*; use a "
                                           r"smaller --train-resolution$"):
        check_fits(space, data, cfg(tiny_space, proxy=ProxyConfig(batch_size=64)), torch.device("meta"))


def test_activation_estimate_matches_a_real_forward_pass():
    spec = preset("resnet20")
    for size in (16, 24):
        model = build_model(spec).eval()
        total = []
        leaves = [m for m in model.modules() if next(m.children(), None) is None]
        for m in leaves:
            m.register_forward_hook(lambda _m, _i, out, sink=total: sink.append(out.numel()))
        with torch.no_grad():
            model(torch.zeros(2, spec.in_channels, size, size))
        assert activation_bytes(spec, size, batch=2) == 4 * (sum(total) + 2 * spec.in_channels * size * size)


# --- 5. divergence fails the trial, loudly --------------------------------------------------------------------------

def test_non_finite_weights_are_found():
    state = build_model(preset("resnet20")).state_dict()
    check_finite_state(state)
    name = next(k for k in state if k.endswith("running_var"))
    state[name] = state[name].clone()
    state[name][3] = math.inf
    with pytest.raises(TrainingDiverged, match=rf"{name} holds inf after training"):
        check_finite_state(state)


def test_inf_batch_norm_statistics_fail_the_trial_and_are_not_trained(tiny_space, tmp_path, monkeypatch):
    import dsearch.search.objective as study_mod

    real = study_mod.train_proxy

    def poisoned(*args, **kwargs):  # a finite loss, but a running variance that overflowed (first trial only)
        result = real(*args, **kwargs)
        if not poisoned.done:
            key = next(k for k in result.state if k.endswith("running_var"))
            result.state[key].fill_(math.inf)
            poisoned.done = True
        return result

    poisoned.done = False
    monkeypatch.setattr(study_mod, "train_proxy", poisoned)
    summary = run_search(cfg(tiny_space), "p", f"sqlite:///{tmp_path}/p.db", n_trials=1, log=quiet)
    failed = [t for t in summary.study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and summary.counts["complete"] == 1 and summary.trained == 1
    assert "running_var holds inf after training" in failed[0].user_attrs["reason"]
    assert "weights_artifact" not in failed[0].user_attrs and not failed[0].user_attrs.get("trained")
    assert ARTIFACTS_ATTR not in summary.study.user_attrs  # a local storage records no artifact path
    assert summary.failed == 1 and summary.shortfall() is None  # asked for one, got one


def test_a_diverging_run_exits_non_zero_with_why(tiny_space, tmp_path, monkeypatch, capfd):
    import dsearch.search.driver as study_mod

    monkeypatch.setattr(study_mod, "MAX_FAILURES_IN_A_ROW", 2)
    monkeypatch.chdir(tmp_path)
    code, out, err = dsearch(capfd, "run", "--space", tiny_space, *RUN, "--lr", "1e10", "--n-trials", "1")
    assert code == 1 and "Traceback" not in err
    assert err.startswith("dsearch run: error: 0 of 1 architectures trained: 2 trial(s) failed (last: training "
                          "diverged: ") and len(err.strip().splitlines()) == 1
    study = optuna.load_study(study_name="default", storage="sqlite:///studies/default/study.db")
    assert all(t.user_attrs["reason"].startswith("training diverged") for t in study.trials
               if t.state == TrialState.FAIL)


# --- 6, 7. no traceback for a user's mistake, Ctrl-C or a diverged trial; --debug shows them --------------------------

@pytest.mark.parametrize("text,needle", [
    (b"name: x\nresolution: 32\nstem: {width: 8}\nhead: {dropout: abc}\nstages: [{width: 8, stride: 1}]\n",
     "head.dropout: must be a number >= 0 and < 1, got 'abc'"),
    (b"name: t\xff\xfe\n", "not UTF-8 text"),
    (b"name: n\nresolution: 32\nstem: {width: 8}\nstages: [{width: [[16, 24], 32], stride: 2}]\n",
     "stages[0].width: each choice must be a single value (a number or a name), got [16, 24]"),
    (b"name: n\nresolution: 32\nstem: {width: 8}\nstages: [{width: 16, stride: 2, conv: [dsc, {a: 1}]}]\n",
     "stages[0].conv: each choice must be a single value"),
])
def test_bad_space_files_are_one_line(tmp_path, monkeypatch, capfd, text, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_bytes(text)
    one_line_error(*dsearch(capfd, "run", "--space", "bad.yaml", *RUN)[::2], needle)


class Payload:
    def __reduce__(self):
        return (os.mkdir, ("PWNED",))


def test_damaged_or_malicious_artifacts_are_refused_in_one_line(searched_study, tmp_path, monkeypatch, capfd):
    import pickle

    monkeypatch.chdir(tmp_path)
    shutil.copytree(searched_study["root"], tmp_path / "s")
    url = f"sqlite:///{tmp_path}/s/study.db"
    study = optuna.load_study(study_name="searched", storage=url)
    number = next(t.number for t in study.trials if t.user_attrs.get("weights_artifact"))
    for damage in (b"not a checkpoint", pickle.dumps(Payload())):
        for artifact in (tmp_path / "s" / "artifacts").iterdir():  # proxy and any fully trained weights
            artifact.write_bytes(damage)
        code, _, err = dsearch(capfd, "export", "searched", "--storage", url, "--trial", number, "--out", "e")
        one_line_error(code, err, "are damaged or not a state_dict of tensors")
    (tmp_path / "arch.json").write_text(preset("resnet20").to_json())
    (tmp_path / "payload.pt").write_bytes(pickle.dumps(Payload()))
    code, _, err = dsearch(capfd, "export", "arch.json", "--weights", "payload.pt", "--out", "e")
    one_line_error(code, err, "weights payload.pt are damaged or not a state_dict of tensors")
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "e").exists()


def test_debug_shows_the_traceback(tiny_space, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    for args in (("--debug", "run", "--device", "bogus"), ("run", "--device", "bogus", "--debug")):
        code, _, err = dsearch(capfd, *args, "--space", tiny_space, *RUN)
        assert code == 2 and "Traceback" in err and err.strip().endswith("is not a device; use auto, cpu, cuda, "
                                                                          "cuda:N or mps")


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(_args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "spaces", broken)
    with pytest.raises(ZeroDivisionError):
        cli.main(["spaces"])


def test_failed_trials_keep_their_reason_and_print_no_traceback(tiny_space, tmp_path, monkeypatch, capfd):
    """A crash, a diverged trial and Ctrl-C: each reason is kept; no traceback; exit 130 after Ctrl-C."""
    import dsearch.search.objective as study_mod

    monkeypatch.chdir(tmp_path)
    real = study_mod.train_proxy
    calls = []

    def crash_diverge_train_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated crash\nin two lines")
        if len(calls) == 2:
            raise TrainingDiverged("loss became nan in epoch 1 by step 2")
        if len(calls) == 3:
            return real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(study_mod, "train_proxy", crash_diverge_train_interrupt)
    code, out, err = dsearch(capfd, "run", "--space", tiny_space, *RUN, "--n-trials", "3")
    assert code == 130 and "Traceback" not in err + out, err
    assert "interrupted: every finished trial is kept" in out
    study = optuna.load_study(study_name="default", storage="sqlite:///studies/default/study.db")
    reasons = [t.user_attrs["reason"] for t in study.trials if t.state == TrialState.FAIL]
    assert reasons == ["RuntimeError: in two lines", "training diverged: loss became nan in epoch 1 by step 2",
                       "interrupted (Ctrl-C)"]
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 1


# --- 8. train and export say what a trial was ------------------------------------------------------------------------

def test_train_and_export_name_a_rejected_or_failed_trial(searched_study, tmp_path, monkeypatch, capfd):
    import dsearch.training.full as fulltrain

    monkeypatch.chdir(tmp_path)
    shutil.copytree(searched_study["root"], tmp_path / "s")
    url = f"sqlite:///{tmp_path}/s/study.db"
    study = optuna.load_study(study_name="searched", storage=url)
    rejected = next(t for t in study.trials if t.user_attrs.get("status") == "rejected")
    done = next(t for t in study.trials if t.state == TrialState.COMPLETE)
    # A trial whose worker was killed while training: its attribute still says "training".
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, params=done.params,
                                              distributions=done.distributions,
                                              user_attrs={**done.user_attrs, "status": "training"}))
    killed = len(study.trials) - 1

    def stop(*_args, **_kwargs):
        raise DsearchError("stopped before training")

    monkeypatch.setattr(fulltrain, "train_full", stop)
    code, out, _ = dsearch(capfd, "train", "searched", "--storage", url, "--trial", rejected.number, "--quiet")
    assert code == 2
    assert f"note: trial {rejected.number} was rejected by the budget before training (over budget:" in out
    code, out, _ = dsearch(capfd, "export", "searched", "--storage", url, "--trial", killed, "--out", "e")
    assert code == 0
    assert f"note: trial {killed} failed (its worker was killed or lost while the trial ran); exporting" in out


# --- the fault test: SIGKILL mid-trial, then resume ---------------------------------------------------------------

def _states(db: Path) -> dict[int, tuple[str, str | None]]:
    """trial number -> (state, status attr), read straight from the SQLite file ({} before Optuna made its tables)."""
    try:
        with closing(sqlite3.connect(db, timeout=30)) as con:
            rows = con.execute("SELECT t.number, t.state, a.value_json FROM trials t LEFT JOIN trial_user_attributes a "
                               "ON a.trial_id = t.trial_id AND a.key = 'status'").fetchall()
    except sqlite3.OperationalError:
        return {}
    return {n: (state, status and status.strip('"')) for n, state, status in rows}


def test_a_worker_killed_mid_trial_loses_nothing_on_resume(tiny_space, tmp_path, monkeypatch):
    monkeypatch.setenv("DSEARCH_HEARTBEAT_S", "1")  # marked failed after 3 missed heartbeats, not 60 s
    db = tmp_path / "kill.db"
    args = ["run", "--space", str(tiny_space), "--budget-mflops", str(BUDGET), "--sampler", "random", "--epochs", "1",
            "--batch-size", "64", "--train-subset", "512", "--n-trials", "50", "--quiet", "--no-finals",
            "--study-name", "kill", "--storage", f"sqlite:///{db}"]
    code_under_test = str(Path(cli.__file__).resolve().parents[1])  # not whichever dsearch is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [code_under_test, os.environ.get("PYTHONPATH")]))}
    worker = subprocess.Popen([sys.executable, "-m", "dsearch", *args], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and worker.poll() is None:
            states = _states(db) if db.exists() else {}
            done = [n for n, (s, _) in states.items() if s == "COMPLETE"]
            training = [n for n, (s, st) in states.items() if s == "RUNNING" and st == "training"]
            if done and training:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the worker never got to a second trained trial: {worker.stderr.read().decode()[-500:]}")
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
    before = optuna.load_study(study_name="kill", storage=f"sqlite:///{db}").trials
    finished = {t.number: (t.values, t.user_attrs["val_acc"]) for t in before if t.state == TrialState.COMPLETE}
    killed = [t.number for t in before if t.state == TrialState.RUNNING]
    assert finished and len(killed) == 1
    time.sleep(3.5)  # the grace period of three 1-s heartbeats
    proxy = ProxyConfig(epochs=1, batch_size=64, train_subset=512)
    summary = run_search(cfg(tiny_space, proxy=proxy), "kill", f"sqlite:///{db}", n_trials=1, log=quiet)
    after = {t.number: t for t in summary.study.trials}
    assert sorted(after) == list(range(len(after)))  # none lost, none duplicated
    for number, (values, acc) in finished.items():
        assert after[number].state == TrialState.COMPLETE and after[number].values == values
        assert after[number].user_attrs["val_acc"] == acc
    assert after[killed[0]].state == TrialState.FAIL
    assert summary.counts["complete"] == len(finished) + 1 and summary.counts["failed"] == 1


def test_chance_note_is_the_one_sided_binomial_test():
    import math

    from dsearch.training.proxy import CHANCE_P, chance_note

    def p_value(k, n, p):  # P(X >= k) for X ~ Binomial(n, p), summed by hand
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))

    for k in range(5, 16):
        at_chance = p_value(k, 50, 0.1) > CHANCE_P
        assert (chance_note(k / 50, 50, 10) is not None) == at_chance, k
    assert chance_note(0.1, 1000, 10) is not None and chance_note(0.3, 1000, 10) is None


def test_a_run_at_chance_is_said_so_by_run_show_and_export(tiny_space, tmp_path, monkeypatch, capfd):
    import dataclasses

    import dsearch.search.objective as objective

    real = objective.train_proxy
    monkeypatch.setattr(objective, "train_proxy",  # what 4 steps of training gave: guessing
                        lambda *a, **k: dataclasses.replace(real(*a, **k), val_acc=0.1))
    monkeypatch.chdir(tmp_path)
    code, _, err = dsearch(capfd, "run", "--space", tiny_space, "--study-name", "c", *RUN)
    assert code == 0 and "warning: every trained trial scored chance accuracy" in err
    code, out, _ = dsearch(capfd, "show", "c")
    assert code == 0 and "chance accuracy" in out
    code, out, _ = dsearch(capfd, "export", "c", "--trial", "best")
    assert code == 0 and "indistinguishable from guessing" in out


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_sigterm_ends_a_run_like_ctrl_c_and_leaves_nothing_running(tiny_space, tmp_path, jobs):
    def children_of(pid: int) -> list[int]:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    db = tmp_path / "term.db"
    args = [sys.executable, "-m", "dsearch", "run", "--space", str(tiny_space), "--budget-mflops", str(BUDGET),
            "--sampler", "random", "--epochs", "50", "--batch-size", "64", "--train-subset", "512", "--n-trials",
            "20", "--quiet", "--no-finals", "--jobs", str(jobs), "--study-name", "term", "--storage", f"sqlite:///{db}"]
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # until every worker is training
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name="term", storage=f"sqlite:///{db}")
        except KeyError:  # not created yet
            continue
        running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
        if sum(t.user_attrs.get("status") == "training" for t in running) >= jobs:  # not merely sampling
            break
    children = children_of(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    for _ in range(50):  # no worker left behind (multiprocessing's resource tracker may take a moment to see EOF)
        left = [c for c in children if alive(c)]
        if not left:
            break
        time.sleep(0.2)
    assert not left, [Path(f"/proc/{c}/cmdline").read_bytes() for c in left]
    study = optuna.load_study(study_name="term", storage=f"sqlite:///{db}")
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert failed and all(t.user_attrs.get("reason") == "terminated (SIGTERM)" for t in failed), \
        [(t.state, t.user_attrs.get("status"), t.user_attrs.get("reason")) for t in study.trials]
