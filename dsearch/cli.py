"""The `dsearch` command line: thin commands over the library API."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from .archspec import ArchSpec
from .errors import DsearchError
from .presets import PRESETS, preset, with_conv

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


def load_arch(arch: str, *, width: float | None = None, num_classes: int | None = None,
              in_channels: int | None = None, conv: str | None = None) -> ArchSpec:
    """A preset name or the path of an ArchSpec JSON file, with optional overrides."""
    if arch in PRESETS:
        kwargs = {k: v for k, v in (("width", width), ("num_classes", num_classes), ("in_channels", in_channels))
                  if v is not None}
        spec = preset(arch, **kwargs)
    else:
        path = Path(arch)
        if not path.is_file():
            raise DsearchError(f"{arch!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor an ArchSpec JSON file")
        if width is not None:
            raise DsearchError("--width applies to presets only; edit the widths in the JSON file instead")
        try:
            spec = ArchSpec.from_json(path.read_text())
        except DsearchError as err:
            raise DsearchError(f"{path}: {err}") from None
        changes = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels)) if v is not None}
        if changes:
            spec = spec.replace(**changes)
    return with_conv(spec, conv) if conv else spec


@command
def cmd_cost(args: argparse.Namespace) -> int:
    from .builder import build_model
    from .cost import cost_table, count_cost

    spec = load_arch(args.arch, width=args.width, num_classes=args.num_classes, in_channels=args.in_channels,
                     conv=args.conv)
    size = args.resolution or spec.resolution
    if size < 8:
        raise DsearchError(f"--resolution {size} is too small; use at least 8 pixels")
    model = build_model(spec)
    shape = (spec.in_channels, size, size)
    cost = count_cost(model, shape)
    if args.json:
        print(json.dumps({
            "name": spec.name, "resolution": size, "in_channels": spec.in_channels, "num_classes": spec.num_classes,
            "macs": cost.macs, "mflops": cost.mflops, "params": cost.params, "mparams": cost.mparams,
        }))
        return 0
    print(f"{spec.name or args.arch}: {cost.describe()} "
          f"({spec.in_channels} input channels, {spec.num_classes} classes)")
    print("MFLOPs = millions of multiply-accumulates of one forward pass at batch 1, counted by fvcore.")
    print(spec.summary())
    print()
    print(cost_table(model, shape, max_depth=args.depth))
    return 0


class _StepBar:
    """A per-trial progress bar over training steps, made on the first step and closed on the last."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, step: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None or step == 1:
            self.bar = tqdm(total=total, desc="  training", unit="step", leave=False)
        self.bar.update(1)
        if step == total:
            self.bar.close()
            self.bar = None


@command
def cmd_run(args: argparse.Namespace) -> int:
    from .study import SearchConfig, run_search
    from .train import ProxyConfig

    proxy = ProxyConfig(epochs=args.epochs, batch_size=args.batch_size, train_subset=args.train_subset,
                        train_resolution=args.train_resolution, optimizer=args.optimizer, lr=args.lr,
                        seed=args.seed)
    cfg = SearchConfig(space=args.space, dataset=args.dataset, data_dir=args.data_dir,
                       budget_mflops=args.budget_mflops, budget_mparams=args.budget_mparams,
                       resolution=args.resolution, objective=args.objective, sampler=args.sampler,
                       pruner=args.pruner, seed=args.seed, device=args.device, proxy=proxy)
    if args.quiet:
        log, bars, steps = (lambda _msg: None), None, None
    else:
        from tqdm import tqdm

        log = tqdm.write
        bars = lambda n: tqdm(total=n, desc="search", unit="trial")  # noqa: E731
        steps = _StepBar()
    summary = run_search(cfg, args.study_name, args.storage, n_trials=args.n_trials, timeout=args.timeout, log=log,
                         progress_factory=bars, trial_progress=steps)
    print_summary(summary, args.study_name, cfg)
    return 130 if summary.interrupted else 0


def print_summary(summary, study_name: str, cfg) -> None:
    from .pareto import pareto_front, trials_frame

    res = summary.resolution
    c = summary.counts
    if summary.interrupted:
        print("interrupted: every finished trial is kept; run the same command again to resume.")
    print(f"study '{study_name}': {c['complete']} trained, {c['rejected']} rejected by the budget before training, "
          f"{c['invalid']} invalid, {c['pruned']} pruned, {c['failed']} failed ({summary.wall_s:.0f} s this run)")
    front = pareto_front(trials_frame(summary.study))
    if front.empty:
        print("no trained trial yet")
    else:
        print(f"Pareto-optimal trials (validation accuracy vs MFLOPs at {res}x{res}; test accuracy is reported only):")
        table = front[["trial", "val_acc", "test_acc", "mflops", "mparams", "arch"]].rename(columns={
            "val_acc": "val acc", "test_acc": "test acc", "mflops": f"MFLOPs@{res}", "mparams": "M params"})
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"storage: {summary.storage_url}")
    print(f"  resume or add a worker: dsearch run --study-name {study_name} --storage {summary.storage_url} ...")
    print(f"  browse: optuna-dashboard {summary.storage_url}")


