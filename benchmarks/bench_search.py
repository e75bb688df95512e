"""Search efficiency: samplers and multi-objective early stopping at equal numbers of trained architectures.

    python benchmarks/bench_search.py [--space mobile] [--budget 300] [--n 8] [--seeds 0 1 2]
                                      [--epochs 2] [--train-subset 1024] [--configs tpe nsga2 random tpe+es random@2n]

Each configuration runs one fresh search per seed on the embedded data with a short proxy and
reports the hypervolume of its Pareto front (validation accuracy x MFLOPs at the space's
resolution, reference point: accuracy 0 and the budget), mean and spread over the seeds, with the
wall time. `random@2n` is random search given twice the trained architectures: the target a better
sampler should reach with n. `+es` turns on early stopping (`dsearch run --early-stop`).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from dsearch.analysis.pareto import hypervolume, pareto_front, trials_frame
from dsearch.search.config import SearchConfig
from dsearch.search.driver import run_search
from dsearch.training.proxy import ProxyConfig


def run_one(config: str, seed: int, args: argparse.Namespace) -> tuple[float, float, int]:
    """(hypervolume, wall seconds, early-stopped trials) of one search."""
    sampler, _, extra = config.partition("+")
    sampler, _, factor = sampler.partition("@")
    n = args.n * (2 if factor == "2n" else 1)
    cfg = SearchConfig(space=args.space, budget_mflops=args.budget, sampler=sampler, seed=seed,
                       early_stop=extra == "es",
                       proxy=ProxyConfig(epochs=args.epochs, train_subset=args.train_subset, seed=seed))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = run_search(cfg, "bench", f"sqlite:///{tmp}/bench.db", n_trials=n, log=lambda _m: None)
        wall = time.perf_counter() - start
        frame = trials_frame(summary.study)
        stopped = int((frame["status"] == "pruned").sum())
        return hypervolume(pareto_front(frame), args.budget), wall, stopped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="mobile")
    parser.add_argument("--budget", type=float, default=300.0, help="MFLOPs budget at the space's resolution")
    parser.add_argument("--n", type=int, default=8, help="architectures trained per search")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=1024)
    parser.add_argument("--configs", nargs="+", default=["tpe", "nsga2", "random", "tpe+es", "random@2n"])
    args = parser.parse_args()
    print(f"space {args.space}, budget {args.budget:g} MFLOPs, {args.n} trained per search, proxy {args.epochs} "
          f"epochs on {args.train_subset} images, seeds {args.seeds}")
    print("hypervolume: accuracy x MFLOPs dominated by the front, reference (accuracy 0, budget)")
    print(f"{'config':<12} {'hypervolume mean':>16} {'sd':>6} {'min':>7} {'max':>7} {'wall s mean':>11} "
          f"{'early-stopped':>13}")
    for config in args.configs:
        runs = [run_one(config, seed, args) for seed in args.seeds]
        hv = [r[0] for r in runs]
        print(f"{config:<12} {statistics.mean(hv):>16.2f} {statistics.pstdev(hv):>6.2f} {min(hv):>7.2f} "
              f"{max(hv):>7.2f} {statistics.mean(r[1] for r in runs):>11.1f} {sum(r[2] for r in runs):>13}",
              flush=True)


if __name__ == "__main__":
    main()
