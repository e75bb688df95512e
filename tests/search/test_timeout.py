"""`--timeout`: the command's time limit holds inside one long training, and the finals do not start after it."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_study import budget_between

from dsearch.analysis.finals import PLAN_ATTR
from dsearch.data import load_dataset
from dsearch.errors import Deadline, TimedOut
from dsearch.search.spaces import extreme_spec, load_space
from dsearch.training.proxy import DeviceData, ProxyConfig, select_device, train_proxy

CODE_UNDER_TEST = str(Path(__file__).resolve().parents[2])


def test_training_stops_at_the_first_step_after_the_deadline(tiny_space):
    data = load_dataset("fashion-mnist-embedded", seed=0)
    device_data = DeviceData(data, select_device("cpu"), train_subset=128)
    spec = extreme_spec(load_space(str(tiny_space)), 1, 10)
    steps = []
    with pytest.raises(TimedOut, match=r"^stopped by --timeout 5 s after 0 of 1000 epochs$"):
        train_proxy(spec, device_data, ProxyConfig(epochs=1000, batch_size=64, train_subset=128),
                    progress=lambda step, total: steps.append(step),
                    deadline=Deadline(time.time() - 1, "--timeout 5 s"))
    assert steps == []  # stopped before the first step reported


@pytest.mark.slow
def test_run_with_a_timeout_ends_within_it_and_keeps_the_cut_trial_as_failed(tiny_space, tmp_path):
    limit = 8
    args = ["run", "--space", str(tiny_space), "--budget-mflops", f"{budget_between(tiny_space):.3f}",
            "--timeout", str(limit), "--epochs", "100000", "--batch-size", "64", "--train-subset", "256",
            "--n-trials", "3", "--study-name", "t", "--quiet"]  # with the finals: they must not start
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [CODE_UNDER_TEST, os.environ.get("PYTHONPATH")]))}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "dsearch", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert wall < limit + 45, f"ran {wall:.0f} s with --timeout {limit}"  # the limit plus start-up and one step
    assert f"time limit: --timeout {limit} s passed after 0 of 3 architectures were trained" in proc.stdout
    assert f"finals: not started: --timeout {limit} s has passed" in proc.stdout
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/studies/t/study.db")
    cut = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert len(cut) == 1 and cut[0].user_attrs["timed_out"] is True
    reason = cut[0].user_attrs["reason"]
    assert re.fullmatch(rf"stopped by --timeout {limit} s after (\d+) of 100000 epochs", reason), reason
    assert f"trial {cut[0].number} ({reason})" in proc.stdout
    done = int(re.search(r"after (\d+) of", reason).group(1))
    assert len(cut[0].user_attrs.get("history", [])) == done  # what it learned per epoch is kept with it
    assert not any(t.state == TrialState.RUNNING for t in study.get_trials())
    assert PLAN_ATTR not in study.user_attrs  # the finals never began
