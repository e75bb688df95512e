#!/usr/bin/env python
"""Proxy-trainer throughput (images/s) against a plain PyTorch loop on the search's own candidates, same run.

    python benchmarks/bench_train.py            # 6 sampled candidates + presets (a few minutes on 2 CPU cores)
    python benchmarks/bench_train.py --quick    # 3 candidates, fewer steps (~1 minute)
    python benchmarks/bench_train.py --device cuda
    python benchmarks/bench_train.py --fit-batches 8,32,128   # fixed ms per step and ms per image, both loops

Architectures: `--candidates` samples from the default space (`mobile`, deployment 224x224) with
Optuna's RandomSampler at a fixed seed, kept when within the default budget (300 MFLOPs at
224x224, fvcore), plus the presets; all train at the embedded data's own size (28x28) at the
default proxy settings (batch 128, SGD).

For each architecture, in the same run, interleaved round by round (--repeats rounds):
  baseline: a plain loop on the unmodified model from `build_model`: a torch DataLoader over a
            TensorDataset of float images (shuffled, batch 128), fp32, SGD; once in NCHW and
            once in channels_last; the faster of the two is the baseline;
  dsearch:  `train_proxy` (uint8 data on the device, on-device augmentation, the fast path of
            dsearch.training.fastpath with dsearch's own CPU kernels where built (DSEARCH_NATIVE=0 turns them
            off), bf16 autocast on CUDA), timed from its progress callback.
Both are timed over the same number of training steps after the same warm-up steps, without
evaluation. images/s is the median over rounds; the ratio is dsearch / baseline. Share of peak:
MACs per image at 28x28 (fvcore) x 3 (forward + backward) x images/s, against the MAC/s of a
large fp32 matmul measured at start (1 MAC = 2 flops on both sides).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import optuna
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from dsearch import build_model, preset, spec_cost
from dsearch.data import load_dataset
from dsearch.model.archspec import ArchSpec
from dsearch.search.spaces import load_space, sample
from dsearch.training import native
from dsearch.training.proxy import DeviceData, ProxyConfig, select_device, train_proxy

WARMUP_STEPS = 2
PRESETS = (("mobilenet_v2", 0.5), ("mobilenet_v2", 1.0))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_macs_per_s(device: torch.device, n: int = 2048, seconds: float = 1.0) -> float:
    """Multiply-accumulates per second of an n x n fp32 matmul (the machine's practical peak)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    synchronize(device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        calls += 1
        synchronize(device)
    return calls * n ** 3 / (time.perf_counter() - start)


def sampled_candidates(count: int, seed: int, budget_mflops: float, in_channels: int,
                       num_classes: int) -> list[ArchSpec]:
    """The first `count` architectures of the mobile space within the budget, from a seeded RandomSampler."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space("mobile")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    specs: list[ArchSpec] = []
    for _ in range(50 * count):
        trial = study.ask()
        spec = sample(space, trial, in_channels, num_classes)
        study.tell(trial, 0.0)
        if spec_cost(spec).mflops <= budget_mflops and spec not in specs:
            specs.append(spec)
            if len(specs) == count:
                break
    return specs


def baseline_images_per_s(spec: ArchSpec, data, device: torch.device, steps: int, batch: int,
                          channels_last: bool) -> float:
    """A typical training script: DataLoader over float tensors, fp32, plain SGD; warm-up steps not timed."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = build_model(spec).to(device=device, memory_format=fmt)
    x = (data.train_x.float() / 255 - data.mean[0]) / data.std[0]
    loader = DataLoader(TensorDataset(x, data.train_y), batch_size=batch, shuffle=True, drop_last=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    done, start = 0, 0.0
    while done < steps + WARMUP_STEPS:
        for xb, yb in loader:
            if done == WARMUP_STEPS:
                synchronize(device)
                start = time.perf_counter()
            xb = xb.to(device).contiguous(memory_format=fmt)
            loss = F.cross_entropy(model(xb), yb.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == steps + WARMUP_STEPS:
                break
    synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def dsearch_images_per_s(spec: ArchSpec, data, device: torch.device, steps: int, batch: int) -> float:
    """train_proxy for one epoch of warm-up + `steps` steps, timed between progress callbacks (no evaluation)."""
    # The epoch-end evaluation is not timed; a small validation/test split keeps it from costing wall time.
    small = dataclasses.replace(data, val_x=data.val_x[:batch], val_y=data.val_y[:batch], test_x=data.test_x[:batch],
                                test_y=data.test_y[:batch])
    device_data = DeviceData(small, device, train_subset=(steps + WARMUP_STEPS) * batch)
    marks: dict[int, float] = {}

    def progress(step: int, total: int) -> None:
        if step in (WARMUP_STEPS, WARMUP_STEPS + steps):
            synchronize(device)
            marks[step] = time.perf_counter()

    train_proxy(spec, device_data, ProxyConfig(epochs=1, batch_size=batch), progress=progress)
    return steps * batch / (marks[WARMUP_STEPS + steps] - marks[WARMUP_STEPS])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=6, help="architectures sampled from the mobile space")
    parser.add_argument("--seed", type=int, default=0, help="RandomSampler seed")
    parser.add_argument("--budget-mflops", type=float, default=300.0, help="at the space's 224x224")
    parser.add_argument("--no-presets", action="store_true", help="sampled candidates only")
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default); on a busy "
                        "machine 1 thread avoids stalls at every parallel op's barrier")
    parser.add_argument("--quick", action="store_true", help="3 candidates, no presets, 6 steps, 2 rounds")
    parser.add_argument("--fit-batches", default="", help="comma-separated batch sizes: instead of the table, fit "
                        "each loop's step time as fixed ms + ms per image (slope between the two largest; best of "
                        "--repeats interleaved rounds at each size)")
    args = parser.parse_args()
    if args.quick:
        args.candidates, args.no_presets, args.steps, args.repeats = 3, True, 6, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    data = load_dataset()
    size = data.image_size[0]
    specs = [(f"sample{i + 1}", s) for i, s in enumerate(
        sampled_candidates(args.candidates, args.seed, args.budget_mflops, data.in_channels, data.num_classes))]
    if not args.no_presets:
        specs += [(f"{name} w{w:g}", preset(name, width=w, num_classes=data.num_classes, in_channels=data.in_channels))
                  for name, w in PRESETS]
    if args.fit_batches:
        fit_table(specs, data, device, args.steps, sorted(int(b) for b in args.fit_batches.split(",")), args.repeats)
        return
    peak = matmul_macs_per_s(device)
    cpu = _cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device)
    kernels = f"dsearch's CPU kernels: {native.status()}; " if device.type == "cpu" else ""
    print(f"torch {torch.__version__}, {device} ({cpu}), {torch.get_num_threads()} threads; {kernels}fp32 matmul "
          f"{peak / 1e9:.0f} GMAC/s; training at {size}x{size}, batch {args.batch}, {args.steps} timed steps "
          f"after {WARMUP_STEPS} warm-up, {args.repeats} interleaved rounds (medians)")
    print(f"\n{'arch':<16} {'MFLOPs@224':>10} {'NCHW':>7} {'ch_last':>7} {'dsearch':>7} {'ratio':>6} "
          f"{'peak%':>6}  architecture", flush=True)
    ratios = []
    for name, spec in specs:
        nchw, cl, ours = [], [], []
        for _ in range(args.repeats):  # interleaved, so that a busy machine slows all three alike
            nchw.append(baseline_images_per_s(spec, data, device, args.steps, args.batch, False))
            cl.append(baseline_images_per_s(spec, data, device, args.steps, args.batch, True))
            ours.append(dsearch_images_per_s(spec, data, device, args.steps, args.batch))
        nchw_m, cl_m, ours_m = (statistics.median(v) for v in (nchw, cl, ours))
        ratio = ours_m / max(nchw_m, cl_m)
        if name.startswith("sample"):
            ratios.append(ratio)
        share = 100 * ours_m * 3 * spec_cost(spec, size).macs / peak
        print(f"{name:<16} {spec_cost(spec).mflops:>10.1f} {nchw_m:>7.0f} {cl_m:>7.0f} {ours_m:>7.0f} {ratio:>5.2f}x "
              f"{share:>5.1f}%  {spec.summary()}", flush=True)
    if ratios:
        print(f"\nimages/s at {size}x{size}; ratio = dsearch / the faster baseline layout. Sampled candidates: "
              f"median ratio {statistics.median(ratios):.2f}x, worst {min(ratios):.2f}x, best {max(ratios):.2f}x")


