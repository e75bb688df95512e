#!/usr/bin/env python
"""By-hand benchmark of dsearch's conv kinds (not a test; nothing here is asserted by pytest).

Part 1 times forward+backward of every conv kind built by `dsearch.model.ops.make_conv` at a few
realistic shapes and reports time per call, analytic MACs per call and achieved GMAC/s next
to a matmul reference, so that we know how far we are from the machine's limit.

Part 2 times the SCC pointwise map alone (M -> N 1x1) in the form dsearch's proxy trains it
(`dsearch.training.fastpath.ProxySlidingChannelConv`: dsearch's own kernel on CPU where it is built, else the
custom op's dense masked product; the header names the form) for every groups/overlap pair against
two baselines measured in the same run on the same input:
  masked:  a dense 1x1 conv whose N x M weight is scattered from the N x K real weights
           every step, in plain PyTorch autograd;
  grouped: a g-group 1x1 conv (F.conv2d groups=g), same MACs as SCC.
Targets (docs/concepts.md, SCC's forms): SCC within 1.2x of the grouped conv, never slower than the masked one.

All tensors are channels_last (fp32, or bf16 autocast with --bf16). MACs per call are the
analytic forward MACs (`conv_macs` x batch) times 3 for forward + backward, a rough count.
The input requires grad (as for any layer but the stem), so backward computes the input
gradient as well as the weight gradients. Each case is timed as the median of --repeats
samples after warm-up; the candidates of one table are interleaved sample by sample so that
a busy machine hurts them alike.

    python benchmarks/bench_convs.py --quick           # one shape, few repeats (< 60 s on 2 CPU cores)
    python benchmarks/bench_convs.py --threads 2 --repeats 10
"""
from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsearch.model.ops import CONV_TYPES, ConvConfigError, SlidingChannelConvOp, check_conv, conv_macs, make_conv
from dsearch.training.fastpath import ProxySlidingChannelConv
from dsearch.training.proxy import keep_freed_memory

KERNEL, STRIDE = 3, 1
BENCH_KNOBS: dict[str, dict] = {"scc": {"groups": 2, "overlap": 0.5}}  # the others at their defaults (bsconv_s: p 0.25)
CONV_KINDS: tuple[tuple[str, dict], ...] = tuple((kind, BENCH_KNOBS.get(kind, {})) for kind in CONV_TYPES)
SCC_GROUPS = (2, 4, 8)
SCC_OVERLAPS = (0.25, 1 / 3, 0.5, 0.75)
TARGET_VS_GROUPED = 1.2  # SCC time / grouped 1x1 conv time, at most
TARGET_VS_MASKED = 1.0  # SCC time / dense masked 1x1 conv time, at most
MIN_SAMPLE_S = 0.01  # calls this fast are repeated inside one timed sample
Step = Callable[[], None]  # one forward + backward call


@dataclass(frozen=True)
class Shape:
    batch: int
    cin: int
    cout: int
    size: int

    def __str__(self) -> str:
        return f"b{self.batch} {self.cin}->{self.cout} {self.size}x{self.size}"


SHAPES = (Shape(64, 64, 128, 32), Shape(64, 128, 128, 32), Shape(32, 32, 64, 56))
QUICK_SHAPES = (Shape(64, 128, 128, 32),)


@dataclass(frozen=True)
class Timing:
    median_s: float
    min_s: float
    spread: float  # interquartile range / median: how noisy the samples were

    @classmethod
    def of(cls, samples: list[float]) -> Timing:
        median = statistics.median(samples)
        if len(samples) < 2:
            return cls(median, median, 0.0)
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        return cls(median, min(samples), (q3 - q1) / median)


# ---------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def fwd_bwd_step(module: nn.Module, x: Tensor, bf16: bool) -> Step:
    """One training step's conv work: forward, backward to the input and the weights."""
    params = [p for p in module.parameters() if p.requires_grad]
    grad_out: list[Tensor] = []  # made on the first call: same shape, dtype and layout as the output

    def step() -> None:
        x.grad = None
        for p in params:
            p.grad = None
        with autocast(x.device, bf16):
            out = module(x)
        if not grad_out:
            grad_out.append(torch.randn_like(out))
        out.backward(grad_out[0])

    return step


