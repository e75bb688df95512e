"""Latency targets, the measurement protocol, the on-disk tables and the predictor.

Real ONNX Runtime and torch timings on small nets with few repeats; assertions are on structure, caching,
keying and agreement within loose factors, never on a tight timing.
"""
from __future__ import annotations

import json
import multiprocessing
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import dsearch, one_line_error

from dsearch import preset, spec_cost
from dsearch.cost.count import count_cost
from dsearch.errors import DsearchError
from dsearch.latency import LatencyModel, LatencyTable, Protocol, Target, parse_target
from dsearch.latency import protocol as protocol_module
from dsearch.latency import table as table_module
from dsearch.latency.cpu_lock import timing_exclusive, training_shared
from dsearch.latency.parts import network_parts
from dsearch.latency.protocol import measure_runner, summarise
from dsearch.model.builder import build_model
from dsearch.model.presets import with_conv

FAST = Protocol(warmup_runs=1, warmup_s=0.0, min_repeats=5, max_repeats=20, timed_s=0.02, attempts=2)


def small(kind: str = "dsc"):
    """A MobileNetV2 at width 0.25 on 1-channel 32x32 images: milliseconds to time."""
    return with_conv(preset("mobilenet_v2", width=0.25, num_classes=10, in_channels=1).replace(resolution=32), kind)


@pytest.fixture(autouse=True)
def _lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DSEARCH_LOCK_DIR", str(tmp_path))


# --- targets ---------------------------------------------------------------------------------------------------

def test_target_names_round_trip_and_defaults():
    t = parse_target("ort-cpu")
    assert t == Target("ort-cpu", 1, 1, None) and t.short == "ort-cpu"
    t = parse_target("torch-cpu:batch=8,threads=2,resolution=160")
    assert (t.runtime, t.threads, t.batch, t.resolution) == ("torch-cpu", 2, 8, 160)
    assert parse_target(t.name) == t and parse_target(t.short) == t
    assert t.size(224) == 160 and parse_target("ort-cpu").size(224) == 224


@pytest.mark.parametrize("text, needle", [("onnx", "unknown runtime 'onnx'"), ("ort-cpu:threads=0", "threads"),
                                          ("ort-cpu:cores=2", "not one of"), ("", "must name a runtime"),
                                          ("torch-cpu:batch=x", "batch must be a positive integer")])
def test_bad_targets_are_one_line(text, needle):
    with pytest.raises(DsearchError, match=needle):
        parse_target(text)


def test_missing_onnxruntime_names_the_extra(monkeypatch):
    import importlib.util

    from dsearch.latency.targets import check_available

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name))
    with pytest.raises(DsearchError, match=r"dsearch\[onnx\]"):
        check_available(parse_target("ort-cpu"))


# --- the protocol ----------------------------------------------------------------------------------------------

def test_summary_matches_numpy():
    rng = np.random.default_rng(0)
    seconds = list(rng.uniform(0.001, 0.002, 37))
    m = summarise(seconds, max_spread=10)
    ms = np.array(seconds) * 1000
    assert m.median_ms == pytest.approx(np.median(ms), abs=1e-4)
    assert m.p90_ms == pytest.approx(np.percentile(ms, 90), abs=1e-4)
    assert m.iqr_ms == pytest.approx(np.percentile(ms, 75) - np.percentile(ms, 25), abs=1e-4)
    assert m.repeats == 37 and not m.noisy


def test_a_busy_machine_is_measured_again_then_flagged():
    calls = []

    def run():  # every fourth run is 20x slower: p90 far above the median
        calls.append(1)
        time.sleep(0.002 if len(calls) % 4 == 0 else 0.0001)

    m = measure_runner(run, Protocol(warmup_runs=1, warmup_s=0, min_repeats=12, max_repeats=12, attempts=3))
    assert m.noisy and m.spread > 0.25
    assert len(calls) == 3 * 13  # three attempts of 1 warm-up + 12 timed runs


def test_a_sleep_is_measured_within_a_loose_factor():
    m = measure_runner(lambda: time.sleep(0.002), FAST)
    assert 1.9 <= m.median_ms <= 20 and m.p90_ms >= m.median_ms


