"""The data layer: the embedded Fashion-MNIST subset, splits, statistics, image folders, errors."""
import socket
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dsearch.data import DATASETS, Dataset, load_dataset, torchvision_sets
from dsearch.errors import DsearchError


@pytest.fixture(scope="module")
def embedded() -> Dataset:
    return load_dataset()


def image_keys(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x}


# --- the embedded default ---------------------------------------------------------------------

def test_embedded_shapes_and_counts(embedded):
    d = embedded
    assert d.name == "fashion-mnist-embedded" and d.name in DATASETS
    assert (d.num_classes, d.in_channels, d.image_size) == (10, 1, (28, 28))
    assert d.train_x.shape == (9000, 1, 28, 28) and d.val_x.shape == (1000, 1, 28, 28)
    assert d.test_x.shape == (2000, 1, 28, 28)
    for x, y in ((d.train_x, d.train_y), (d.val_x, d.val_y), (d.test_x, d.test_y)):
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and len(x) == len(y)
        assert x.is_contiguous()
    assert d.classes[0] == "T-shirt/top" and d.classes[9] == "Ankle boot" and len(d.classes) == 10
    assert "9000 train / 1000 val / 2000 test" in d.summary()


def test_embedded_is_class_balanced(embedded):
    d = embedded
    assert torch.bincount(d.train_y, minlength=10).tolist() == [900] * 10
    assert torch.bincount(d.val_y, minlength=10).tolist() == [100] * 10
    assert torch.bincount(d.test_y, minlength=10).tolist() == [200] * 10


def test_embedded_images_are_real(embedded):
    d = embedded
    x = d.train_x.float().flatten(1)
    assert int(d.train_x.min()) == 0 and int(d.train_x.max()) == 255
    assert len(torch.unique(d.train_x)) == 256
    centroids = torch.stack([x[d.train_y == c].mean(0) for c in range(10)])
    gaps = torch.cdist(centroids, centroids) + torch.eye(10) * 1e9
    assert float(gaps.min()) > 100.0  # every class looks different on average
    # A nearest-class-mean classifier is far above chance (0.1) on real Fashion-MNIST (~0.68).
    pred = torch.cdist(d.test_x.float().flatten(1), centroids).argmin(1)
    assert float((pred == d.test_y).float().mean()) > 0.5


def test_embedded_images_are_unique_across_splits(embedded):
    d = embedded
    train, val, test = image_keys(d.train_x), image_keys(d.val_x), image_keys(d.test_x)
    assert len(train) == 9000 and len(val) == 1000 and len(test) == 2000
    assert not (train & val) and not (train & test) and not (val & test)


def test_split_is_deterministic_per_seed(embedded):
    same = load_dataset(seed=0)
    assert torch.equal(same.val_x, embedded.val_x) and torch.equal(same.train_y, embedded.train_y)
    other = load_dataset(seed=1)
    assert not torch.equal(other.val_x, embedded.val_x)
    # A different seed re-draws val from the same pool; the test split never changes.
    assert image_keys(other.train_x) | image_keys(other.val_x) == image_keys(embedded.train_x) | image_keys(
        embedded.val_x)
    assert torch.equal(other.test_x, embedded.test_x)


def test_val_fraction(embedded):
    d = load_dataset(val_fraction=0.25)
    assert (len(d.train_y), len(d.val_y)) == (7500, 2500)
    none = load_dataset(val_fraction=0.0)
    assert none.val_x.shape == (0, 1, 28, 28) and len(none.train_y) == 10000
    for bad in (-0.1, 1.0):
        with pytest.raises(DsearchError, match="val_fraction"):
            load_dataset(val_fraction=bad)


def test_mean_std_match_numpy(embedded):
    x = embedded.train_x.numpy().astype(np.float64) / 255.0
    assert embedded.mean == pytest.approx((x.mean(),), abs=1e-12)
    assert embedded.std == pytest.approx((x.std(),), abs=1e-12)


def test_embedded_resize_and_speed():
    d = load_dataset(image_size=32)
    assert d.train_x.shape == (9000, 1, 32, 32) and d.test_x.shape == (2000, 1, 32, 32)
    assert d.image_size == (32, 32) and int(d.train_x.max()) > 200
    start = time.perf_counter()
    load_dataset()
    assert time.perf_counter() - start < 1.0


# --- image folders ----------------------------------------------------------------------------

def write_images(folder: Path, value: int, count: int, mode: str = "L", size: tuple[int, int] = (20, 12)):
    """`count` images whose pixels all equal `value` (so each label can be checked by content)."""
    folder.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, value, value)
    for i in range(count):
        Image.new(mode, size, color).save(folder / f"img{i}.png")


def test_imagefolder_single_tree(tmp_path):
    for c, name in enumerate(["cat", "dog", "emu"]):
        write_images(tmp_path / name, value=50 * (c + 1), count=5)
    d = load_dataset(f"imagefolder:{tmp_path}")
    assert d.classes == ("cat", "dog", "emu") and d.num_classes == 3
    assert (d.in_channels, d.image_size) == (1, (32, 32))  # all grayscale -> one channel; default 32
    assert torch.bincount(d.test_y).tolist() == [1, 1, 1]  # a stratified 20% per class
    assert len(d.train_y) + len(d.val_y) == 12 and len(d.val_y) == 3
    for x, y in ((d.train_x, d.train_y), (d.val_x, d.val_y), (d.test_x, d.test_y)):
        assert torch.equal(x.flatten(1).float().mean(1), 50.0 * (y + 1).float())  # labels match content
    # The test split does not move with the val seed.
    assert torch.equal(load_dataset(f"imagefolder:{tmp_path}", seed=5).test_x, d.test_x)