def seconds_per_call(step: Step, calls: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def time_interleaved(
    steps: dict[str, Step], repeats: int, warmup: int, device: torch.device
) -> tuple[dict[str, Timing], dict[str, str]]:
    """Seconds per call of each step, sampled in turn `repeats` times after `warmup` calls each.

    The last warm-up call sets how many calls one sample holds (at least MIN_SAMPLE_S long).
    Steps that raise during warm-up are left out and returned with their error's first line.
    """
    calls, failed = {}, {}
    for name, step in steps.items():
        try:
            last = [seconds_per_call(step, 1, device) for _ in range(max(1, warmup))][-1]
        except RuntimeError as err:
            failed[name] = str(err).strip().splitlines()[0][:100]
        else:
            calls[name] = max(1, math.ceil(MIN_SAMPLE_S / last))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name in calls:
            samples[name].append(seconds_per_call(steps[name], calls[name], device))
    return {name: Timing.of(values) for name, values in samples.items()}, failed


def matmul_reference(device: torch.device, bf16: bool, repeats: int) -> float:
    """GMAC/s of one large square matmul: a practical ceiling for this device and dtype."""
    n = 4096 if device.type == "cuda" else 2048
    dtype = torch.bfloat16 if bf16 else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timings, _ = time_interleaved({"mm": lambda: torch.mm(a, b)}, repeats, warmup=1, device=device)
    return n**3 / timings["mm"].min_s / 1e9  # the best sample: a ceiling, not a typical value


# ---------------------------------------------------------------- modules and inputs


def make_input(shape: Shape, device: torch.device) -> Tensor:
    x = torch.randn(shape.batch, shape.cin, shape.size, shape.size, device=device)
    return x.contiguous(memory_format=torch.channels_last).requires_grad_(True)


def prepare(module: nn.Module, device: torch.device) -> nn.Module:
    return module.to(device=device, memory_format=torch.channels_last)


class MaskedPointwise(nn.Module):
    """Baseline (a): the SCC map as a dense 1x1 conv, weight scattered in plain autograd."""

    def __init__(self, scc: SlidingChannelConvOp) -> None:
        super().__init__()
        self.in_channels = scc.in_channels
        self.weight = nn.Parameter(scc.weight.detach().clone())
        self.register_buffer("index", scc.index.clone())

    def forward(self, x: Tensor) -> Tensor:
        dense = self.weight.new_zeros(self.weight.shape[0], self.in_channels).scatter(1, self.index, self.weight)
        return F.conv2d(x, dense[:, :, None, None])


def grouped_pointwise(cin: int, cout: int, groups: int) -> nn.Module:
    """Baseline (b): a g-group 1x1 conv, N x M/g weights like SCC."""
    return nn.Conv2d(cin, cout, 1, groups=groups, bias=False)


# ---------------------------------------------------------------- report helpers


def fwd_bwd_macs(forward_macs_per_image: int, batch: int) -> int:
    return 3 * forward_macs_per_image * batch


def gmacs(macs: int, timing: Timing) -> float:
    return macs / timing.median_s / 1e9


def ms(timing: Timing) -> str:
    return f"{timing.median_s * 1e3:9.2f} ms ±{timing.spread * 100:3.0f}%"


def knob_text(knobs: dict) -> str:
    return ",".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in knobs.items())


def rule(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 86 - len(title)))


# ---------------------------------------------------------------- part 1: conv kinds


