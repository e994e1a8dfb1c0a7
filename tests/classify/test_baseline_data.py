"""The baseline's loaders on tiny files in the real CIFAR-10 pickle and IDX formats."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from detcrop.classify.baseline.data import (
    CIFAR10_CLASS_NAMES,
    FASHION_MNIST_CLASS_NAMES,
    ArrayDataset,
    load_class_folders,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_idx_folder,
)
from detcrop.data.readers import DatasetError, read_cifar_batch, read_idx
from imagegen import make_class_folders, save_image

# --------------------------------------------------------------------------- CIFAR-10 format


def _cifar_images(count: int, offset: int) -> np.ndarray:
    """(count, 32, 32, 3) uint8 with red = image number, green = row, blue = column."""
    images = np.zeros((count, 32, 32, 3), np.uint8)
    for index in range(count):
        images[index, ..., 0] = offset + index
    images[..., 1] = np.arange(32)[None, :, None]
    images[..., 2] = np.arange(32)[None, None, :]
    return images


def _write_cifar_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    # Like the official files: a Python-2 pickle (bytes keys), data channel-major rows of 3072.
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    batch = {b"batch_label": b"testing batch", b"labels": labels, b"data": data,
             b"filenames": [f"img_{index}.png".encode() for index in range(len(images))]}
    path.write_bytes(pickle.dumps(batch, protocol=2))


def make_cifar_folder(root: Path, per_batch: int = 3) -> Path:
    """A cifar-10-batches-py folder with 5 train batches of `per_batch` and a test batch of 2."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for number in range(1, 6):
        offset = (number - 1) * per_batch
        labels = [(offset + index) % 10 for index in range(per_batch)]
        _write_cifar_batch(folder / f"data_batch_{number}", _cifar_images(per_batch, offset), labels)
    _write_cifar_batch(folder / "test_batch", _cifar_images(2, 200), [9, 0])
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [name.encode() for name in CIFAR10_CLASS_NAMES],
            b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def test_cifar_batch_layout_is_channel_major_rows(tmp_path):
    folder = make_cifar_folder(tmp_path)
    images, labels = read_cifar_batch(folder / "data_batch_2")
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, _cifar_images(3, 3))
    assert labels.tolist() == [3, 4, 5]


def test_cifar_folder_loads_all_batches_in_order(tmp_path):
    folder = make_cifar_folder(tmp_path)
    data = load_cifar10(folder, allow_download=False)
    assert data.x_train.shape == (15, 32, 32, 3) and data.x_test.shape == (2, 32, 32, 3)
    assert data.x_train[:, 0, 0, 0].tolist() == list(range(15))
    assert data.y_test.tolist() == [9, 0]
    assert data.class_names == CIFAR10_CLASS_NAMES
    assert data.image_shape == (32, 32, 3)


@pytest.mark.parametrize("layout", ["batches_folder", "parent_folder", "keras3_cache", "old_keras_cache"])
def test_cifar_is_found_where_users_keep_it(tmp_path, monkeypatch, layout):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    if layout == "batches_folder":
        data_dir = make_cifar_folder(tmp_path)
    elif layout == "parent_folder":
        make_cifar_folder(tmp_path)
        data_dir = tmp_path
    elif layout == "keras3_cache":
        make_cifar_folder(tmp_path / "keras_home" / "datasets" / "cifar-10-batches-py-target")
        data_dir = None
    else:
        make_cifar_folder(tmp_path / "keras_home" / "datasets")
        data_dir = None
    data = load_dataset("cifar10", data_dir, allow_download=False)
    assert len(data.x_train) == 15


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    "payload, message",
    [
        ({b"data": np.zeros((2, 3072), np.uint8)}, "expected keys 'data' and 'labels'"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "shape (N, 3072)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "expected 2 labels"),
        ([1, 2, 3], "expected a pickled dict"),
        ({b"data": _Evil(), b"labels": [0]}, "refusing to load"),
    ],
)
def test_bad_cifar_batches_are_refused_with_the_path(tmp_path, payload, message):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DatasetError, match="data_batch_1") as error:
        read_cifar_batch(path)
    assert message in str(error.value)


def test_missing_cifar_without_download_names_the_searched_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="cifar-10-batches-py"):
        load_cifar10(allow_download=False)


