"""Datasets that torchvision knows how to download: MNIST, Fashion-MNIST, CIFAR-10/100, SVHN.

Files live under `data_dir` in torchvision's own layout (so an existing torchvision root can be
reused). Files already there are used without touching the network; otherwise, when allowed,
torchvision downloads them, under a socket timeout so an unreachable network fails fast, and
whatever a failed attempt wrote is removed so the next attempt starts clean. Full Fashion-MNIST
is also read from Debian's dataset-fashion-mnist package when that is installed.
"""
from __future__ import annotations

import importlib.util
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DsearchError
from .dataset import Splits
from .embedded import EMBEDDED_NAME
from .idx import read_idx

DEFAULT_DATA_DIR = Path("~/.cache/dsearch/data")
# Per socket operation (connect, each read), not for the whole download.
DOWNLOAD_TIMEOUT_S = 10.0
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclass(frozen=True)
class TorchvisionSource:
    cls_name: str       # class in torchvision.datasets
    layout: str         # axes of the class's `.data`: "NHW", "NHWC" or "NCHW"
    folder: str | None  # the subfolder of data_dir it writes into, if any
    files: str          # what must be under data_dir, for the error message


TORCHVISION_SOURCES = {
    "mnist": TorchvisionSource("MNIST", "NHW", "MNIST", "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"),
    "fashion-mnist": TorchvisionSource(
        "FashionMNIST", "NHW", "FashionMNIST", "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"),
    "cifar10": TorchvisionSource("CIFAR10", "NHWC", "cifar-10-batches-py", "cifar-10-batches-py/"),
    "cifar100": TorchvisionSource("CIFAR100", "NHWC", "cifar-100-python", "cifar-100-python/"),
    "svhn": TorchvisionSource("SVHN", "NCHW", None, "train_32x32.mat and test_32x32.mat"),
}


def load_torchvision(name: str, data_dir: str | Path | None, download: bool) -> Splits:
    """Train and test splits of a torchvision dataset, downloading it when allowed and needed."""
    source = TORCHVISION_SOURCES[name]
    root = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).expanduser()
    if name == "svhn" and importlib.util.find_spec("scipy") is None:
        raise DsearchError("dataset 'svhn' needs scipy to read its .mat files: pip install scipy")
    try:
        return _read(name, source, root, download=False)
    except RuntimeError:  # torchvision's "Dataset not found or corrupted"
        pass
    except (OSError, ValueError, EOFError) as e:  # files there, but unreadable
        raise DsearchError(f"dataset '{name}' under {root} could not be read ({_last_line(e)}); "
                           f"delete its files there to download them again") from e
    if name == "fashion-mnist" and _debian_fashion_mnist_present():
        return _read_debian_fashion_mnist()
    hint = f"place its files under {root} ({source.files}) or use the default '{EMBEDDED_NAME}'"
    if not download:
        raise DsearchError(f"dataset '{name}' not found under {root} and downloading is off; {hint}")
    try:
        with _network_timeout(DOWNLOAD_TIMEOUT_S), _remove_new_files_on_failure(root, source.folder):
            return _read(name, source, root, download=True)
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError, ... for a failed fetch
        raise DsearchError(f"could not download dataset '{name}' ({_last_line(e)}); {hint}") from e


def _read(name: str, source: TorchvisionSource, root: Path, download: bool) -> Splits:
    import torchvision.datasets  # here: it is slow to import and only these sources need it

    cls = getattr(torchvision.datasets, source.cls_name)
    if name == "svhn":
        train, test = (cls(str(root), split=s, download=download) for s in ("train", "test"))
    else:
        train, test = (cls(str(root), train=t, download=download) for t in (True, False))
    train_x, train_y = _arrays(train, source.layout)
    test_x, test_y = _arrays(test, source.layout)
    classes = tuple(getattr(train, "classes", None) or (str(i) for i in range(int(train_y.max()) + 1)))
    return Splits(train_x, train_y, test_x, test_y, classes)


def _arrays(ds: Any, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 N x C x H x W images and int64 labels out of a torchvision dataset object."""
    # Any: torchvision declares neither .data nor .targets/.labels on its dataset base class
    x = torch.as_tensor(np.asarray(ds.data))
    if layout == "NHW":
        x = x.unsqueeze(1)
    elif layout == "NHWC":
        x = x.permute(0, 3, 1, 2)
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = ds.labels  # SVHN
    return x.contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.int64)


def _debian_fashion_mnist_present() -> bool:
    return all((DEBIAN_FASHION_MNIST / f"{p}-{k}-ubyte.gz").is_file()
               for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1"))


def _read_debian_fashion_mnist() -> Splits:
    """Full Fashion-MNIST (60k/10k) from Debian's dataset-fashion-mnist package."""
    def split(prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = read_idx(DEBIAN_FASHION_MNIST / f"{prefix}-images-idx3-ubyte.gz")
        y = read_idx(DEBIAN_FASHION_MNIST / f"{prefix}-labels-idx1-ubyte.gz")
        return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y.astype(np.int64))

    (train_x, train_y), (test_x, test_y) = split("train"), split("t10k")
    return Splits(train_x, train_y, test_x, test_y, FASHION_MNIST_CLASSES)


@contextmanager
def _network_timeout(seconds: float) -> Iterator[None]:
    """torchvision's urlopen calls pass no timeout, so they inherit the socket default (none)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


@contextmanager
def _remove_new_files_on_failure(root: Path, folder: str | None) -> Iterator[None]:
    """On any failure, delete what appeared in `root` (top level) and in `root/folder` meanwhile.

    Only those two places are scanned: torchvision writes nothing else, and `root` may be a large
    shared data folder. Anything that existed before is left alone.
    """
    def snapshot() -> set[Path]:
        found = set(root.iterdir()) if root.is_dir() else set()
        if folder and (root / folder).is_dir():
            found |= set((root / folder).rglob("*"))
        return found

    root_existed = root.exists()
    before = snapshot()
    try:
        yield
    except BaseException:
        for path in sorted(snapshot() - before, key=lambda p: len(p.parts)):  # parents first
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists() or path.is_symlink():
                path.unlink(missing_ok=True)
        if not root_existed:
            shutil.rmtree(root, ignore_errors=True)
        raise


def _last_line(e: BaseException) -> str:
    """The most specific line of an exception message (torchvision's are multi-line)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[-1] if lines else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."
