#!/usr/bin/env python
"""Does a proxy recipe rank architectures reliably? Test-retest reliability and agreement with full training.

    python benchmarks/bench_reliability.py                                  # 10 sampled architectures, 3 seeds
    python benchmarks/bench_reliability.py --recipes default lr=0.04 epochs=4 --full
    python benchmarks/bench_reliability.py --study default --recipes default   # a study's trained architectures
    python benchmarks/bench_reliability.py --report-only

Each recipe is the search's ProxyConfig with some fields changed, written `field=value,field=value`
(`default`: no change), e.g. `lr=0.04,label_smoothing=0.1`, `epochs=4`, `train_subset=4500`,
`train_resolution=40`, `bn_recompute=16`. Every architecture is trained with every recipe and every
seed on the same data split and scored by validation accuracy. A recipe's figures:

- ICC(1): the intraclass correlation of the one-way random-effects model (architectures as groups,
  seeds as repeats): the share of the variance of one trial's score that is due to the architecture,
  with its exact 95% interval from the F distribution (McGraw & Wong 1996). 0: pure noise, 1: seeds agree.
- seed tau: Kendall tau-b between the rankings two seeds give, for every pair of seeds (mean, min, max).
- collapses: single runs more than 5 points below the median of their architecture's other seeds.
- full tau: Kendall tau-b between the recipe's mean score over the seeds and the full schedule's test
  accuracy (`dsearch train`'s defaults, one seed; with --full), and the same for one seed's score.
- s/run: mean wall time of one training.

Every run also gets a second score for free: the same weights evaluated after recomputing the batch-norm
statistics on 16 clean training batches (`+bn16` rows), which separates the recipe's training from how
its batch-norm statistics are estimated.

Every finished training is written to the results file at once (JSON), so an interrupted run resumes
where it stopped; the file records how each number was made (versions, CPU, threads).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).parent))
from bench_proxy import load_results, save_results  # noqa: E402
from bench_train import _cpu_name, sampled_candidates  # noqa: E402

import dsearch  # noqa: E402
from dsearch.cost import spec_cost  # noqa: E402
from dsearch.data import load_dataset  # noqa: E402
from dsearch.model.archspec import ArchSpec  # noqa: E402
from dsearch.model.builder import build_model  # noqa: E402
from dsearch.training.full import FullTrainConfig, train_full  # noqa: E402
from dsearch.training.proxy import (  # noqa: E402
    DeviceData,
    ProxyConfig,
    evaluate,
    memory_format,
    recompute_bn_stats,
    select_device,
    train_proxy,
)

BN_BATCHES = 16
COLLAPSE = 0.05  # a run this far below the median of its architecture's other seeds counts as a collapse
FIELDS = {f.name: f for f in dataclasses.fields(ProxyConfig)}


def parse_recipe(text: str) -> ProxyConfig:
    """`default` or `field=value,...` over ProxyConfig's defaults (the search's proxy)."""
    if text == "default":
        return ProxyConfig()
    changes: dict[str, Any] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name not in FIELDS or name == "seed" or not value:
            raise SystemExit(f"recipe {text!r}: {part!r} is not field=value of ProxyConfig "
                             f"({', '.join(n for n in FIELDS if n != 'seed')})")
        default = getattr(ProxyConfig(), name)
        kind = type(default) if default is not None else (float if name in ("lr", "weight_decay") else int)
        changes[name] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return replace(ProxyConfig(), **changes)


def icc1(scores: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """ICC(1) of an architectures x seeds table, with its F-distribution interval."""
    n, k = scores.shape
    means = scores.mean(axis=1)
    msb = k * ((means - scores.mean()) ** 2).sum() / (n - 1)
    msw = ((scores - means[:, None]) ** 2).sum() / (n * (k - 1))
    if msw == 0:  # every seed agrees: perfectly reliable, unless nothing differs at all
        return (math.nan,) * 3 if msb == 0 else (1.0,) * 3
    f0 = msb / msw
    tail = (1 + level) / 2
    f_low, f_high = f0 / stats.f.ppf(tail, n - 1, n * (k - 1)), f0 * stats.f.ppf(tail, n * (k - 1), n - 1)
    return (f0 - 1) / (f0 + k - 1), (f_low - 1) / (f_low + k - 1), (f_high - 1) / (f_high + k - 1)


def seed_taus(scores: np.ndarray) -> list[float]:
    return [float(stats.kendalltau(scores[:, a], scores[:, b]).statistic)
            for a, b in itertools.combinations(range(scores.shape[1]), 2)]


def collapses(scores: np.ndarray) -> int:
    count = 0
    for row in scores:
        for j, value in enumerate(row):
            others = np.delete(row, j)
            count += int(value < float(np.median(others)) - COLLAPSE)
    return count


def run_entry(spec: ArchSpec, data, device: torch.device, cfg: ProxyConfig) -> dict[str, Any]:
    start = time.perf_counter()
    device_data = DeviceData(data, device, cfg.train_subset, cfg.train_resolution)
    result = train_proxy(spec, device_data, cfg)
    wall = time.perf_counter() - start
    model = build_model(spec).to(device).to(memory_format=memory_format(device))
    assert result.state is not None
    model.load_state_dict(result.state)
    recompute_bn_stats(model, device_data, BN_BATCHES, cfg.batch_size, cfg.seed)
    return {"val_acc": result.val_acc, "val_acc_bn": evaluate(model, device_data, device_data.val_x,
                                                              device_data.val_y),
            "history": result.history, "wall_s": round(wall, 2)}


def full_entry(spec: ArchSpec, cfg: FullTrainConfig) -> dict[str, Any]:
    start = time.perf_counter()
    result, _facts = train_full(spec, cfg, log=lambda _m: None)
    return {"test_acc": result.test_acc, "val_acc": result.val_acc, "epochs": result.epochs,
            "wall_s": round(time.perf_counter() - start, 1), "schedule": json.loads(json.dumps(asdict(cfg.proxy)))}


def study_archs(name: str, storage: str | None) -> list[ArchSpec]:
    from dsearch.analysis.pareto import arch_of
    from dsearch.search.storage import open_study
    from dsearch.search.trials import trained_trials

    study, _ = open_study(name, storage)
    return [arch_of(study, t.number) for t in trained_trials(study)]


def table(results: dict[str, Any], recipes: list[str], seeds: list[int]) -> list[str]:
    archs = list(results["archs"].values())
    truth = [a.get("full", {}).get("test_acc") for a in archs]
    lines = [f"{len(archs)} architectures, seeds {', '.join(map(str, seeds))}; made: {results.get('made', {})}", "",
             f"{'recipe':<34} {'n':>3} {'ICC(1) [95% CI]':>22} {'seed tau mean [min, max]':>25} {'collapses':>9} "
             f"{'full tau (mean)':>15} {'full tau (seed)':>15} {'mean acc':>8} {'s/run':>6}"]
    for recipe in recipes:
        for key, suffix in (("val_acc", ""), ("val_acc_bn", f"+bn{BN_BATCHES}")):
            if suffix and "bn_recompute=" in recipe:
                continue  # its own score already has recomputed statistics
            rows, walls, full = [], [], []
            for a, t in zip(archs, truth, strict=True):
                runs = a.get("runs", {}).get(recipe, {})
                if all(str(s) in runs for s in seeds):
                    rows.append([runs[str(s)][key] for s in seeds])
                    walls += [runs[str(s)]["wall_s"] for s in seeds]
                    full.append(t)
            name = f"{recipe}{suffix}"
            if len(rows) < 3 or len(seeds) < 2:
                lines.append(f"{name:<34} {len(rows):>3}  (fewer than 3 architectures with every seed)")
                continue
            scores = np.array(rows)
            icc, low, high = icc1(scores)
            taus = seed_taus(scores)
            have = [i for i, t in enumerate(full) if t is not None]
            if len(have) >= 3:
                tau_mean = stats.kendalltau(scores[have].mean(axis=1), [full[i] for i in have]).statistic
                tau_seed = statistics.mean(stats.kendalltau(scores[have, j], [full[i] for i in have]).statistic
                                           for j in range(len(seeds)))
                full_cells = f"{tau_mean:>15.2f} {tau_seed:>15.2f}"
            else:
                full_cells = f"{'-':>15} {'-':>15}"
            lines.append(f"{name:<34} {len(rows):>3} {icc:>6.2f} [{low:5.2f}, {high:5.2f}]   "
                         f"{statistics.mean(taus):>6.2f} [{min(taus):5.2f}, {max(taus):5.2f}]   "
                         f"{collapses(scores):>9} {full_cells} {scores.mean():>8.3f} "
                         f"{statistics.mean(walls):>6.1f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=None, help="use this study's trained architectures")
    parser.add_argument("--storage", default=None, help="the study's storage URL (default: studies/NAME/study.db)")
    parser.add_argument("--archs", type=int, default=10, help="architectures sampled from the mobile space")
    parser.add_argument("--arch-seed", type=int, default=1, help="RandomSampler seed for the architectures")
    parser.add_argument("--budget-mflops", type=float, default=300.0, help="at the space's 224x224")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per architecture and recipe")
    parser.add_argument("--recipes", nargs="+", default=["default"], help="field=value,... over ProxyConfig")
    parser.add_argument("--full", action="store_true", help="also train each architecture with the full schedule")
    parser.add_argument("--results", type=Path, default=Path("bench_reliability.json"), help="resumable results")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    recipes = {r: parse_recipe(r) for r in args.recipes}
    seeds = list(range(args.seeds))
    results = load_results(args.results)
    if args.report_only:
        print("\n".join(table(results, args.recipes, seeds)))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device("auto")
    data = load_dataset()
    results["made"] = {"dsearch": dsearch.__version__, "torch": torch.__version__, "python": platform.python_version(),
                       "device": _cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device),
                       "threads": torch.get_num_threads(), "arch_seed": args.arch_seed,
                       "archs_from": f"study {args.study}" if args.study else "RandomSampler over mobile",
                       "budget_mflops@224": args.budget_mflops, "date": time.strftime("%Y-%m-%d")}
    specs = study_archs(args.study, args.storage) if args.study else sampled_candidates(
        args.archs, args.arch_seed, args.budget_mflops, data.in_channels, data.num_classes)
    entries = []
    for spec in specs:
        cost = spec_cost(spec)
        entries.append(results["archs"].setdefault(spec.to_json(), {"summary": spec.summary(), "mflops": cost.mflops,
                                                                    "mparams": cost.mparams, "runs": {}}))
    # Seed-major, so that an interrupted run already has every recipe at the first seeds.
    for seed in seeds:
        for name, cfg in recipes.items():
            for i, (spec, entry) in enumerate(zip(specs, entries, strict=True)):
                runs = entry["runs"].setdefault(name, {})
                if str(seed) in runs:
                    continue
                runs[str(seed)] = run_entry(spec, data, device, replace(cfg, seed=seed))
                save_results(args.results, results)
                r = runs[str(seed)]
                print(f"seed {seed} {name} arch {i}: val {r['val_acc']:.4f} (+bn {r['val_acc_bn']:.4f}) "
                      f"{r['wall_s']:.0f} s", flush=True)
    if args.full:
        cfg = FullTrainConfig(device=str(device))
        for i, (spec, entry) in enumerate(zip(specs, entries, strict=True)):
            if "full" not in entry:
                entry["full"] = full_entry(spec, cfg)
                save_results(args.results, results)
                print(f"full arch {i}: test {entry['full']['test_acc']:.4f} ({entry['full']['wall_s']:.0f} s)",
                      flush=True)
    print("\n".join(table(results, args.recipes, seeds)))
    if not all(math.isfinite(e["mflops"]) for e in entries):
        raise SystemExit("an architecture has no cost")


if __name__ == "__main__":
    main()