# --------------------------------------------------------------------------- IDX format


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_idx_folder(root: Path, train: int = 20, test: int = 10, gz: tuple[bool, ...] = (True,) * 4) -> Path:
    """The four Fashion-MNIST IDX files with class-dependent brightness, each gzipped or plain."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in (("train", train), ("t10k", test)):
        labels = np.arange(count) % 10
        images = (labels[:, None, None] * 25 + rng.integers(0, 5, (count, 28, 28))).astype(np.uint8)
        arrays[f"{split}-images-idx3-ubyte"] = images
        arrays[f"{split}-labels-idx1-ubyte"] = labels.astype(np.uint8)
    for (name, array), compress in zip(sorted(arrays.items()), gz):
        payload = _idx_bytes(array)
        if compress:
            (root / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (root / name).write_bytes(payload)
    return root


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trips_plain_and_gzip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    payload = _idx_bytes(array)
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(gzip.compress(payload) if compress else payload)
    result = read_idx(path)
    np.testing.assert_array_equal(result, array)
    assert result.dtype == np.uint8


@pytest.mark.parametrize("gz", [(True,) * 4, (False,) * 4, (True, False, True, False)])
def test_idx_folder_loads_gz_plain_and_mixed(tmp_path, gz):
    folder = make_idx_folder(tmp_path / "fm", gz=gz)
    data = load_idx_folder(folder)
    assert data.x_train.shape == (20, 28, 28, 1) and data.x_test.shape == (10, 28, 28, 1)
    assert data.y_train.tolist() == [index % 10 for index in range(20)]
    assert data.x_train[3, 0, 0, 0] >= 75  # label 3 -> brightness 75..79
    assert data.class_names == FASHION_MNIST_CLASS_NAMES


def test_fashion_mnist_from_data_dir(tmp_path):
    folder = make_idx_folder(tmp_path / "fm")
    data = load_fashion_mnist(folder)
    assert data.source == str(folder) and len(data.x_test) == 10


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "expected an IDX header"),
        (b"\x01\x02\x08\x01\x00\x00\x00\x02ab", "expected an IDX header"),
        (struct.pack(">BBBBI", 0, 0, 0x08, 1, 5) + b"abc", "file has 11 bytes"),
        (struct.pack(">BBBBII", 0, 0, 0x08, 2, 2, 2) + b"abcdef", "shape (2, 2)"),
    ],
)
def test_bad_idx_files_are_refused_with_the_path(tmp_path, payload, message):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(payload)
    with pytest.raises(DatasetError, match="broken-idx1-ubyte") as error:
        read_idx(path)
    assert message in str(error.value)


def test_idx_labels_that_do_not_match_images_are_refused(tmp_path):
    folder = make_idx_folder(tmp_path / "fm")
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.zeros(3, np.uint8))))
    with pytest.raises(DatasetError, match="expected 10 labels"):
        load_idx_folder(folder)


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nothing")


def test_unknown_dataset_name_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="cifar10, fashion-mnist or a class-folder path"):
        load_dataset(str(tmp_path / "fashion_mnist"))


# --------------------------------------------------------------------------- class folders and subsets


def test_class_folders_are_resized_split_and_bad_files_reported(tmp_path):
    root = make_class_folders(tmp_path / "shoes", {"boot": 10, "sandal": 10}, size=40)
    (root / "boot" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "sandal" / "notes.txt").write_text("hello")
    data = load_class_folders(root, image_size=24, test_ratio=0.2, seed=0, progress=False)
    assert data.class_names == ("boot", "sandal")
    assert data.x_train.shape[1:] == (24, 24, 3)
    assert len(data.x_train) + len(data.x_test) == 20
    assert sorted(np.bincount(data.y_test).tolist()) == [2, 2]  # stratified
    assert len(data.test_paths) == len(data.x_test)
    skipped = {Path(item["path"]).name: item["kind"] for item in data.skipped}
    assert skipped == {"broken.jpg": "unreadable", "notes.txt": "not-an-image"}


def test_identical_images_stay_on_one_side_of_the_split(tmp_path):
    root = make_class_folders(tmp_path / "shoes", {"boot": 8, "sandal": 8}, size=20)
    duplicate = np.full((20, 20, 3), 7, np.uint8)
    for name in ("copy_a.png", "copy_b.png", "copy_c.png"):
        save_image(root / "boot" / name, duplicate)
    data = load_class_folders(root, image_size=20, test_ratio=0.25, seed=1, progress=False)
    in_test = sum(Path(path).name.startswith("copy_") for path in data.test_paths)
    assert in_test in (0, 3)


def test_subsample_is_seeded_and_capped():
    rng = np.random.default_rng(0)
    data = ArrayDataset("toy", ("a", "b"), rng.integers(0, 255, (50, 4, 4, 1), dtype=np.uint8), np.arange(50) % 2,
                        rng.integers(0, 255, (8, 4, 4, 1), dtype=np.uint8), np.arange(8) % 2, source="memory")
    first, second = data.subsample(10, seed=3), data.subsample(10, seed=3)
    assert len(first.x_train) == 10 and len(first.x_test) == 8
    np.testing.assert_array_equal(first.x_train, second.x_train)
    assert data.subsample(None) is data


@pytest.mark.parametrize(
    "x_train, y_train, message",
    [
        (np.zeros((2, 4, 4, 2), np.uint8), np.zeros(2, np.int64), "uint8 \\(N, H, W, 1 or 3\\)"),
        (np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, np.int64), "uint8"),
        (np.zeros((2, 4, 4, 1), np.uint8), np.zeros(3, np.int64), "shape \\(2,\\)"),
        (np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 5]), "labels must be in 0..1"),
    ],
)
def test_array_dataset_refuses_bad_arrays(x_train, y_train, message):
    with pytest.raises(DatasetError, match=message):
        ArrayDataset("toy", ("a", "b"), x_train, y_train, np.zeros((1, 4, 4, 1), np.uint8), np.zeros(1, np.int64), "m")
