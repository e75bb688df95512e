"""The in-memory Dataset, and the steps every source shares: resize, train/val split, statistics."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DsearchError


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value, compare by identity
class Dataset:
    """Three splits as in-memory tensors: images uint8 N x C x H x W, labels int64.

    `val` is carved out of the source's training split (fixed seed, stratified); `test` is the
    source's own test split and is for reporting only, never for choosing. `mean` and `std` are
    per channel, in [0, 1] pixel units, computed on `train_x` (the train split without val).
    """

    name: str
    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    val_x: torch.Tensor = field(repr=False)
    val_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        shape = (self.in_channels, *self.image_size)
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dtype != torch.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != shape:
                raise ValueError(f"{split}_x must be uint8 N x {shape}, got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != (len(x),):
                raise ValueError(f"{split}_y must be int64 of length {len(x)}, got {y.dtype} {tuple(y.shape)}")
        if len(self.classes) != self.num_classes or len(self.mean) != self.in_channels:
            raise ValueError("classes/mean do not match num_classes/in_channels")

    def summary(self) -> str:
        """One line: name, split sizes, image shape, classes."""
        h, w = self.image_size
        return (f"{self.name}: {len(self.train_y)} train / {len(self.val_y)} val / {len(self.test_y)} test, "
                f"{self.in_channels}x{h}x{w}, {self.num_classes} classes")


@dataclass(frozen=True, eq=False)
class Splits:
    """What a source yields before the val split: uint8 N x C x H x W images, int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split positions into (kept, held out), holding out round(fraction * n_c) of each class c.

    Deterministic for a given seed. When fraction > 0, every class with at least two samples
    gives at least one to the held-out part and keeps at least one. Both results are sorted.
    """
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    kept, held = [], []
    for c in np.unique(y):  # sorted, so the draw order does not depend on the label order
        members = np.flatnonzero(y == c)
        n_held = round(fraction * len(members))
        if fraction > 0 and len(members) >= 2:
            n_held = min(max(n_held, 1), len(members) - 1)
        members = rng.permutation(members)
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return _sorted_positions(kept), _sorted_positions(held)


def _sorted_positions(parts: list[np.ndarray]) -> torch.Tensor:
    flat = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    return torch.from_numpy(flat.astype(np.int64))


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images, in [0, 1] units.

    Exact, from a 256-bin histogram per channel, so it needs no float copy of the data.
    """
    if len(x) == 0:
        raise DsearchError("cannot compute image statistics: the training split is empty")
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        n = hist.sum()
        mean = (hist * values).sum() / n
        var = (hist * (values - mean) ** 2).sum() / n
        means.append(float(mean) / 255.0)
        stds.append(math.sqrt(float(var)) / 255.0)
    return tuple(means), tuple(stds)


def resize_uint8(x: torch.Tensor, size: tuple[int, int], chunk: int = 4096) -> torch.Tensor:
    """Bilinear (antialiased) resize of uint8 N x C x H x W images, in chunks to bound memory."""
    if tuple(x.shape[-2:]) == size:
        return x
    out = torch.empty((x.shape[0], x.shape[1], *size), dtype=torch.uint8)
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk].float()
        part = F.interpolate(part, size=size, mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def build_dataset(name: str, splits: Splits, val_fraction: float, seed: int,
                  image_size: int | None = None) -> Dataset:
    """Resize (if asked), split val off the train split, compute train statistics."""
    train_x, test_x = splits.train_x, splits.test_x
    if image_size is not None:
        train_x = resize_uint8(train_x, (image_size, image_size))
        test_x = resize_uint8(test_x, (image_size, image_size))
    num_classes = len(splits.classes)
    for split, y in (("train", splits.train_y), ("test", splits.test_y)):
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < num_classes:
            raise DsearchError(f"{name}: {split} labels fall outside 0..{num_classes - 1}")
    keep, val = stratified_split(splits.train_y, val_fraction, seed)
    train_x, val_x = train_x[keep].contiguous(), train_x[val].contiguous()
    train_y, val_y = splits.train_y[keep].contiguous(), splits.train_y[val].contiguous()
    mean, std = channel_stats(train_x)
    return Dataset(
        name=name, train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y,
        test_x=test_x.contiguous(), test_y=splits.test_y.contiguous(), num_classes=num_classes,
        in_channels=int(train_x.shape[1]), image_size=(int(train_x.shape[2]), int(train_x.shape[3])),
        mean=mean, std=std, classes=tuple(splits.classes),
    )


MIN_EVAL_IMAGES = 100  # below this, one image moves an accuracy by more than a point


def small_split_note(data: Dataset) -> str | None:
    """A warning with the counts when the validation or test split is too small to measure an accuracy."""
    sizes = {"validation": len(data.val_y), "test": len(data.test_y)}
    small = {name: n for name, n in sizes.items() if n < MIN_EVAL_IMAGES}
    if not small:
        return None
    parts = ", ".join(f"{name} {n} image(s)" for name, n in small.items())
    step = 100 / max(1, min(small.values()))
    return (f"{data.name}: {parts} (training {len(data.train_y)}): an accuracy on so few images moves in steps of "
            f"{step:.0f} points and says little; use more images per class (at least {MIN_EVAL_IMAGES} per split)")


def data_facts(data: Dataset) -> dict[str, Any]:
    """What a user of an exported model needs to know about its input and output."""
    return {"mean": [float(v) for v in data.mean], "std": [float(v) for v in data.std],
            "classes": [str(c) for c in data.classes], "image_size": list(data.image_size)}
