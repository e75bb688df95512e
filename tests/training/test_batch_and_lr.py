"""Issue 34: a batch larger than the data is clamped and the learning rate follows the batch used; too few steps,
a diverging --lr and a result at chance each say what they see, in `dsearch run`, `dsearch train` and the finals."""
import json

import optuna
import pytest
from conftest import dsearch
from optuna.trial import TrialState

import dsearch.training.proxy as proxy_mod
from dsearch.analysis.pareto import chance_line, trials_frame
from dsearch.data import load_dataset
from dsearch.search.spaces import extreme_spec, load_space
from dsearch.training.advice import MIN_STEPS_PER_EPOCH, chance_advice, chance_causes, steps_warning
from dsearch.training.full import full_proxy
from dsearch.training.proxy import ProxyConfig, TrainResult

HUGE = 100_000  # the issue's --batch-size: far more than the embedded data's training split
SGD_LR_AT_128 = 0.04  # the documented default peak lr of SGD at batch 128 (docs/cli.md), scaled linearly
RUN = ("--budget-mflops", "0.3", "--sampler", "random", "--epochs", "1", "--no-finals", "--n-trials", "1")


@pytest.fixture(scope="module")
def n_train() -> int:
    """The embedded data's training split, counted from the data (not from the trainer)."""
    return len(load_dataset().train_x)


@pytest.fixture
def optimizer_lrs(monkeypatch) -> list[float]:
    """The peak lr of every optimizer the trainer makes, read from the optimizer itself before any schedule."""
    seen: list[float] = []
    real = proxy_mod._optimizer

    def spy(model, cfg):
        optimizer = real(model, cfg)
        seen.append(optimizer.param_groups[0]["lr"])
        return optimizer

    monkeypatch.setattr(proxy_mod, "_optimizer", spy)
    return seen


def test_run_with_a_batch_larger_than_the_data_clamps_it_and_scales_the_lr_by_it(
        tiny_space, tmp_path, monkeypatch, capfd, n_train, optimizer_lrs):
    import dataclasses

    import dsearch.search.objective as objective

    real = objective.train_proxy
    monkeypatch.setattr(objective, "train_proxy",  # the result at chance, whatever one step of training gave
                        lambda *a, **k: dataclasses.replace(real(*a, **k), val_acc=0.1))
    monkeypatch.chdir(tmp_path)
    code, out, err = dsearch(capfd, "run", "--space", tiny_space, *RUN, "--batch-size", HUGE)
    assert code == 0, err
    expected = SGD_LR_AT_128 * n_train / 128
    assert optimizer_lrs and all(lr == pytest.approx(expected) for lr in optimizer_lrs)
    assert expected < SGD_LR_AT_128 * HUGE / 128 / 10  # not the lr of the number typed
    clamp = next(line for line in err.splitlines() if "--batch-size 100000" in line)
    assert f"training split ({n_train} images)" in clamp and f"batches of {n_train}" in clamp, err
    few = next(line for line in out.splitlines() if "training step per epoch" in line)
    assert few.startswith("warning: only 1 training step per epoch")
    assert all(flag in few for flag in ("--batch-size", "--train-subset", "--epochs")), few
    study = optuna.load_study(study_name="default", storage="sqlite:///studies/default/study.db")
    trained = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert trained and all((t.user_attrs["batch_size"], t.user_attrs["steps_per_epoch"]) == (n_train, 1)
                           and t.user_attrs["lr"] == pytest.approx(expected) for t in trained)
    chance = next(line for line in err.splitlines() if "scored chance accuracy" in line)
    assert "likely cause: " in chance and "only 1 step per epoch" in chance and "70x the sgd default" in chance
    assert "train longer" not in chance  # the old advice, which named a cause it could not see
    code, out, _ = dsearch(capfd, "export", "default", "--trial", "best", "--out", "e")
    assert code == 0 and "indistinguishable from guessing" in out and "likely cause: only 1 step per epoch" in out


