"""The latency predictor against measured latency, and which cost ranks measured latency best.

    python benchmarks/bench_latency.py [--targets ort-cpu,torch-cpu] [--samples 30] [--budget-mflops 300]
                                       [--space mobile] [--out benchmarks/latency.json]


For each target it samples `--samples` architectures of the space within the MFLOPs budget (as the
default run: 1 input channel, 10 classes, counted and timed at 224x224), measures each whole (the
protocol of dsearch.latency) and predicts it from a fresh table with the overhead factor fitted on the
others (leave-one-out: no network is predicted with its own measurement). It prints, per target:

- the predictor's error distribution (median |error|, p90 |error|, the share within +-10%);
- Kendall tau of MFLOPs, params and the predictor with measured latency, with 95% bootstrap intervals
  (scipy.stats.bootstrap, paired over architectures);
- per conv kind at equal MFLOPs: MobileNetV2 with each kind at its widest width within the budget
  (the baselines' rule), measured whole, as ms per MFLOP.

And across targets, Kendall tau between their measured latencies. Results go to `--out` (JSON), which
the script resumes from. Run it on an idle machine: a noisy measurement is flagged in the output.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import scipy.stats
import torch

from dsearch.analysis.baselines import KINDS, widest_within
from dsearch.cost import spec_cost
from dsearch.latency import LatencyModel, parse_target
from dsearch.latency.protocol import machine
from dsearch.search.budget import Budget
from dsearch.search.latency import sample_within


def tau_interval(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """Kendall tau of x and y with a paired 95% bootstrap interval."""
    tau = scipy.stats.kendalltau(x, y).statistic
    result = scipy.stats.bootstrap((np.array(x), np.array(y)), lambda a, b: scipy.stats.kendalltau(a, b).statistic,
                                   paired=True, vectorized=False, n_resamples=2000, method="percentile",
                                   random_state=0)
    return float(tau), float(result.confidence_interval.low), float(result.confidence_interval.high)


def run_target(name: str, specs: list, baselines: list, tables: Path, results: dict) -> dict:
    done = results.setdefault(name, {"archs": {}, "kinds": {}})
    model = LatencyModel.for_target(parse_target(name), tables / name.replace(":", "_"), calibration=0)
    for i, spec in enumerate(specs):
        key = model.network_key(spec)
        if key not in done["archs"]:
            model.predict(spec)  # its parts into the table
            m = model.measure(spec)
            cost = spec_cost(spec)
            done["archs"][key] = {"mflops": cost.mflops, "mparams": cost.mparams, "measured_ms": m.median_ms,
                                  "p90_ms": m.p90_ms, "noisy": m.noisy, "summary": spec.summary()}
            print(f"{name} {i + 1}/{len(specs)}: {m.describe()}", flush=True)
    for spec in specs:  # leave-one-out: the factor fitted on the other networks only
        done["archs"][model.network_key(spec)]["predicted_ms"] = model.predict(spec, leave_out=True).ms
    for kind, spec in baselines:
        if kind not in done["kinds"]:
            m = model.measure(spec)
            done["kinds"][kind] = {"mflops": spec_cost(spec).mflops, "measured_ms": m.median_ms, "noisy": m.noisy}
    done["table"] = model.table.describe()
    return done


def report(name: str, done: dict) -> None:
    rows = list(done["archs"].values())
    measured = [r["measured_ms"] for r in rows]
    errors = np.array([(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in rows])
    print(f"\n## {name}: {len(rows)} architectures ({done['table']}); {sum(r['noisy'] for r in rows)} noisy")
    per_mflop = [r["measured_ms"] / r["mflops"] for r in rows]
    within = np.abs(errors) <= 0.10
    print(f"measured: {min(measured):.3f}-{max(measured):.3f} ms; ms per MFLOP {min(per_mflop):.4f}-"
          f"{max(per_mflop):.4f}")
    print(f"predictor error: median |e| {np.median(np.abs(errors)):.1%}, p90 |e| "
          f"{np.percentile(np.abs(errors), 90):.1%}, mean e {errors.mean():+.1%}, within +-10%: {within.mean():.0%} "
          f"({int(within.sum())}/{len(rows)})")
    print("| cost | Kendall tau with measured latency | 95% interval |")
    print("|---|---|---|")
    for label, values in (("MFLOPs@224x224", [r["mflops"] for r in rows]),
                          ("params (M)", [r["mparams"] for r in rows]),
                          ("predicted latency", [r["predicted_ms"] for r in rows])):
        tau, lo, hi = tau_interval(values, measured)
        print(f"| {label} | {tau:.2f} | [{lo:.2f}, {hi:.2f}] |")
    print("| conv kind (MobileNetV2 at the widest width within the budget) | MFLOPs@224x224 | ms | ms per MFLOP |")
    print("|---|---|---|---|")
    for kind, row in done["kinds"].items():
        flag = " (noisy)" if row["noisy"] else ""
        print(f"| {kind} | {row['mflops']:.1f} | {row['measured_ms']:.3f}{flag} | "
              f"{row['measured_ms'] / row['mflops']:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="ort-cpu,torch-cpu")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--budget-mflops", type=float, default=300)
    parser.add_argument("--space", default="mobile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/latency.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results["machine"] = machine() | {"torch": torch.__version__, "platform": platform.platform()}
    specs = sample_within(args.space, args.samples, Budget(args.budget_mflops), 1, 10, args.seed)
    budget = Budget(args.budget_mflops, resolution=224)
    baselines = [(kind, b.spec) for kind in KINDS if (b := widest_within(budget, kind, 1, 10, 224)) is not None]
    tables = out.with_name(out.stem + "-tables")  # kept beside the results, so that a rerun resumes
    for name in args.targets.split(","):
        results[name] = run_target(name, specs, baselines, tables, results)
        out.write_text(json.dumps(results, indent=1))
    print(f"machine: {results['machine']}")
    for name in args.targets.split(","):
        report(name, results[name])
    names = args.targets.split(",")
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            keys = sorted(set(results[a]["archs"]) & set(results[b]["archs"]))
            tau, lo, hi = tau_interval([results[a]["archs"][k]["measured_ms"] for k in keys],
                                       [results[b]["archs"][k]["measured_ms"] for k in keys])
            print(f"\n{a} vs {b}, measured latency over {len(keys)} architectures: Kendall tau {tau:.2f} "
                  f"[{lo:.2f}, {hi:.2f}]")


if __name__ == "__main__":
    main()
