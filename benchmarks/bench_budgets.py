"""Every budget reachable: short searches at budgets across each space's range, trained count and time not training.

    python benchmarks/bench_budgets.py [--n-trials 3] [--epochs 1] [--train-subset 512]

For each (space, budget) it runs a fresh `dsearch run` equivalent (TPE, the embedded data) in a
temporary folder and prints how many architectures were trained within the budget, how many
samples were rejected (and repaired) or repeated, the wall time, and the share of that time spent
in trials that trained nothing (rejected, invalid or duplicate samples, their repairs included).
"""
from __future__ import annotations

import argparse
import tempfile
import time

from dsearch.cost import spec_cost
from dsearch.search.config import SearchConfig
from dsearch.search.driver import run_search
from dsearch.search.record import STATUS, trial_arch
from dsearch.training.proxy import ProxyConfig

CASES = [("mobile", b) for b in (60, 80, 150, 300, 600)] + [("residual", b) for b in (5, 40, 300)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-subset", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    proxy = ProxyConfig(epochs=args.epochs, train_subset=args.train_subset)
    print(f"{'space':<9} {'MFLOPs budget':>13} {'trained':>7} {'max MFLOPs':>10} {'rejected':>8} {'duplicate':>9} "
          f"{'wall s':>7} {'not training':>12}")
    for space, budget in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = SearchConfig(space=space, budget_mflops=budget, seed=args.seed, proxy=proxy)
            start = time.perf_counter()
            summary = run_search(cfg, "b", f"sqlite:///{tmp}/b.db", n_trials=args.n_trials, log=lambda _m: None)
            wall = time.perf_counter() - start
            trained = [t for t in summary.study.get_trials() if t.user_attrs.get(STATUS) == "complete"]
            worst = max(spec_cost(trial_arch(t.user_attrs)).mflops for t in trained)
            c = summary.counts
            print(f"{space:<9} {budget:>13g} {summary.trained:>7} {worst:>10.1f} {c['rejected']:>8} "
                  f"{c['duplicate']:>9} {wall:>7.1f} {summary.untrained_s / wall:>11.1%}", flush=True)


if __name__ == "__main__":
    main()
