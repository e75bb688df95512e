"""Pareto analysis against brute force: non-dominated sets, hypervolume, the flattened frame, `dsearch show`."""
import itertools
import random
import subprocess
import sys

import pandas as pd
import pytest

from dsearch import preset, with_conv
from dsearch.analysis.pareto import arch_columns, hypervolume, pareto_front, progress_frame, trials_frame
from dsearch.model.archspec import iter_conv_units


def random_frame(n, seed):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        status = rng.choice(["complete", "complete", "complete", "rejected", "failed"])
        rows.append({"trial": i, "state": "COMPLETE", "status": status,
                     "val_acc": round(rng.uniform(0.1, 0.9), 2) if status == "complete" else None,
                     "mflops": round(rng.uniform(1, 100), 1), "mparams": round(rng.uniform(0.1, 3), 2)})
    return pd.DataFrame(rows)


def brute_force_front(frame, cost):
    done = frame[frame["status"] == "complete"]
    keep = set()
    for i, a in done.iterrows():
        dominated = any(
            (b[cost] <= a[cost] and b["val_acc"] >= a["val_acc"]) and (b[cost] < a[cost] or b["val_acc"] > a["val_acc"])
            for j, b in done.iterrows() if j != i)
        if not dominated:
            keep.add((a[cost], a["val_acc"]))
    return keep


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("cost", ["mflops", "mparams"])
def test_front_is_the_non_dominated_set(seed, cost):
    frame = random_frame(40, seed)
    front = pareto_front(frame, cost)
    # Duplicated points are one point of the set; the front keeps one trial for each.
    assert set(zip(front[cost], front["val_acc"], strict=True)) == brute_force_front(frame, cost)
    assert len(front) == len(set(zip(front[cost], front["val_acc"], strict=True)))
    assert list(front[cost]) == sorted(front[cost])


def grid_area(points, ref_cost, ref_score, cells=400):
    """Area dominated by `points` within the reference box, by counting fine grid cells (cell centres)."""
    lo_score = ref_score
    hi_score = max([s for _, s in points] + [ref_score])
    lo_cost = min([c for c, _ in points] + [ref_cost])
    if hi_score == lo_score or lo_cost == ref_cost:
        return 0.0
    dc, ds = (ref_cost - lo_cost) / cells, (hi_score - lo_score) / cells
    covered = 0
    for i, j in itertools.product(range(cells), range(cells)):
        c, s = lo_cost + (i + 0.5) * dc, lo_score + (j + 0.5) * ds
        covered += any(pc <= c and ps >= s for pc, ps in points)
    return covered * dc * ds


def test_hypervolume_by_hand():
    front = pd.DataFrame({"mflops": [10.0, 20.0, 40.0], "val_acc": [0.5, 0.7, 0.8]})
    # Rectangles from each point to the reference (accuracy 0, 50 MFLOPs), in union:
    # 10..20 x 0.5 + 20..40 x 0.7 + 40..50 x 0.8 = 5 + 14 + 8 = 27
    assert hypervolume(front, 50.0) == pytest.approx(27.0)
    assert hypervolume(front, 30.0) == pytest.approx(5 + 7)  # the 40-MFLOPs point is outside the box
    assert hypervolume(front.iloc[:0], 50.0) == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_hypervolume_matches_grid_counting(seed):
    frame = random_frame(25, seed)
    front = pareto_front(frame)
    points = list(zip(front["mflops"], front["val_acc"], strict=True))
    exact = hypervolume(front, 80.0, 0.2)
    inside = [(c, s) for c, s in points if c < 80.0 and s > 0.2]
    assert exact == pytest.approx(grid_area(inside, 80.0, 0.2), rel=0.02)
    # A dominated point adds nothing.
    assert hypervolume(frame[frame["status"] == "complete"], 80.0, 0.2) == pytest.approx(exact)


def test_progress_is_monotone_and_ends_at_the_full_hypervolume():
    frame = random_frame(30, 7)
    progress = progress_frame(frame, budget=60.0)
    assert list(progress["trial"]) == list(frame["trial"])
    assert progress["hypervolume"].is_monotonic_increasing
    best = progress["best_score"].dropna()
    assert best.is_monotonic_increasing
    within = frame[(frame["status"] == "complete") & (frame["mflops"] <= 60.0)]
    assert best.iloc[-1] == within["val_acc"].max()
    assert progress["hypervolume"].iloc[-1] == pytest.approx(hypervolume(pareto_front(frame), 60.0))