def step_ms(images_per_s: float, batch: int) -> float:
    return batch / images_per_s * 1e3


def fit_table(specs, data, device: torch.device, steps: int, batches: list[int], repeats: int) -> None:
    """Per architecture and loop: step time (ms, best of `repeats`) at each batch size, and its linear fit.

    The slope between the two largest batches is the cost per image; the intercept at the largest batch is the
    cost per step that does not scale with the batch (dispatch, autograd, Python, work on the weights).
    "no-fixed bound" is the ratio the trainer would reach at the largest batch if its fixed cost were zero.
    """
    if len(batches) < 2:
        raise SystemExit("--fit-batches needs at least two batch sizes, e.g. --fit-batches 8,32,128")
    print(f"step time (ms) at batch sizes {batches}, best of {repeats}; baseline: the channels_last plain loop")
    for name, spec in specs:
        times: dict[str, dict[int, float]] = {"baseline": {}, "dsearch": {}}
        for b in batches:
            runs: dict[str, list[float]] = {"baseline": [], "dsearch": []}
            for _ in range(repeats):  # interleaved, so that a busy machine slows both loops alike
                runs["baseline"].append(step_ms(baseline_images_per_s(spec, data, device, steps, b, True), b))
                runs["dsearch"].append(step_ms(dsearch_images_per_s(spec, data, device, steps, b), b))
            for loop, values in runs.items():
                times[loop][b] = min(values)
        small, large = batches[-2], batches[-1]
        fits = {}
        for loop, t in times.items():
            per_image = (t[large] - t[small]) / (large - small)
            fits[loop] = (t[large] - large * per_image, per_image)
            print(f"{name:<16} {loop:<8} " + "  ".join(f"b{b} {t[b]:6.1f}" for b in batches) +
                  f"  fit: {fits[loop][0]:5.1f} ms fixed + {fits[loop][1]:.3f} ms/image")
        bound = times["baseline"][large] / (large * fits["dsearch"][1])
        print(f"{name:<16} ratio at b{large}: {times['baseline'][large] / times['dsearch'][large]:.2f}x; "
              f"no-fixed bound {bound:.2f}x", flush=True)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
