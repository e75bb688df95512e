"""Your own images, in torchvision's ImageFolder layout: PATH/<class>/<image files>.

If PATH has both `train/` and `test/` subfolders, each is such a tree (the test classes must be
among the train classes); otherwise a stratified 20% test set is split off with a fixed seed that
does not depend on the val-split seed, so every run reports on the same test images.

Images are read with Pillow and held as uint8. If every image is grayscale (Pillow modes 1, L,
LA, I, F) the dataset has one channel, otherwise all are converted to RGB (alpha dropped). Each
is resized so its shorter side is `image_size`, then center-cropped to image_size x image_size.
8-bit images are assumed (16-bit grayscale is clipped by Pillow's conversion).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DsearchError
from .dataset import Splits, stratified_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
TEST_FRACTION = 0.2
TEST_SPLIT_SEED = 20_000  # fixed on purpose: independent of the val seed


def load_imagefolder(path: str | Path, image_size: int = 32) -> Splits:
    """Train/test splits from an image-folder tree (see the module docstring)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DsearchError(f"image folder {root} {what}; expected {root}/<class>/<image files>")
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes, train_files, train_y = _scan(root / "train")
        _, test_files, test_y = _scan(root / "test", known_classes=classes)
    else:
        classes, files, labels = _scan(root)
        keep, test = stratified_split(torch.tensor(labels), TEST_FRACTION, TEST_SPLIT_SEED)
        train_files, train_y = [files[i] for i in keep], [labels[i] for i in keep]
        test_files, test_y = [files[i] for i in test], [labels[i] for i in test]
    gray = all(_mode(f) in GRAYSCALE_MODES for f in train_files + test_files)
    return Splits(
        train_x=_read_images(train_files, image_size, gray), train_y=torch.tensor(train_y, dtype=torch.int64),
        test_x=_read_images(test_files, image_size, gray), test_y=torch.tensor(test_y, dtype=torch.int64),
        classes=classes,
    )


def _scan(root: Path, known_classes: tuple[str, ...] | None = None) -> tuple[tuple[str, ...], list[Path], list[int]]:
    """Class names (sorted folder names, or `known_classes`), image paths and their labels."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DsearchError(f"no class folders in {root}; expected {root}/<class>/<image files>")
    classes = known_classes or tuple(p.name for p in folders)
    unknown = [p.name for p in folders if p.name not in classes]
    if unknown:
        raise DsearchError(f"class folder(s) in {root} that the train split lacks: {', '.join(unknown)}")
    files, labels = [], []
    empty = []
    for folder in folders:
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not found:
            empty.append(folder.name)
        files += found
        labels += [classes.index(folder.name)] * len(found)
    if not files:
        raise DsearchError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of {root}")
    if empty and known_classes is None:  # a train class without images could never be learned
        raise DsearchError(f"class folder(s) without images in {root}: {', '.join(empty)}")
    return classes, files, labels


def _mode(path: Path) -> str:
    """The Pillow mode of an image, reading only its header."""
    try:
        with Image.open(path) as im:
            return im.mode
    except (UnidentifiedImageError, OSError) as e:
        raise DsearchError(f"cannot read image {path}: {e}") from None


def _read_images(files: list[Path], size: int, gray: bool) -> torch.Tensor:
    """N x C x size x size uint8 tensor of the images, shorter side resized then center-cropped."""
    channels = 1 if gray else 3
    out = np.empty((len(files), size, size, channels), dtype=np.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as file:
                im = ImageOps.fit(file.convert("L" if gray else "RGB"), (size, size), method=Image.Resampling.BILINEAR)
                out[i] = np.asarray(im).reshape(size, size, channels)
        except (UnidentifiedImageError, OSError) as e:
            raise DsearchError(f"cannot read image {path}: {e}") from None
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