def test_arch_columns_count_conv_units():
    spec = with_conv(preset("resnet20"), "scc")
    spec = spec.replace(stages=(spec.stages[0], with_conv(spec, "dsc").stages[1], spec.stages[2]))
    row = arch_columns(spec)
    units = [conv.kind for _, conv, *_ in iter_conv_units(spec)]
    assert len(units) == 18  # 3 stages x 3 basic blocks x 2 conv units
    assert row["share.scc"] == pytest.approx(12 / 18) and row["share.dsc"] == pytest.approx(6 / 18)
    assert row["share.regular"] == 0 and row["dominant_conv"] == "scc"
    assert row["stage2.conv"] == "dsc" and row["stage1.width"] == 16 and row["stage3.depth"] == 3
    assert row["stage1.scc_groups"] == 2


def test_frame_of_a_real_study(searched_study):
    frame = trials_frame(searched_study["study"])
    trials = searched_study["study"].trials
    assert list(frame["trial"]) == [t.number for t in trials]
    done = frame[frame["status"] == "complete"]
    assert len(done) == 3 and done["val_acc"].between(0, 1).all() and (done["mflops"] <= searched_study["budget"]).all()
    assert frame.loc[frame["status"] == "rejected", "mflops"].gt(searched_study["budget"]).all()
    shares = done[[c for c in frame.columns if c.startswith("share.")]].sum(axis=1)
    assert shares.round(9).eq(1.0).all()


def test_cli_show_and_csv_round_trip(searched_study, tmp_path):
    s = searched_study
    proc = subprocess.run([sys.executable, "-m", "dsearch", "show", s["name"], "--storage", s["storage"],
                           "--csv", "t.csv", "--parquet", "t.parquet"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    frame = trials_frame(s["study"])
    assert f"{len(frame)} trials: 3 trained" in proc.stdout and "hypervolume" in proc.stdout
    for trial in pareto_front(frame)["trial"]:
        assert any(line.split()[:1] == [str(trial)] for line in proc.stdout.splitlines())
    back = pd.read_csv(tmp_path / "t.csv")
    assert list(back.columns) == list(frame.columns) and len(back) == len(frame)
    pd.testing.assert_series_equal(back["val_acc"], frame["val_acc"].astype(float), check_names=False)
    # integers stay integers and flags stay booleans in the file, even where some trials lack the value
    raw = pd.read_csv(tmp_path / "t.csv", dtype=str, keep_default_na=False)
    for column in ("trial", "epochs", "resolution", "stage1.width", "stage1.kernel"):
        assert all(v == "" or v.isdigit() for v in raw[column]), column
    assert set(raw["pareto"]) <= {"True", "False"} and back["pareto"].dtype == bool
    assert raw["epochs"].eq("").any() and frame["epochs"].dtype == "Int64"  # rejected trials were not trained
    rows = zip(frame["trial"], frame["status"], frame["mflops"], frame["val_acc"], strict=True)
    done = [(c, a, n) for n, st, c, a in rows if st == "complete"]
    brute = {n for c, a, n in done if not any(c2 <= c and a2 >= a and (c2, a2) != (c, a) for c2, a2, _ in done)}
    assert set(back.loc[back["pareto"], "trial"]) == brute
    starts = pd.to_datetime(back["datetime_start"])
    ends = pd.to_datetime(back["datetime_complete"])
    assert (ends >= starts).all() and starts.is_monotonic_increasing

    def plain(f):
        return f.astype(object).where(f.notna(), None)

    pd.testing.assert_frame_equal(plain(pd.read_parquet(tmp_path / "t.parquet")), plain(frame), check_dtype=False)


def test_latency_front_and_measurement(searched_study, tmp_path):
    from dsearch.latency import LatencyModel, Protocol, parse_target

    frame = trials_frame(searched_study["study"])
    done = frame[frame["status"] == "complete"]
    assert (done["latency_ms"] > 0).all()
    front = pareto_front(frame, "latency_ms")
    assert set(zip(front["latency_ms"], front["val_acc"], strict=True)) == brute_force_front(done, "latency_ms")
    proc = subprocess.run([sys.executable, "-m", "dsearch", "show", searched_study["name"], "--storage",
                           searched_study["storage"], "--by", "latency_ms"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and "latency (ms)" in proc.stdout, proc.stderr
    # 300 MFLOPs against 1.4 MFLOPs: the measurement must order them, whatever the machine's noise.
    model = LatencyModel.for_target(parse_target("torch-cpu"), tmp_path, protocol=Protocol(min_repeats=5, timed_s=0.05))
    big = model.measure(preset("mobilenet_v2", num_classes=10, in_channels=1)).median_ms
    small = model.measure(preset("resnet20", width=0.25, in_channels=1)).median_ms
    assert big > 3 * small