def _hold_training(path: str, ready, seconds: float) -> None:
    import os

    os.environ["DSEARCH_LOCK_DIR"] = path
    with training_shared():
        ready.set()
        time.sleep(seconds)


def test_timing_waits_for_a_training_in_another_process(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold_training, args=(str(tmp_path), ready, 1.5))
    proc.start()
    try:
        assert ready.wait(60)
        start = time.perf_counter()
        with timing_exclusive():
            waited = time.perf_counter() - start
        assert waited >= 0.5  # the other process trained for 1.5 s after `ready`
    finally:
        proc.join(30)
    with timing_exclusive(), timing_exclusive(), training_shared():
        pass  # re-entrant, and a timing thread's own training never deadlocks


# --- parts -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["dsc", "scc", "bsconv_s", "shuffle", "regular"])
def test_parts_add_up_to_the_network(kind):
    spec = small(kind)
    parts = network_parts(spec, 32)
    params = sum(sum(t.numel() for t in p.build().parameters()) for p in parts)
    cost = spec_cost(spec)
    assert params == cost.params
    if kind != "scc":  # model.py's SCC gathers its window channels, an op fvcore has no count for
        assert sum(count_cost(p.build(), (p.channels, p.size, p.size)).macs for p in parts) == cost.macs
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        for p in parts:
            assert x.shape[1:] == (p.channels, p.size, p.size)
            x = p.build().eval()(x)
    assert x.shape == (1, 10)
    assert parts[0].kind == "stem" and parts[-1].kind == "head" and len({p.key for p in parts}) < len(parts)


def test_parts_of_the_standalone_network_match_dsearch_weights():
    spec = small("scc")
    whole = build_model(spec, standalone=True).eval()
    ref = build_model(spec).eval()
    whole.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(whole(x), ref(x), atol=1e-5)


# --- tables ----------------------------------------------------------------------------------------------------

def test_tables_are_keyed_by_machine_and_versions(tmp_path, monkeypatch):
    target = parse_target("torch-cpu")
    here = LatencyTable.for_target(target, tmp_path)
    assert here.local() and LatencyTable.for_target(target, tmp_path).path == here.path
    assert LatencyTable.for_target(parse_target("torch-cpu:threads=2"), tmp_path).path != here.path
    real = protocol_module.machine()
    monkeypatch.setattr(table_module, "machine", lambda: {**real, "cpu": "Some Other CPU"})
    other = LatencyTable.for_target(target, tmp_path)
    assert other.path != here.path
    monkeypatch.undo()
    assert not LatencyTable.open(other.path).local()  # copied here from that machine: read, never added to


def test_a_copied_table_predicts_and_refuses_what_it_lacks(tmp_path, monkeypatch):
    spec = small()
    real = protocol_module.machine()
    monkeypatch.setattr(table_module, "machine", lambda: {**real, "cpu": "The Phone"})
    there = LatencyModel.for_target(parse_target("torch-cpu"), tmp_path / "there", protocol=FAST)
    expected = there.predict(spec).ms
    monkeypatch.undo()
    copied = LatencyModel.for_target(parse_target("torch-cpu"), table=there.table.path, protocol=FAST)
    assert not copied.local and copied.predict(spec).ms == expected
    with pytest.raises(DsearchError, match="another machine"):
        copied.predict(small("scc"))
    with pytest.raises(DsearchError, match="is for torch-cpu, not ort-cpu"):
        LatencyModel.for_target(parse_target("ort-cpu"), table=there.table.path)


def test_tables_merge_across_workers_and_survive_a_torn_line(tmp_path):
    target = parse_target("torch-cpu")
    a = LatencyModel.for_target(target, tmp_path, protocol=FAST, calibration=0)
    b = LatencyModel.for_target(target, tmp_path, protocol=FAST, calibration=0)
    assert a.table.path == b.table.path
    first = a.predict(small())
    assert first.measured_now == len({p.key for p in a.parts(small())})
    again = b.predict(small())  # the other worker reads what the first one measured
    assert again.measured_now == 0 and again.ms == first.ms
    with open(a.table.path, "ab") as f:
        f.write(b'{"part": "torn')  # a crash in the middle of an append
    reopened = LatencyTable.open(a.table.path)
    assert len(reopened.parts) == len(a.table.parts)
    b.predict(small("bsconv_u"))  # appends after the torn line
    lines = a.table.path.read_bytes().splitlines()
    assert all(json.loads(line) for line in lines[-3:] if not line.startswith(b'{"part": "torn'))
    assert set(LatencyTable.open(a.table.path).parts) == set(b.table.parts)


