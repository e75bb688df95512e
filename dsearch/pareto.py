"""Pareto analysis of a study: trials as a pandas DataFrame and its non-dominated set."""
from __future__ import annotations

import optuna
import pandas as pd


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial with its dsearch attributes (cost, accuracy, status, architecture)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        rows.append({
            "trial": t.number, "state": t.state.name, "status": a.get("status", t.state.name.lower()),
            "val_acc": a.get("val_acc"), "test_acc": a.get("test_acc"), "mflops": a.get("mflops"),
            "mparams": a.get("mparams"), "resolution": a.get("resolution"), "mflops_train": a.get("mflops_train"),
            "train_resolution": a.get("train_resolution"), "train_time_s": a.get("train_time_s"),
            "device": a.get("device"), "arch": a.get("arch_summary"),
            "reason": a.get("reason") or t.system_attrs.get("fail_reason"),
        })
    columns = ["trial", "state", "status", "val_acc", "test_acc", "mflops", "mparams", "resolution", "mflops_train",
               "train_resolution", "train_time_s", "device", "arch", "reason"]
    return pd.DataFrame(rows, columns=columns)


def pareto_front(frame: pd.DataFrame, cost: str = "mflops", score: str = "val_acc") -> pd.DataFrame:
    """Trained trials not dominated in (score up, cost down), sorted by cost."""
    done = frame[(frame["status"] == "complete") & frame[score].notna()]
    done = done.sort_values([cost, score], ascending=[True, False])
    best = float("-inf")
    keep = []
    for idx, value in done[score].items():
        if value > best:
            keep.append(idx)
            best = value
    return done.loc[keep]