@command
def cmd_spaces(args: argparse.Namespace) -> int:
    from .cost import spec_cost
    from .spaces import available_spaces, extreme_spec, load_space, space_size

    print(f"MFLOPs at each space's resolution, for {args.in_channels} input channel(s) and {args.num_classes} classes")
    print(f"{'space':<10} {'resolution':>10} {'architectures':>14} {'MFLOPs min':>11} {'MFLOPs max':>11}  description")
    for name, path in available_spaces().items():
        space = load_space(str(path))
        lo = spec_cost(extreme_spec(space, args.in_channels, args.num_classes))
        hi = spec_cost(extreme_spec(space, args.in_channels, args.num_classes, cheapest=False))
        res = f"{space.resolution}x{space.resolution}"
        print(f"{name:<10} {res:>10} {space_size(space):>14.3g} {lo.mflops:>11.2f} {hi.mflops:>11.2f}  "
              f"{space.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsearch", description="Architecture search over separable convolutions under a compute budget."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("cost", help="MFLOPs and parameters of an architecture (preset or ArchSpec JSON)")
    p.add_argument("arch", metavar="ARCH", help=f"preset ({', '.join(sorted(PRESETS))}) or ArchSpec JSON file")
    p.add_argument("--resolution", type=int, help="input size to count at (default: the spec's deployment size)")
    p.add_argument("--num-classes", type=int, help="override the number of classes")
    p.add_argument("--in-channels", type=int, help="override the number of input channels")
    p.add_argument("--width", type=float, help="width multiplier (presets only)")
    p.add_argument("--conv", help="switch every conv unit to this kind (regular, dsc, bsconv_u, bsconv_s, scc)")
    p.add_argument("--depth", type=int, default=3, help="module depth of the per-layer table")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")

    p = sub.add_parser("run", help="search a space under a budget (trains proxies, stores every trial)")
    g = p.add_argument_group("budget and space")
    g.add_argument("--budget-mflops", type=float, help="MFLOPs budget (millions of MACs at the deployment resolution)")
    g.add_argument("--budget-mparams", type=float, help="parameter budget in millions")
    g.add_argument("--space", default="mobile", help="space name (see `dsearch spaces`) or a space YAML file")
    g.add_argument("--resolution", type=int, help="deployment resolution where budgets are counted (default: the space's)")
    g.add_argument("--objective", default="multi", choices=["multi", "accuracy"],
                   help="multi: maximize val accuracy and minimize MFLOPs; accuracy: maximize val accuracy (prunable)")
    g = p.add_argument_group("data and proxy training")
    g.add_argument("--dataset", default="fashion-mnist-embedded",
                   help="fashion-mnist-embedded (offline default), mnist, fashion-mnist, cifar10, cifar100, svhn, "
                        "or imagefolder:PATH")
    g.add_argument("--data-dir", help="where torchvision datasets live (default ~/.cache/dsearch/data)")
    g.add_argument("--train-resolution", type=int, help="proxy training input size (default: the data's own)")
    g.add_argument("--epochs", type=int, default=2, help="proxy training epochs per trial (default 2)")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--train-subset", type=int, help="train on at most this many images")
    g.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    g.add_argument("--lr", type=float, help="peak learning rate (default 0.1 sgd / 0.002 adamw at batch 128)")
    g.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, ...")
    g = p.add_argument_group("study")
    g.add_argument("--n-trials", type=int, default=10,
                   help="architectures this worker trains (rejected samples do not count; default 10)")
    g.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    g.add_argument("--study-name", default="default", help="the study to create or resume (default: default)")
    g.add_argument("--storage", help="Optuna storage URL (sqlite:///..., postgresql://...) or journal file path; "
                                     "default sqlite:///studies/<study-name>/study.db")
    g.add_argument("--sampler", default="tpe", choices=["tpe", "nsga2", "random"])
    g.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"],
                   help="with --objective accuracy (Optuna prunes single-objective studies only)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--quiet", action="store_true", help="no progress bars or per-trial lines")

    p = sub.add_parser("spaces", help="list the search spaces with their size and MFLOPs range")
    p.add_argument("--in-channels", type=int, default=1, help="input channels the range is counted for (default 1)")
    p.add_argument("--num-classes", type=int, default=10, help="classes the range is counted for (default 10)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except DsearchError as err:
        print(f"dsearch {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dsearch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