def test_train_with_a_batch_larger_than_the_data_records_the_batch_and_lr_used(
        tiny_space, tmp_path, monkeypatch, capfd, n_train, optimizer_lrs):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "arch.json").write_text(extreme_spec(load_space(str(tiny_space)), 1, 10).to_json())
    code, _, err = dsearch(capfd, "train", "arch.json", "--epochs", "1", "--batch-size", HUGE, "--out", "t",
                           "--quiet")
    assert code == 0, err
    expected = SGD_LR_AT_128 * n_train / 128
    assert optimizer_lrs == [pytest.approx(expected)]
    assert f"--batch-size {HUGE} is larger than the training split ({n_train} images)" in err  # even with --quiet
    facts = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert (facts["batch_size"], facts["steps_per_epoch"]) == (n_train, 1)
    assert facts["lr"] == pytest.approx(expected)
    assert facts["config"]["batch_size"] == n_train and facts["config"]["lr"] == pytest.approx(expected)


def test_a_diverging_lr_fails_the_trial_says_so_and_the_run_goes_on(tiny_space, tmp_path, monkeypatch, capfd):
    import dsearch.search.driver as driver

    monkeypatch.setattr(driver, "MAX_FAILURES_IN_A_ROW", 2)  # two diverged trials: the run went on after the first
    monkeypatch.chdir(tmp_path)
    code, _, err = dsearch(capfd, "run", "--space", tiny_space, *RUN, "--batch-size", "64", "--train-subset", "512",
                           "--lr", "50", "--quiet")
    assert code == 1 and "Traceback" not in err
    assert "(last: training diverged: loss exploded to " in err and len(err.strip().splitlines()) == 1, err
    study = optuna.load_study(study_name="default", storage="sqlite:///studies/default/study.db")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 2
    assert all(t.user_attrs["status"] == "failed" and t.user_attrs["lr"] == 50
               and t.user_attrs["reason"].startswith("training diverged: loss exploded to ") for t in failed)
    code, out, _ = dsearch(capfd, "show", "default")
    assert code == 0
    assert all(f"trial {t.number} failed: training diverged: loss exploded to " in out for t in failed), out


def test_train_with_a_diverging_lr_is_one_line(tiny_space, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "arch.json").write_text(extreme_spec(load_space(str(tiny_space)), 1, 10).to_json())
    code, _, err = dsearch(capfd, "train", "arch.json", "--epochs", "1", "--lr", "50", "--out", "t", "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "error: training diverged (loss exploded to " in err and "lower --lr" in err
    assert not (tmp_path / "t").exists()


def test_the_full_schedule_clamps_its_batch_and_scales_its_lr_by_it(n_train):
    asked = ProxyConfig(epochs=10, batch_size=HUGE)
    full = full_proxy(asked, n_train)
    assert full.batch_size == n_train and full.lr == pytest.approx(SGD_LR_AT_128 * n_train / 128)
    assert full_proxy(ProxyConfig(batch_size=256), n_train).lr == pytest.approx(SGD_LR_AT_128 * 2)  # not clamped
    assert steps_warning(full, n_train, subset=False) == (
        f"only 1 training step per epoch ({n_train} images in batches of {n_train}; 10 over 10 epochs): too few to "
        "learn much; lower --batch-size or raise --epochs")  # `dsearch train` has no --train-subset
    assert steps_warning(ProxyConfig(batch_size=128), n_train) is None  # 70 steps per epoch
    assert steps_warning(ProxyConfig(batch_size=n_train // (MIN_STEPS_PER_EPOCH - 1)), n_train) is not None


def test_the_chance_advice_names_what_it_sees():
    cfg = ProxyConfig()
    diverged = TrainResult(0.1, 0.1, batch_size=128, lr=0.04, steps_per_epoch=70, peak_loss=9.0)
    healthy = TrainResult(0.1, 0.1, batch_size=128, lr=0.04, steps_per_epoch=70, peak_loss=2.3)
    assert chance_advice(chance_causes(diverged, cfg, 10)).startswith("likely cause: the training loss diverged "
                                                                     "(it rose to 9, 4x the 2.30 of guessing)")
    assert chance_advice(chance_causes(healthy, cfg, 10)) == ("train longer (--epochs, more data than "
                                                              "--train-subset) or check the data")
    high = TrainResult(0.1, 0.1, batch_size=128, lr=0.5, steps_per_epoch=70, peak_loss=2.3)
    assert "lower --lr" in chance_advice(chance_causes(high, ProxyConfig(lr=0.5), 10))


def test_a_study_made_before_causes_were_kept_gets_the_general_advice(searched_study):
    frame = trials_frame(searched_study["study"]).copy()
    frame["at_chance"] = frame["status"] == "complete"
    frame["chance_cause"] = None
    assert chance_line(frame).endswith("train longer (--epochs, more data than --train-subset) or check the data")
