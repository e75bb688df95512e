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
