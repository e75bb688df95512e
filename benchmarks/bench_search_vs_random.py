#!/usr/bin/env python
"""Does the search beat random sampling? Three ways to spend the same compute, each at several search seeds.

    python benchmarks/bench_search_vs_random.py                       # search seeds 0 1 2, the default run's settings
    python benchmarks/bench_search_vs_random.py --seeds 0 1 2 3 4 --n-trials 20
    python benchmarks/bench_search_vs_random.py --report-only

For every search seed:
  promotion   `dsearch run`'s default: TPE over the space (--n-trials architectures by the proxy), then the
              finals (rungs of more proxy seeds and the full schedule at several seeds) and the verdict's pick;
  random      the same, with Optuna's RandomSampler in place of TPE (random sampling within the budget, the
              same finals);
  single      the search as it is without finals: TPE trains proxies until it has used the wall time the
              promotion run took for this seed (search and finals), then picks the trial with the best proxy
              validation accuracy.
Each method's pick is then judged by the same yardstick: the full schedule at the finals' seeds, its test
accuracy averaged over them (for promotion and random the verdict's own trainings; for single its pick is
trained so afterwards, not counted in its compute). Also recorded: the hypervolume of each study's proxy front
(validation accuracy x MFLOPs at the deployment resolution, reference point accuracy 0 and the budget), the
number of architectures trained and the wall time. The report gives each method's mean over search seeds with
a 95% t interval, and the paired differences (same search seed) with theirs (scipy.stats).

Each finished (method, seed) is written to the results file at once, so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).parent))
from bench_proxy import load_results, save_results  # noqa: E402
from bench_train import _cpu_name  # noqa: E402

import dsearch  # noqa: E402
from dsearch.analysis.finals import FinalsConfig, run_finals  # noqa: E402
from dsearch.analysis.pareto import hypervolume, pareto_front, trials_frame  # noqa: E402
from dsearch.search.config import SearchConfig  # noqa: E402
from dsearch.search.driver import run_search  # noqa: E402

METHODS = ("promotion", "random", "single")
QUIET = lambda _msg: None  # noqa: E731


def front_hypervolume(study, budget: float) -> float:
    return hypervolume(pareto_front(trials_frame(study)), budget)


def pick_test(verdict: dict[str, Any]) -> tuple[int, list[float], float]:
    row = next(r for r in verdict["rows"] if r["role"] == "pick")
    return int(row["trial"]), list(row["test"]), float(row["mflops"])


def run_method(method: str, seed: int, args: argparse.Namespace, folder: Path,
               wall_budget: float | None) -> dict[str, Any]:
    cfg = SearchConfig(budget_mflops=args.budget_mflops, seed=seed, device=args.device,
                       sampler="random" if method == "random" else "tpe")
    # No baselines in the finals: they never change the pick, and the comparison is between the methods' picks.
    finals = FinalsConfig(seeds=args.final_seeds, epochs=args.final_epochs, device=args.device, baselines=False)
    url = f"sqlite:///{folder}/{method}-{seed}.db"
    start = time.perf_counter()
    if method == "single":
        assert wall_budget is not None
        summary = run_search(cfg, "b", url, n_trials=10_000, timeout=wall_budget, log=QUIET)
        wall = time.perf_counter() - start
        # The yardstick, not counted in the method's compute: its best proxy trial, full schedule at the seeds.
        n = len(trials_frame(summary.study).query("status == 'complete'"))
        verdict = run_finals(summary.study, url, replace(finals, eta=max(2, n), proxy_seeds=1, baselines=False),
                             log=QUIET)
    else:
        summary = run_search(cfg, "b", url, n_trials=args.n_trials, log=QUIET)
        verdict = run_finals(summary.study, url, finals, log=QUIET)
        wall = time.perf_counter() - start
    trial, test, mflops = pick_test(verdict)
    frame = trials_frame(summary.study)
    return {"method": method, "seed": seed, "pick": trial, "pick_test": test, "pick_test_mean": float(np.mean(test)),
            "pick_mflops": mflops, "trained": int((frame["status"] == "complete").sum()), "wall_s": round(wall, 1),
            "hypervolume": front_hypervolume(summary.study, args.budget_mflops),
            "verdict": verdict["sentences"]}


def interval(values: list[float]) -> str:
    x = np.asarray(values, dtype=float)
    if len(x) < 2 or x.std() == 0:
        return f"{x.mean():.4f}"
    low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    return f"{x.mean():.4f} [{low:.4f}, {high:.4f}]"


def report(results: dict[str, Any], seeds: list[int]) -> list[str]:
    runs = results["runs"]
    lines = [f"made: {results.get('made', {})}", "",
             f"{'method':<10} {'seed':>4} {'pick':>5} {'pick test acc (mean of seeds)':>30} {'MFLOPs@224':>10} "
             f"{'trained':>7} {'wall s':>7} {'hypervolume':>11}"]
    for method in METHODS:
        for seed in seeds:
            r = runs.get(f"{method}-{seed}")
            if r:
                lines.append(f"{method:<10} {seed:>4} {r['pick']:>5} {r['pick_test_mean']:>30.4f} "
                             f"{r['pick_mflops']:>10.1f} {r['trained']:>7} {r['wall_s']:>7.0f} "
                             f"{r['hypervolume']:>11.1f}")
    lines += ["", "over search seeds (mean [95% t interval]):",
              f"{'method':<10} {'n':>2} {'pick test acc':>26} {'hypervolume':>26} {'wall s':>8}"]
    done = {m: [runs[f"{m}-{s}"] for s in seeds if f"{m}-{s}" in runs] for m in METHODS}
    for method, rows in done.items():
        if rows:
            lines.append(f"{method:<10} {len(rows):>2} {interval([r['pick_test_mean'] for r in rows]):>26} "
                         f"{interval([r['hypervolume'] for r in rows]):>26} "
                         f"{np.mean([r['wall_s'] for r in rows]):>8.0f}")
    lines += ["", "paired differences of pick test accuracy (same search seed; points, 95% t interval):"]
    for other in ("random", "single"):
        pairs = [(runs[f"promotion-{s}"]["pick_test_mean"], runs[f"{other}-{s}"]["pick_test_mean"]) for s in seeds
                 if f"promotion-{s}" in runs and f"{other}-{s}" in runs]
        if len(pairs) >= 2:
            d = np.array([a - b for a, b in pairs]) * 100
            ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95) if d.std() > 0 else None
            span = f"[{ci.low:+.2f}, {ci.high:+.2f}]" if ci is not None else "(no spread)"
            lines.append(f"promotion - {other:<7} {d.mean():+.2f} points {span} over {len(pairs)} seeds")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="search seeds")
    parser.add_argument("--budget-mflops", type=float, default=300.0, help="at the space's 224x224")
    parser.add_argument("--n-trials", type=int, default=10, help="architectures of the promotion and random runs")
    parser.add_argument("--final-seeds", type=int, default=FinalsConfig().seeds)
    parser.add_argument("--final-epochs", type=int, default=None, help="default: dsearch train's")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--results", type=Path, default=Path("bench_search_vs_random.json"))
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    results = load_results(args.results)
    results.setdefault("runs", {})
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.report_only:
        results["made"] = {"dsearch": dsearch.__version__, "torch": torch.__version__,
                           "python": platform.python_version(), "cpu": _cpu_name(), "threads": torch.get_num_threads(),
                           "budget_mflops@224": args.budget_mflops, "n_trials": args.n_trials,
                           "finals": asdict(FinalsConfig(seeds=args.final_seeds, epochs=args.final_epochs,
                                                         baselines=False)),
                           "date": time.strftime("%Y-%m-%d")}
        with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
            for seed in args.seeds:
                for method in METHODS:  # promotion first: single's wall time is promotion's
                    key = f"{method}-{seed}"
                    if key in results["runs"]:
                        continue
                    budget = results["runs"][f"promotion-{seed}"]["wall_s"] if method == "single" else None
                    results["runs"][key] = run_method(method, seed, args, Path(tmp), budget)
                    save_results(args.results, results)
                    r = results["runs"][key]
                    print(f"{key}: pick trial {r['pick']}, test {r['pick_test_mean']:.4f}, {r['trained']} trained, "
                          f"{r['wall_s']:.0f} s", flush=True)
    print("\n".join(report(results, args.seeds)))


if __name__ == "__main__":
    main()
