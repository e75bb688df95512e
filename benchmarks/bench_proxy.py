#!/usr/bin/env python
"""Which proxy ranks architectures like full training does: rank agreement of proxy settings, same architectures.

    python benchmarks/bench_proxy.py --study default      # the architectures `dsearch audit default` retrained
    python benchmarks/bench_proxy.py                      # 10 architectures sampled from the mobile space
    python benchmarks/bench_proxy.py --archs 4 --full-epochs 2 --proxies 28:1 56:1   # a quick look
    python benchmarks/bench_proxy.py --report-only        # print the table from the results file

Architectures and ground truth, either
  --study NAME: the trials an audit of that study retrained (`dsearch audit`), with the full-schedule
                test accuracy it recorded: no full training is repeated; or
  sampled:      architectures of the default space (`mobile`, deployment 224x224) drawn by Optuna's
                RandomSampler at a fixed seed within the budget (300 MFLOPs at 224x224), so they spread
                over the space rather than over what one search liked, each trained here with
                `dsearch train`'s full schedule (FullTrainConfig's defaults at the data's own 28x28).
The ground truth is the full schedule's test accuracy. Each proxy setting
`RES:EPOCHS[:SUBSET]` trains the same architecture as the search does (train_proxy, the search's
ProxyConfig defaults otherwise, seed 0) and scores it by validation accuracy. For each setting:
Kendall tau-b and Spearman rho between its scores and the full test accuracies, with 95%
bootstrap intervals, next to the same agreement for the trivial predictors MFLOPs and params,
and the mean wall time per architecture.

Every finished training is written to the results file at once (JSON), so an interrupted run
resumes where it stopped; the file records how each number was made.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import _cpu_name, sampled_candidates  # noqa: E402

import dsearch  # noqa: E402
from dsearch.cost import spec_cost  # noqa: E402
from dsearch.data import load_dataset  # noqa: E402
from dsearch.model.archspec import ArchSpec  # noqa: E402
from dsearch.training.full import FullTrainConfig, train_full  # noqa: E402
from dsearch.training.proxy import DeviceData, ProxyConfig, select_device, train_proxy  # noqa: E402

Arch = tuple[str, ArchSpec, dict[str, Any] | None]  # (results key, architecture, its full training if known)

DEFAULT_PROXIES = ("28:2", "28:1", "28:2:4500", "56:1")


def parse_proxy(text: str) -> tuple[int, int, int | None]:
    parts = [int(p) for p in text.split(":")]
    if len(parts) not in (2, 3) or min(parts) < 1:
        raise SystemExit(f"proxy setting {text!r}: write RES:EPOCHS or RES:EPOCHS:SUBSET, e.g. 28:2 or 56:1:4500")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def load_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {"archs": {}}


def save_results(path: Path, results: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(path)


def full_entry(spec: ArchSpec, cfg: FullTrainConfig) -> dict[str, Any]:
    start = time.perf_counter()
    result, facts = train_full(spec, cfg, log=lambda _m: None)
    return {"test_acc": result.test_acc, "val_acc": result.val_acc, "epochs": result.epochs,
            "wall_s": round(time.perf_counter() - start, 1), "schedule": json.loads(json.dumps(asdict(cfg.proxy))),
            "config": facts["config"]}


def proxy_entry(spec: ArchSpec, data, device: torch.device, setting: str) -> dict[str, Any]:
    res, epochs, subset = parse_proxy(setting)
    start = time.perf_counter()
    device_data = DeviceData(data, device, subset, res)
    result = train_proxy(spec, device_data, ProxyConfig(epochs=epochs, train_subset=subset))
    return {"val_acc": result.val_acc, "wall_s": round(time.perf_counter() - start, 1),
            "images_per_s": round(result.images_per_s)}


def audited_archs(study_name: str, storage: str | None) -> list[Arch]:
    """The architectures an audit of the study retrained, each with the full-schedule figures it recorded."""
    from dsearch.analysis.audit import study_audit
    from dsearch.analysis.pareto import arch_of
    from dsearch.search.storage import open_study

    study, _ = open_study(study_name, storage)
    audit = study_audit(study)
    if audit is None:
        raise SystemExit(f"study {study_name!r} has not been audited: run `dsearch audit {study_name}` first")
    out: list[Arch] = []
    for number, row in sorted(audit["trials"].items(), key=lambda kv: int(kv[0])):
        full = {"test_acc": row["full_test_acc"], "val_acc": row["full_val_acc"], "wall_s": float("nan"),
                "schedule": audit["schedule"], "from": f"study {study_name} trial {number}"}
        out.append((f"{study_name}:{number}", arch_of(study, int(number)), full))
    return out


def study_proxy(study_name: str, storage: str | None) -> tuple[str, dict[str, dict[str, Any]]]:
    """The study's own proxy setting as RES:EPOCHS[:SUBSET], and the val acc the search recorded per audited trial."""
    from dsearch.analysis.audit import study_audit
    from dsearch.search.record import CONFIG_ATTR, IDENTITY_ATTR, stored_settings
    from dsearch.search.storage import open_study

    study, _ = open_study(study_name, storage)
    proxy = stored_settings(study, CONFIG_ATTR)["proxy"]
    identity = stored_settings(study, IDENTITY_ATTR)
    setting = f"{identity['train_resolution']}:{proxy['epochs']}" + (
        f":{proxy['train_subset']}" if proxy.get("train_subset") else "")
    audit = study_audit(study) or {"trials": {}}
    return setting, {f"{study_name}:{n}": {"val_acc": t["proxy_val_acc"], "wall_s": float("nan"),
                                            "from": "recorded by the search"} for n, t in audit["trials"].items()}