def test_imagefolder_train_test_layout_and_rgb(tmp_path):
    write_images(tmp_path / "train" / "a", 10, 4, mode="RGB", size=(40, 20))
    write_images(tmp_path / "train" / "b", 200, 4)
    write_images(tmp_path / "test" / "a", 10, 2)
    write_images(tmp_path / "test" / "b", 200, 2)
    d = load_dataset(f"imagefolder:{tmp_path}", image_size=16, val_fraction=0.25)
    assert d.classes == ("a", "b") and d.in_channels == 3 and d.image_size == (16, 16)
    assert d.test_x.shape == (4, 3, 16, 16) and torch.bincount(d.test_y).tolist() == [2, 2]
    assert (len(d.train_y), len(d.val_y)) == (6, 2)
    assert torch.equal(d.test_x[d.test_y == 1], torch.full((2, 3, 16, 16), 200, dtype=torch.uint8))


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DsearchError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}")
    with pytest.raises(DsearchError, match="no class folders"):
        load_dataset(f"imagefolder:{tmp_path}")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    with pytest.raises(DsearchError, match="no images"):
        load_dataset(f"imagefolder:{tmp_path}")
    write_images(tmp_path / "b", 1, 2)
    with pytest.raises(DsearchError, match="without images.*: a"):
        load_dataset(f"imagefolder:{tmp_path}")
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DsearchError, match="cannot read image .*broken.png"):
        load_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(DsearchError, match="names no folder"):
        load_dataset("imagefolder:")


def test_imagefolder_test_class_unknown_to_train(tmp_path):
    write_images(tmp_path / "train" / "a", 1, 2)
    write_images(tmp_path / "test" / "zebra", 1, 2)
    with pytest.raises(DsearchError, match="lacks: zebra"):
        load_dataset(f"imagefolder:{tmp_path}")


# --- names and torchvision sources ------------------------------------------------------------

def test_unknown_name_lists_valid_names():
    with pytest.raises(DsearchError) as err:
        load_dataset("imagenet-1k")
    message = str(err.value)
    assert "imagenet-1k" in message and all(name in message for name in DATASETS)


def test_torchvision_missing_without_download(tmp_path):
    with pytest.raises(DsearchError) as err:
        load_dataset("cifar10", data_dir=tmp_path / "data", download=False)
    message = str(err.value)
    assert "\n" not in message and "'cifar10'" in message and str(tmp_path / "data") in message
    assert "fashion-mnist-embedded" in message
    assert not (tmp_path / "data").exists()


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_files_in_place_are_used(tmp_path):
    """MNIST in torchvision's layout (tiny, synthetic) loads with download off."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    d = load_dataset("MNIST", data_dir=tmp_path, download=False)
    assert d.name == "mnist" and (d.in_channels, d.num_classes, d.image_size) == (1, 10, (28, 28))
    assert (len(d.train_y), len(d.val_y), len(d.test_y)) == (30, 10, 20)


def test_failed_download_leaves_nothing_behind(tmp_path, monkeypatch):
    """A download that dies half-way: one-line error, its partial files gone, other files kept."""
    import torchvision.datasets.utils as tv_utils

    timeouts = []

    def half_download(url, filename, *args, **kwargs):
        timeouts.append(socket.getdefaulttimeout())
        Path(filename).write_bytes(b"\x1f\x8b partial")
        raise urllib.error.URLError("connection reset")

    monkeypatch.setattr(tv_utils, "_get_redirect_url", lambda url, max_hops=3: url)
    monkeypatch.setattr(tv_utils, "_urlretrieve", half_download)
    data = tmp_path / "data"
    data.mkdir()
    (data / "mine.txt").write_text("keep me")
    with pytest.raises(DsearchError) as err:
        load_dataset("mnist", data_dir=data)
    message = str(err.value)
    assert "\n" not in message and "could not download dataset 'mnist'" in message and "connection reset" in message
    assert sorted(p.name for p in data.iterdir()) == ["mine.txt"]
    assert timeouts and all(t == torchvision_sets.DOWNLOAD_TIMEOUT_S for t in timeouts)
    assert socket.getdefaulttimeout() is None  # restored


@pytest.mark.skipif(not torchvision_sets._debian_fashion_mnist_present(), reason="dataset-fashion-mnist not installed")
def test_full_fashion_mnist_from_debian_package(tmp_path):
    d = load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    assert (len(d.train_y), len(d.val_y), len(d.test_y)) == (54000, 6000, 10000)
    assert d.classes == load_dataset().classes


def test_splits_too_small_to_measure_are_warned_with_their_counts(tmp_path, embedded):
    from dsearch.data import small_split_note

    for c, name in enumerate(["a", "b"]):
        write_images(tmp_path / name, value=80 * (c + 1), count=3)
    tiny = load_dataset(f"imagefolder:{tmp_path}")
    note = small_split_note(tiny)
    assert note is not None
    assert f"validation {len(tiny.val_y)} image(s)" in note and f"test {len(tiny.test_y)} image(s)" in note
    assert small_split_note(embedded) is None  # 1,000 validation and 2,000 test images
