#!/usr/bin/env python3
"""Build dsearch's embedded dataset: a class-balanced Fashion-MNIST subset.

Reads the IDX files of Debian's ``dataset-fashion-mnist`` package (``apt-get install
dataset-fashion-mnist``; files under /usr/share/datasets/fashion-mnist) and draws, with a fixed
seed, 1,000 training images per class from the train split and 200 test images per class from
the test split. Writes ``dsearch/data/fashion_mnist_subset.npz`` (np.savez_compressed) with

    train_x uint8 (10000, 28, 28)   train_y uint8 (10000,)   train_index int32 (10000,)
    test_x  uint8 (2000, 28, 28)    test_y  uint8 (2000,)    test_index  int32 (2000,)
    classes str (10,)

where ``*_index`` are the positions of the images in the original splits (provenance).
Same source files and seed give the same arrays (the zip container's timestamps differ).

    python scripts/make_embedded_dataset.py [--source DIR] [--out FILE] [--seed 0]
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from dsearch.data.idx import read_idx  # noqa: E402

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200


def load_split(source: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x 28 x 28 uint8) and labels (N uint8) of one split ("train" or "t10k")."""
    x = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
    y = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
    assert x.dtype == np.uint8 and x.shape[1:] == (28, 28) and y.shape == (len(x),), (x.shape, y.shape)
    return x, y


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """`per_class` random positions of each class, sorted (so the subset keeps the source order)."""
    picked = []
    for c in range(len(CLASSES)):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise SystemExit(f"class {c} has only {len(members)} images, need {per_class}")
        picked.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int32)


def digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the arrays' names, shapes and bytes: a check that a rebuild is identical."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEBIAN_DIR, help="folder with the *-idx?-ubyte.gz files")
    parser.add_argument("--out", type=Path, default=REPO / "dsearch" / "data" / "fashion_mnist_subset.npz")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    train_x, train_y = load_split(args.source, "train")
    test_x, test_y = load_split(args.source, "t10k")
    train_idx = balanced_indices(train_y, TRAIN_PER_CLASS, rng)
    test_idx = balanced_indices(test_y, TEST_PER_CLASS, rng)
    arrays = {
        "train_x": train_x[train_idx], "train_y": train_y[train_idx], "train_index": train_idx,
        "test_x": test_x[test_idx], "test_y": test_y[test_idx], "test_index": test_idx,
        "classes": np.array(CLASSES),
    }
    # No image may appear twice, nor in both splits (true of Fashion-MNIST; checked, not assumed).
    seen = {row.tobytes() for row in arrays["train_x"]} | {row.tobytes() for row in arrays["test_x"]}
    assert len(seen) == len(train_idx) + len(test_idx), "duplicate images in the subset"

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size / 2**20:.2f} MiB): {len(train_idx)} train, {len(test_idx)} test; "
          f"content sha256 {digest(arrays)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
