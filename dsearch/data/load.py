"""`load_dataset`: one entry point for every data source dsearch knows."""
from __future__ import annotations

from pathlib import Path

from ..errors import DsearchError
from .dataset import Dataset, build_dataset
from .embedded import EMBEDDED_NAME, load_embedded
from .imagefolder import load_imagefolder
from .torchvision_sets import TORCHVISION_SOURCES, load_torchvision

IMAGEFOLDER_PREFIX = "imagefolder:"
IMAGEFOLDER_DEFAULT_SIZE = 32
# Names accepted by load_dataset (for CLI help); "imagefolder:PATH" stands for any folder.
DATASETS: tuple[str, ...] = (EMBEDDED_NAME, *TORCHVISION_SOURCES, f"{IMAGEFOLDER_PREFIX}PATH")


def load_dataset(name: str = EMBEDDED_NAME, data_dir: str | Path | None = None, val_fraction: float = 0.1,
                 seed: int = 0, download: bool = True, image_size: int | None = None) -> Dataset:
    """Load a dataset into memory as uint8 tensors, with a validation split.

    name: "fashion-mnist-embedded" (default; shipped in the package, works offline), a
      torchvision dataset ("mnist", "fashion-mnist", "cifar10", "cifar100", "svhn") kept under
      `data_dir` (default ~/.cache/dsearch/data) and downloaded there when `download` is true,
      or "imagefolder:PATH" for PATH/<class>/<images> (or PATH/train/... and PATH/test/...).
    val_fraction, seed: the validation split is taken out of the source's training split only,
      stratified by class, and depends only on `seed`; the test split is the source's own (for
      image folders: a fixed 20%) and is for reporting, never for choosing architectures.
    image_size: resize images to image_size x image_size (bilinear); None keeps the data's own
      size, except for image folders, which default to 32.
    Raises DsearchError, with a one-line message, for anything the user can fix.
    """
    if image_size is not None and image_size < 1:
        raise DsearchError(f"image_size must be a positive number of pixels, got {image_size}")
    if not 0.0 <= val_fraction < 1.0:
        raise DsearchError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if name.lower().startswith(IMAGEFOLDER_PREFIX):
        folder = name[len(IMAGEFOLDER_PREFIX):]
        if not folder.strip():
            raise DsearchError(f"'{name}' names no folder; use {IMAGEFOLDER_PREFIX}PATH")
        path = Path(folder).expanduser()
        splits = load_imagefolder(path, image_size or IMAGEFOLDER_DEFAULT_SIZE)
        return build_dataset(f"{IMAGEFOLDER_PREFIX}{path.resolve()}", splits, val_fraction, seed)
    key = name.strip().lower().replace("_", "-")
    if key == EMBEDDED_NAME:
        splits = load_embedded()
    elif key in TORCHVISION_SOURCES:
        splits = load_torchvision(key, data_dir, download)
    else:
        raise DsearchError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}")
    return build_dataset(key, splits, val_fraction, seed, image_size)