def bench_conv_kinds(shape: Shape, args: argparse.Namespace, peak_gmacs: float) -> None:
    x = make_input(shape, args.device)
    steps, macs = {}, {}
    for kind, knobs in CONV_KINDS:
        label = f"{kind}({knob_text(knobs)})" if knobs else kind
        module = prepare(make_conv(kind, shape.cin, shape.cout, KERNEL, STRIDE, **knobs), args.device)
        steps[label] = fwd_bwd_step(module, x, args.bf16)
        per_image = conv_macs(kind, shape.cin, shape.cout, KERNEL, STRIDE, (shape.size, shape.size), **knobs)
        macs[label] = fwd_bwd_macs(per_image, shape.batch)
    timings, failed = time_interleaved(steps, args.repeats, args.warmup, args.device)

    print(f"\n{shape}, k{KERNEL} s{STRIDE}")
    print(f"  {'kind':28s} {'time/call (median ±IQR)':>24s} {'GMAC/call':>10s} {'GMAC/s':>8s} {'of mm':>6s}")
    for label, timing in timings.items():
        rate = gmacs(macs[label], timing)
        print(f"  {label:28s} {ms(timing):>24s} {macs[label] / 1e9:10.3f} {rate:8.1f} {rate / peak_gmacs:6.1%}")
    for label, error in failed.items():
        print(f"  {label:28s} FAILED: {error}")


# ---------------------------------------------------------------- part 2: SCC pointwise


class CandidateFailed(Exception):
    """A candidate of an SCC case raised instead of running."""


@dataclass(frozen=True)
class SccCase:
    shape: Shape
    groups: int
    overlap: float
    scc: Timing
    masked: Timing
    grouped: Timing

    @property
    def vs_grouped(self) -> float:
        return self.scc.median_s / self.grouped.median_s

    @property
    def vs_masked(self) -> float:
        return self.scc.median_s / self.masked.median_s

    @property
    def miss_flag(self) -> str:
        misses = [name for name, ratio, target in (("grp", self.vs_grouped, TARGET_VS_GROUPED),
                                                   ("msk", self.vs_masked, TARGET_VS_MASKED)) if ratio > target]
        return f"  <- miss {'+'.join(misses)}" if misses else ""


def scc_is_valid(shape: Shape, groups: int, overlap: float) -> bool:
    try:
        check_conv("scc", shape.cin, shape.cout, 1, 1, {"groups": groups, "overlap": overlap})
    except ConvConfigError:
        return False
    return True


def check_same_output(scc: nn.Module, masked: nn.Module, x: Tensor, bf16: bool) -> None:
    """Guard against timing a wrong kernel: SCC and the masked baseline must agree."""
    with torch.no_grad(), autocast(x.device, bf16):
        got, want = scc(x).float(), masked(x).float()
    tol = 3e-2 if bf16 else 1e-4
    if not torch.allclose(got, want, rtol=tol, atol=tol):
        raise AssertionError(f"SCC and masked outputs differ: max |diff| = {(got - want).abs().max():.3g}")


def bench_scc_case(shape: Shape, groups: int, overlap: float, x: Tensor, args: argparse.Namespace) -> SccCase:
    op = SlidingChannelConvOp(shape.cin, shape.cout, groups, overlap).to(args.device)
    scc = ProxySlidingChannelConv(op, args.device.type)
    masked = prepare(MaskedPointwise(op), args.device)
    grouped = prepare(grouped_pointwise(shape.cin, shape.cout, groups), args.device)
    check_same_output(scc, masked, x, args.bf16)
    modules = {"scc": scc, "masked": masked, "grouped": grouped}
    steps = {name: fwd_bwd_step(module, x, args.bf16) for name, module in modules.items()}
    t, failed = time_interleaved(steps, args.repeats, args.warmup, args.device)
    if failed:
        raise CandidateFailed("; ".join(f"{name}: {error}" for name, error in failed.items()))
    return SccCase(shape, groups, overlap, t["scc"], t["masked"], t["grouped"])