def report(results: dict[str, Any], proxies: list[str]) -> None:
    from dsearch.analysis.rank import agreement

    archs = [a for a in results["archs"].values() if "full" in a]
    print(f"\n{len(archs)} architectures with full training ({results.get('made', {})})")
    print(f"{'#':>2} {'MFLOPs@224':>10} {'Mparams':>7} {'full test':>9} " + " ".join(f"{p:>10}" for p in proxies))
    for i, a in enumerate(archs):
        cells = " ".join(f"{a['proxies'][p]['val_acc']:>10.4f}" if p in a.get("proxies", {}) else f"{'-':>10}"
                         for p in proxies)
        print(f"{i:>2} {a['mflops']:>10.1f} {a['mparams']:>7.3f} {a['full']['test_acc']:>9.4f} {cells}")
    truth = [a["full"]["test_acc"] for a in archs]
    print("\nrank agreement with full-schedule test accuracy (95% bootstrap intervals):")
    print(f"{'predictor':<16} {'n':>3} {'Kendall tau':>22} {'Spearman':>22} {'s/arch':>7}  (search: as the search "
          "recorded it, not retrained)")
    rows: list[tuple[str, list[float], list[float], str]] = [
        ("MFLOPs@224", [a["mflops"] for a in archs], truth, ""),
        ("params", [a["mparams"] for a in archs], truth, "")]
    for p in proxies:
        have = [a for a in archs if p in a.get("proxies", {})]
        wall = statistics.mean(a["proxies"][p]["wall_s"] for a in have) if have else float("nan")
        rows.append((f"proxy {p}", [a["proxies"][p]["val_acc"] for a in have], [a["full"]["test_acc"] for a in have],
                     f"{wall:.0f}" if math.isfinite(wall) else "search"))
    for name, scores, target, wall in rows:
        if len(scores) < 3:
            print(f"{name:<16} {len(scores):>3}  (fewer than 3 architectures)")
            continue
        agree = agreement(scores, target)
        tau, spear = agree["tau"], agree["spearman"]
        print(f"{name:<16} {len(scores):>3} {tau:>7.2f} [{agree['tau_ci'][0]:5.2f}, {agree['tau_ci'][1]:5.2f}] "
              f"{spear:>7.2f} [{agree['spearman_ci'][0]:5.2f}, {agree['spearman_ci'][1]:5.2f}] {wall:>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=None, help="take the architectures an audit of this study retrained")
    parser.add_argument("--storage", default=None, help="the study's storage URL (default: studies/NAME/study.db)")
    parser.add_argument("--archs", type=int, default=10, help="architectures sampled from the mobile space")
    parser.add_argument("--seed", type=int, default=1, help="RandomSampler seed for the architectures")
    parser.add_argument("--budget-mflops", type=float, default=300.0, help="at the space's 224x224")
    parser.add_argument("--full-epochs", type=int, default=None, help="default: dsearch train's")
    parser.add_argument("--proxies", nargs="+", default=list(DEFAULT_PROXIES), help="RES:EPOCHS[:SUBSET] settings")
    parser.add_argument("--results", type=Path, default=Path("bench_proxy.json"), help="resumable results file")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    for p in args.proxies:
        parse_proxy(p)
    results = load_results(args.results)
    if args.report_only:
        report(results, args.proxies)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device("auto")
    data = load_dataset()
    base = FullTrainConfig(device=str(device))
    cfg = replace(base, proxy=replace(base.proxy, epochs=args.full_epochs or base.proxy.epochs))
    results["made"] = {"dsearch": dsearch.__version__, "torch": torch.__version__, "python": platform.python_version(),
                       "device": _cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device),
                       "threads": torch.get_num_threads(), "full": asdict(cfg.proxy), "arch_seed": args.seed,
                       "budget_mflops@224": args.budget_mflops}
    recorded = study_proxy(args.study, args.storage) if args.study else ("", {})
    if args.study and recorded[0] not in args.proxies:
        args.proxies.insert(0, recorded[0])  # the study's own proxy, as the search recorded it: not retrained
    specs: list[Arch] = audited_archs(args.study, args.storage) if args.study else [
        (s.to_json(), s, None)
        for s in sampled_candidates(args.archs, args.seed, args.budget_mflops, data.in_channels, data.num_classes)]
    for i, (key, spec, known) in enumerate(specs):
        entry = results["archs"].setdefault(key, {"summary": spec.summary(), "mflops": spec_cost(spec).mflops,
                                                  "mparams": spec_cost(spec).mparams, "proxies": {}})
        if known is not None:
            entry["full"] = known
            entry["proxies"].setdefault(recorded[0], recorded[1][key])
        elif "full" in entry and entry["full"]["schedule"] != json.loads(json.dumps(asdict(cfg.proxy))):
            del entry["full"]  # trained with another schedule: redo
        if "full" not in entry:
            entry["full"] = full_entry(spec, cfg)
            save_results(args.results, results)
        for p in args.proxies:
            if p not in entry["proxies"]:
                entry["proxies"][p] = proxy_entry(spec, data, device, p)
                save_results(args.results, results)
        full = entry["full"]
        print(f"arch {i + 1}/{len(specs)}: full test {full['test_acc']:.4f} ({full['wall_s']:.0f} s); "
              + ", ".join(f"{p}: {entry['proxies'][p]['val_acc']:.4f} ({entry['proxies'][p]['wall_s']:.0f} s)"
                          for p in args.proxies), flush=True)
    report(results, args.proxies)


if __name__ == "__main__":
    main()
