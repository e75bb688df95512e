"""Full training of one chosen architecture: the proxy trainer on all the data with a longer schedule.

The target is a study trial (its architecture, dataset and training resolution come from the
study; the weights are kept with the study for `dsearch export`) or an ArchSpec JSON file (the
weights go to a folder with arch.json, weights.pt and metrics.json).
"""
from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..checks import check_device, check_resolution
from ..cost.count import spec_cost
from ..cost.memory import check_fits_memory, free_memory
from ..data import EMBEDDED_NAME, data_facts, load_dataset, small_split_note
from ..errors import DsearchError
from ..model.archspec import ArchSpec
from ..paths import write_files_atomic
from .advice import chance_advice, chance_causes, clamp_warning, steps_warning
from .failures import check_finite_state
from .proxy import (
    DEFAULT_LR,
    DeviceData,
    ProxyConfig,
    TrainingDiverged,
    TrainResult,
    chance_note,
    check_proxy,
    fit_batch,
    select_device,
    train_proxy,
)
from .schedule import settings_key

# Peak SGD learning rate at batch 128 for full training, the proxy's own: 0.1 over 10 epochs collapsed the default
# study's best trial to chance in epoch 2 (test 0.765), where 0.04 reached 0.853.
FULL_TRAIN_SGD_LR = DEFAULT_LR["sgd"]


@dataclass(frozen=True)
class FullTrainConfig:
    dataset: str | None = None  # None: the study's dataset (or the embedded default for a JSON file)
    data_dir: str | None = None
    train_resolution: int | None = None  # None: the study's proxy setting (or the data's own size)
    device: str = "auto"
    proxy: ProxyConfig = ProxyConfig(epochs=10, label_smoothing=0.1)


def check_fits_data(spec: ArchSpec, in_channels: int, num_classes: int, dataset: str) -> None:
    if spec.in_channels != in_channels or spec.num_classes != num_classes:
        raise DsearchError(
            f"the architecture takes {spec.in_channels} input channel(s) and {spec.num_classes} classes, but "
            f"{dataset} has {in_channels} and {num_classes}; train it on the dataset it was searched for "
            "(--dataset) or edit in_channels/num_classes in the ArchSpec")


def check_fits_training(spec: ArchSpec, size: int, batch: int, device: torch.device, data=None) -> None:
    """Refuse a training size and batch whose activations (with the images kept on the device) exceed the free
    memory, naming what is too large: the size, the batch (with one that fits) or the images held there."""
    train_images = train_bytes = other_bytes = None
    if data is not None:
        train_images = len(data.train_x)
        if device.type != "cpu":  # DeviceData copies the images there; on the CPU they are in host memory already
            image = data.train_x[:1].numel() * data.train_x.element_size()
            train_bytes, other_bytes = train_images * image, (len(data.val_x) + len(data.test_x)) * image
    check_fits_memory(spec, size, batch, device, "--train-resolution", training=True, free=free_memory(device),
                      train_images=train_images, train_bytes=train_bytes or 0, other_bytes=other_bytes or 0,
                      can_subset=False)  # `dsearch train` trains on the whole training split


