"""The embedded default dataset: a class-balanced Fashion-MNIST subset shipped in the package.

10,000 train images (1,000 per class) and 2,000 test images (200 per class), 28x28 grayscale,
built by scripts/make_embedded_dataset.py from Debian's dataset-fashion-mnist; see NOTICE.
"""
from __future__ import annotations

from importlib import resources

import numpy as np
import torch

from ..errors import DsearchError
from .dataset import Splits

EMBEDDED_NAME = "fashion-mnist-embedded"
EMBEDDED_FILE = "fashion_mnist_subset.npz"


def load_embedded() -> Splits:
    """Read the npz through importlib.resources, so it also works from an installed wheel."""
    resource = resources.files(__package__).joinpath(EMBEDDED_FILE)
    try:
        with resource.open("rb") as f, np.load(f, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("train_x", "train_y", "test_x", "test_y", "classes")}
    except FileNotFoundError:
        raise DsearchError(f"the embedded dataset file {EMBEDDED_FILE} is missing from dsearch/data; "
                           f"rebuild it with scripts/make_embedded_dataset.py or reinstall dsearch") from None
    # Stored as N x 28 x 28; add the channel axis. Labels widen to int64 for cross-entropy.
    return Splits(
        train_x=torch.from_numpy(arrays["train_x"]).unsqueeze(1),
        train_y=torch.from_numpy(arrays["train_y"].astype(np.int64)),
        test_x=torch.from_numpy(arrays["test_x"]).unsqueeze(1),
        test_y=torch.from_numpy(arrays["test_y"].astype(np.int64)),
        classes=tuple(str(c) for c in arrays["classes"]),
    )
