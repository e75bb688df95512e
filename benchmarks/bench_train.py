"""Proxy-trainer throughput (images/s) against a plain DataLoader + fp32 NCHW loop, same model, same run.

    python benchmarks/bench_train.py [--arch mobilenet_v2] [--width 0.5] [--steps 30] [--device auto]

The baseline is what a typical training script does: a torch DataLoader over a TensorDataset of
float images (batch 128, shuffled), NCHW tensors, fp32. dsearch's trainer keeps the uint8 data
on the device, augments there, and runs channels_last (bf16 autocast on CUDA). Both train the
same architecture with the same optimizer for the same number of steps; the ratio is printed.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from dsearch import build_model, preset
from dsearch.data import load_dataset
from dsearch.train import DeviceData, ProxyConfig, select_device, train_proxy


def baseline_images_per_s(spec, data, device: torch.device, steps: int, batch: int) -> float:
    model = build_model(spec).to(device)
    x = (data.train_x.float() / 255 - data.mean[0]) / data.std[0]
    loader = DataLoader(TensorDataset(x, data.train_y), batch_size=batch, shuffle=True, drop_last=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    done, start = 0, None
    while done < steps + 3:
        for xb, yb in loader:
            if done == 3:  # warm-up steps excluded
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            xb, yb = xb.to(device), yb.to(device)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done >= steps + 3:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def dsearch_images_per_s(spec, data, device: torch.device, steps: int, batch: int) -> float:
    """One epoch of `steps + 3` steps through train_proxy (its own timer; warm-up steps included)."""
    device_data = DeviceData(data, device, train_subset=(steps + 3) * batch)
    return train_proxy(spec, device_data, ProxyConfig(epochs=1, batch_size=batch, augment=True)).images_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = select_device(args.device)
    data = load_dataset()
    spec = preset(args.arch, width=args.width, num_classes=data.num_classes, in_channels=data.in_channels)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"{args.arch} w{args.width:g} at {data.image_size[0]}x{data.image_size[1]}, batch {args.batch}")
    base = baseline_images_per_s(spec, data, device, args.steps, args.batch)
    ours = dsearch_images_per_s(spec, data, device, args.steps, args.batch)
    print(f"baseline (DataLoader, fp32, NCHW): {base:8.0f} images/s")
    print(f"dsearch trainer (channels_last):   {ours:8.0f} images/s   ratio {ours / base:.2f}x")


if __name__ == "__main__":
    main()