def train_full(spec: ArchSpec, cfg: FullTrainConfig, progress: Callable[[int, int], None] | None = None,
               log: Callable[[str], None] = print,
               warn: Callable[[str], None] | None = None) -> tuple[TrainResult, dict[str, Any]]:
    """Train `spec` on the whole training split; returns the result and the facts to keep with the weights.

    `warn` (default: `log`) hears what must be said even where `log` is silenced: a clamped batch, chance accuracy.
    """
    say = warn or log
    dataset = cfg.dataset or EMBEDDED_NAME
    check_proxy(cfg.proxy)
    check_resolution(cfg.train_resolution, "--train-resolution")
    check_device(cfg.device)
    data = load_dataset(dataset, cfg.data_dir, seed=cfg.proxy.seed)
    check_fits_data(spec, data.in_channels, data.num_classes, dataset)
    small = small_split_note(data)
    if small:
        log(f"warning: {small}")
    proxy = full_proxy(cfg.proxy, len(data.train_x))
    clamped = clamp_warning(cfg.proxy, len(data.train_x))
    if clamped:
        say(f"warning: {clamped}")
    few = steps_warning(proxy, len(data.train_x), subset=False)  # `dsearch train` trains on the whole split
    if few:
        log(f"warning: {few}")
    try:
        device = select_device(cfg.device)
    except (ValueError, RuntimeError) as err:
        raise DsearchError(str(err).splitlines()[0]) from None
    check_fits_training(spec, cfg.train_resolution or data.image_size[0], proxy.batch_size, device, data)
    device_data = DeviceData(data, device, None, cfg.train_resolution)
    log(f"training {spec.summary()} for {proxy.epochs} epochs on {dataset} "
        f"({len(data.train_x)} images at {device_data.size}x{device_data.size}, {device})")

    def on_epoch(epoch: int, acc: float) -> None:
        log(f"  epoch {epoch + 1}/{proxy.epochs}: val acc {acc:.4f}")

    try:
        result = train_proxy(spec, device_data, proxy, on_epoch, progress)
        check_finite_state(result.state)
    except TrainingDiverged as err:
        raise DsearchError(f"training diverged ({err}); lower --lr or try --optimizer adamw") from None
    chance = chance_note(result.val_acc, len(device_data.val_y), data.num_classes)
    if chance is not None:
        advice = chance_advice(chance_causes(result, cfg.proxy, data.num_classes, subset=False), subset=False)
        say(f"warning: validation {chance}; {advice}")
    # Both sizes: the weights work at train_resolution; the architecture's cost is counted at resolution. The
    # batch and lr are those used (config holds the batch clamped to the split and the lr filled in for it).
    facts = {"epochs": result.epochs, "dataset": dataset, "val_acc": result.val_acc, "test_acc": result.test_acc,
             "train_resolution": device_data.size, "resolution": spec.resolution,
             "mflops": spec_cost(spec).mflops, "train_time_s": round(result.train_time_s, 1),
             "device": result.device, "history": result.history, "batch_size": result.batch_size, "lr": result.lr,
             "steps_per_epoch": result.steps_per_epoch, "train_loss": result.train_loss, **data_facts(data),
             "config": settings_key(proxy)}
    return result, facts


def kept_state(result: TrainResult) -> dict[str, torch.Tensor]:
    """The trained weights of a full training run (train_proxy always returns them)."""
    if result.state is None:
        raise RuntimeError("training returned no weights to keep: train_proxy must fill TrainResult.state")
    return result.state


def full_proxy(proxy: ProxyConfig, n_train: int | None = None) -> ProxyConfig:
    """The settings full training runs with: the batch clamped to `n_train` training images (when given), and SGD's
    unset learning rate the full schedule's, not the proxy's, scaled to that batch."""
    if n_train is not None:
        proxy = fit_batch(proxy, n_train)
    if proxy.lr is None and proxy.optimizer == "sgd":
        return replace(proxy, lr=FULL_TRAIN_SGD_LR * proxy.batch_size / 128)
    return proxy


def study_full_config(study_config: dict[str, Any], epochs: int | None = None, device: str = "auto") -> FullTrainConfig:
    """`dsearch train`'s default schedule for a study (its dataset and training size), `epochs` overriding."""
    base = FullTrainConfig(device=device)
    proxy = base.proxy if epochs is None else replace(base.proxy, epochs=epochs)
    return study_defaults(study_config, replace(base, proxy=proxy))


def study_defaults(study_config: dict[str, Any], cfg: FullTrainConfig) -> FullTrainConfig:
    """Fill the dataset and training resolution a study was searched with, where the user gave none."""
    proxy = study_config.get("proxy") or {}
    return replace(cfg, dataset=cfg.dataset or study_config.get("dataset"),
                   data_dir=cfg.data_dir or study_config.get("data_dir"),
                   train_resolution=cfg.train_resolution or proxy.get("train_resolution"))


def write_trained(out_dir: Path, spec: ArchSpec, state: dict, facts: dict[str, Any]) -> Path:
    """arch.json + weights.pt + metrics.json in `out_dir`, all three written whole before any replaces an older one
    (a full disk leaves the folder as it was)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = io.BytesIO()
    torch.save(state, weights)
    write_files_atomic(out_dir, {"arch.json": (spec.to_json() + "\n").encode(), "weights.pt": weights.getvalue(),
                                 "metrics.json": (json.dumps(facts, indent=2) + "\n").encode()})
    return out_dir
