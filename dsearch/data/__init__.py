"""Data for proxy training, held in memory as uint8 tensors (no DataLoader).

`load_dataset(name)` returns a `Dataset` with train / val / test splits. The default,
"fashion-mnist-embedded", ships inside the package and needs no network; torchvision datasets
and image folders are the other sources (see `DATASETS`). Validation data come out of the
training split only; architectures are chosen on validation accuracy, and the test split is
only reported.
"""
from .dataset import Dataset, data_facts, small_split_note
from .embedded import EMBEDDED_NAME
from .load import DATASETS, load_dataset

__all__ = ["DATASETS", "Dataset", "EMBEDDED_NAME", "data_facts", "load_dataset", "small_split_note"]