def bench_scc_shape(shape: Shape, args: argparse.Namespace) -> list[SccCase]:
    x = make_input(shape, args.device)
    form = ProxySlidingChannelConv(SlidingChannelConvOp(shape.cin, shape.cout, 2, 0.5), args.device.type).form
    print(f"\n{shape}, pointwise 1x1, scc in its {form} form"
          " (MACs equal for SCC and grouped; masked does g x more work)")
    print(f"  {'g':>2s} {'o':>5s} {'GMAC/call':>10s} {'scc':>19s} {'masked':>19s} {'grouped':>19s}"
          f" {'scc/grp':>8s} {'scc/msk':>8s}")
    cases = []
    for groups in SCC_GROUPS:
        for overlap in SCC_OVERLAPS:
            if not scc_is_valid(shape, groups, overlap):
                print(f"  {groups:2d} {overlap:5.3f}  skipped: not a valid scc(g, o) for M={shape.cin}")
                continue
            try:
                case = bench_scc_case(shape, groups, overlap, x, args)
            except CandidateFailed as failure:
                print(f"  {groups:2d} {overlap:5.3f}  FAILED {failure}")
                continue
            macs = fwd_bwd_macs(shape.cout * (shape.cin // groups) * shape.size**2, shape.batch)
            print(f"  {groups:2d} {overlap:5.3f} {macs / 1e9:10.3f} {ms(case.scc):>19s} {ms(case.masked):>19s}"
                  f" {ms(case.grouped):>19s} {case.vs_grouped:8.2f} {case.vs_masked:8.2f}{case.miss_flag}")
            cases.append(case)
    return cases


def summary_line(name: str, ratios: list[float], target: float) -> str:
    worst, median = max(ratios), statistics.median(ratios)
    verdict = "met" if worst <= target else f"MISSED in {sum(r > target for r in ratios)}/{len(ratios)} cases"
    return f"  {name:12s} worst {worst:5.2f}  median {median:5.2f}  target <= {target:.2f}: {verdict}"


def print_scc_summary(cases: list[SccCase]) -> None:
    rule("SCC summary")
    if not cases:
        print("  no valid cases")
        return
    print(summary_line("scc/grouped", [c.vs_grouped for c in cases], TARGET_VS_GROUPED))
    print(summary_line("scc/masked", [c.vs_masked for c in cases], TARGET_VS_MASKED))
    worst = max(cases, key=lambda c: c.vs_grouped)
    print(f"  worst vs grouped: {worst.shape}, g={worst.groups}, o={worst.overlap:.3f}")
    noise = statistics.median(t.spread for c in cases for t in (c.scc, c.masked, c.grouped))
    print(f"  median sample spread (IQR/median) {noise:.0%}: ratios that close to a target are within noise")


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one shape, few repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed samples per case (default 10, quick 3)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed calls per case, >= 1 (default 2, quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--bf16", action="store_true", help="run under bf16 autocast")
    parser.add_argument("--skip-kinds", action="store_true", help="only the SCC section")
    parser.add_argument("--skip-scc", action="store_true", help="only the conv-kinds section")
    args = parser.parse_args(argv)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.repeats = args.repeats or (3 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if args.repeats < 1 or args.warmup < 1:
        parser.error("--repeats and --warmup must be >= 1")
    return args


def print_header(args: argparse.Namespace) -> None:
    print(f"torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name(args.device)})" if args.device.type == "cuda" else "")
          + f", threads {torch.get_num_threads()}, dtype {'bf16 autocast' if args.bf16 else 'fp32'},"
          f" channels_last, repeats {args.repeats}, warm-up {args.warmup}")
    if args.device.type == "cuda":
        print(f"TF32: conv {torch.backends.cudnn.allow_tf32}, matmul {torch.backends.cuda.matmul.allow_tf32}")
    print("time/call = median of the samples, ±IQR/median; MACs/call = 3 x analytic forward MACs (fwd+bwd)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.type == "cpu":
        keep_freed_memory()  # as dsearch's CPU training does, for every candidate alike
    torch.manual_seed(0)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    started = time.perf_counter()
    print_header(args)

    peak = matmul_reference(args.device, args.bf16, args.repeats)
    print(f"reference: square matmul, best sample {peak:.1f} GMAC/s (the 'of mm' column is relative to it)")

    if not args.skip_kinds:
        rule("conv kinds, forward + backward")
        for shape in shapes:
            bench_conv_kinds(shape, args, peak)

    if not args.skip_scc:
        rule("SCC pointwise vs dense masked 1x1 and grouped 1x1, forward + backward")
        cases = [case for shape in shapes for case in bench_scc_shape(shape, args)]
        print_scc_summary(cases)

    print(f"\ntotal {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