def test_not_a_table_is_one_line(tmp_path):
    bad = tmp_path / "t.jsonl"
    bad.write_text("hello\n")
    with pytest.raises(DsearchError, match="not a dsearch latency table"):
        LatencyTable.open(bad)


# --- the predictor against direct measurements ------------------------------------------------------------------

def _direct_torch_ms(spec, repeats: int = 30) -> float:
    net = build_model(spec, standalone=True).eval()
    x = torch.randn(1, spec.in_channels, spec.resolution, spec.resolution)
    torch.set_num_threads(1)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 5):
            t = time.perf_counter()
            net(x)
            if i >= 5:
                times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def test_torch_cpu_prediction_and_measurement_agree_with_a_direct_timing(tmp_path):
    model = LatencyModel.for_target(parse_target("torch-cpu"), tmp_path, protocol=FAST, calibration=1)
    spec = small()
    prediction = model.predict(spec)  # the first network calibrates the table: it is measured whole too
    measured = model.measure(spec)
    assert len(model.table.networks) == 1 and model.measure(spec) == measured  # cached, not measured again
    direct = _direct_torch_ms(spec)
    assert 1 / 3 <= measured.median_ms / direct <= 3
    assert prediction.ms == pytest.approx(measured.median_ms, rel=1e-3)  # fitted on itself
    other = small("bsconv_u")
    fair = model.predict(other, leave_out=True)
    assert 1 / 3 <= fair.ms / _direct_torch_ms(other) <= 3


@pytest.mark.slow
def test_ort_cpu_times_the_exported_program(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    from dsearch.model.programs import export_sizes, write_onnx

    spec = small("scc")
    model = LatencyModel.for_target(parse_target("ort-cpu"), tmp_path, protocol=FAST, calibration=1)
    prediction = model.predict(spec)
    measured = model.measure(spec)
    path = tmp_path / "model.onnx"  # the program `dsearch export --onnx` writes, timed by hand
    net = build_model(spec, standalone=True).eval()
    write_onnx(net, torch.zeros(1, 1, 32, 32), path, export_sizes(spec, 32))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"input": np.random.default_rng(0).standard_normal((1, 1, 32, 32), dtype=np.float32)}
    times = []
    for i in range(35):
        t = time.perf_counter()
        session.run(None, feed)
        if i >= 5:
            times.append(time.perf_counter() - t)
    direct = 1000 * statistics.median(times)
    assert 1 / 3 <= measured.median_ms / direct <= 3
    assert 1 / 3 <= prediction.parts_ms / measured.median_ms <= 3


# --- the command -----------------------------------------------------------------------------------------------

def test_latency_command(capfd, tmp_path, monkeypatch):
    monkeypatch.setenv("DSEARCH_LATENCY_DIR", str(tmp_path / "tables"))
    arch = tmp_path / "a.json"
    arch.write_text(small().to_json())
    code, out, err = dsearch(capfd, "latency", arch, "--target", "torch-cpu", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["target"] == "torch-cpu:threads=1,batch=1" and report["resolution"] == 32
    assert report["measured"]["median_ms"] > 0 and report["predicted_ms"] > 0
    assert Path(report["table"]).parent == tmp_path / "tables"
    code, out, err = dsearch(capfd, "latency", arch, "--target", "torch-cpu")
    assert code == 0 and "predicted" in out and "measured" in out and "prediction error" in out
    one_line_error(*dsearch(capfd, "latency", arch, "--target", "tpu")[::2], "--target: unknown runtime 'tpu'")
    one_line_error(*dsearch(capfd, "latency", "--target", "torch-cpu")[::2], "give an architecture")
