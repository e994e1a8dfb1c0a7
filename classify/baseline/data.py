"""Array datasets for the from-scratch baseline: CIFAR-10, Fashion-MNIST and class folders.

Every loader returns an `ArrayDataset` of uint8 images (N, H, W, C) with integer labels and
sorted-or-official class names. Local copies are found without the network:

- CIFAR-10: the official python-pickle folder ``cifar-10-batches-py`` (``data_batch_1..5``,
  ``test_batch``, ``batches.meta``), given directly or found in the Keras cache
  (``~/.keras/datasets/cifar-10-batches-py-target/cifar-10-batches-py`` for Keras 3,
  ``~/.keras/datasets/cifar-10-batches-py`` for older Keras). The pickles are read with a
  restricted unpickler of `detcrop.data.readers` that rebuilds numpy arrays and nothing else.
- Fashion-MNIST: the four IDX files (``train-images-idx3-ubyte`` ... ``t10k-labels-idx1-ubyte``,
  plain or ``.gz``) in Debian's ``/usr/share/datasets/fashion-mnist`` (package
  ``dataset-fashion-mnist``) or the Keras cache ``~/.keras/datasets/fashion-mnist``.
- With none of those, `load_cifar10` / `load_fashion_mnist` fall back to ``keras.datasets``,
  which downloads (users with internet); offline that fails with an error naming the folders
  that were searched.
- Class folders (``ROOT/<class>/<image>``): every image is decoded, made RGB and resized to
  the model's input; unreadable files are skipped and reported in `ArrayDataset.skipped`;
  train/test come from the grouped stratified split of `data.splits`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from detcrop.data.folders import scan_class_folders
from detcrop.data.images import ImageError, load_image
from detcrop.data.readers import DatasetError, read_cifar_batch, read_idx, read_pickle
from detcrop.data.splits import source_hashes_from_manifest, split_class_folders

logger = logging.getLogger(__name__)

#: CIFAR-10 class names in label order (also in ``batches.meta``).
CIFAR10_CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
#: Fashion-MNIST class names in label order (the IDX files carry none).
FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
#: Folder the Debian package ``dataset-fashion-mnist`` installs.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: IDX file stems of Fashion-MNIST (and MNIST), each plain or with ``.gz``.
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
#: Names accepted by `load_dataset` besides a folder path.
BUILTIN_DATASETS = ("cifar10", "fashion-mnist")


@dataclass(frozen=True)
class ArrayDataset:
    """Images and labels in memory, split into train and test.

    `x_*` are uint8 (N, H, W, C) with C = 1 (grayscale) or 3 (RGB); `y_*` are int64 (N,).
    """

    name: str  # "cifar10", "fashion-mnist" or the class-folder root
    class_names: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str  # where the data was read from (folder, or "keras.datasets download")
    skipped: tuple[dict, ...] = field(default=())  # {path, kind, reason} per unreadable file
    test_paths: tuple[str, ...] = field(default=())  # class folders only: the test images

    def __post_init__(self) -> None:
        for prefix in ("train", "test"):
            images, labels = getattr(self, f"x_{prefix}"), getattr(self, f"y_{prefix}")
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
                raise DatasetError(
                    f"{self.name}: x_{prefix} must be uint8 (N, H, W, 1 or 3), got {images.dtype} {images.shape}"
                )
            if labels.shape != (len(images),):
                raise DatasetError(
                    f"{self.name}: y_{prefix} must have shape ({len(images)},), got {labels.shape}"
                )
            if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
                raise DatasetError(
                    f"{self.name}: {prefix} labels must be in 0..{len(self.class_names) - 1}, "
                    f"got {labels.min()}..{labels.max()}"
                )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of the stored images."""
        return tuple(int(size) for size in self.x_train.shape[1:])  # type: ignore[return-value]

    def subsample(self, limit: int | None, seed: int = 0) -> "ArrayDataset":
        """At most `limit` train and `limit` test samples, drawn with `seed` (None: all)."""
        if limit is None or limit <= 0:
            return self
        rng = np.random.default_rng(seed)

        def pick(count: int) -> np.ndarray:
            return np.sort(rng.permutation(count)[:limit])

        train, test = pick(len(self.x_train)), pick(len(self.x_test))
        return ArrayDataset(
            name=self.name, class_names=self.class_names,
            x_train=self.x_train[train], y_train=self.y_train[train],
            x_test=self.x_test[test], y_test=self.y_test[test],
            source=self.source, skipped=self.skipped,
            test_paths=tuple(self.test_paths[index] for index in test) if self.test_paths else (),
        )


def _keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))


# --------------------------------------------------------------------------- CIFAR-10


def cifar10_candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for ``cifar-10-batches-py``, in order (only `data_dir` when given)."""
    if data_dir is not None:
        return [Path(data_dir), Path(data_dir) / "cifar-10-batches-py"]
    cache = _keras_home() / "datasets"
    return [cache / "cifar-10-batches-py-target" / "cifar-10-batches-py", cache / "cifar-10-batches-py"]


def load_cifar10_batches(folder: str | os.PathLike) -> ArrayDataset:
    """Read the official ``cifar-10-batches-py`` folder (5 train batches, 1 test batch)."""
    folder = Path(folder)
    train_files = sorted(folder.glob("data_batch_*"), key=lambda path: path.name)
    if not train_files or not (folder / "test_batch").is_file():
        raise DatasetError(
            f"{folder}: expected CIFAR-10 python batches (data_batch_1..5, test_batch), "
            f"found {sorted(path.name for path in folder.iterdir()) if folder.is_dir() else 'no folder'}"
        )
    parts = [read_cifar_batch(path) for path in train_files]
    x_test, y_test = read_cifar_batch(folder / "test_batch")
    class_names = CIFAR10_CLASS_NAMES
    if (folder / "batches.meta").is_file():
        meta = read_pickle(folder / "batches.meta")
        names = meta.get("label_names")
        if names:
            class_names = tuple(name.decode("utf-8") if isinstance(name, bytes) else str(name) for name in names)
    return ArrayDataset(
        name="cifar10", class_names=class_names,
        x_train=np.concatenate([images for images, _ in parts]),
        y_train=np.concatenate([labels for _, labels in parts]),
        x_test=x_test, y_test=y_test, source=str(folder),
    )


def load_cifar10(data_dir: str | os.PathLike | None = None, allow_download: bool = True) -> ArrayDataset:
    """CIFAR-10 from `data_dir` or the Keras cache; else download with ``keras.datasets``."""
    candidates = cifar10_candidate_dirs(data_dir)
    for folder in candidates:
        if (folder / "test_batch").is_file():
            return load_cifar10_batches(folder)
    if data_dir is not None or not allow_download:
        raise DatasetError(
            "CIFAR-10 not found: expected a 'cifar-10-batches-py' folder in one of "
            + ", ".join(map(str, candidates))
        )
    return _download("cifar10", CIFAR10_CLASS_NAMES, candidates)


# --------------------------------------------------------------------------- IDX (Fashion-MNIST)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def fashion_mnist_candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for the Fashion-MNIST IDX files, in order (only `data_dir` when given)."""
    if data_dir is not None:
        return [Path(data_dir)]
    return [DEBIAN_FASHION_MNIST_DIR, _keras_home() / "datasets" / "fashion-mnist"]


def load_idx_folder(
    folder: str | os.PathLike, class_names: Sequence[str] = FASHION_MNIST_CLASS_NAMES, name: str = "fashion-mnist"
) -> ArrayDataset:
    """Read the four (Fashion-)MNIST IDX files of `folder`, each plain or gzipped."""
    folder = Path(folder)
    paths = {key: _find_idx(folder, stem) for key, stem in IDX_FILES.items()}
    missing = [IDX_FILES[key] for key, path in paths.items() if path is None]
    if missing:
        raise DatasetError(f"{folder}: expected IDX files {', '.join(missing)} (plain or .gz), not found")
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DatasetError(f"{paths[f'x_{split}']}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DatasetError(
                f"{paths[f'y_{split}']}: expected {len(images)} labels for {paths[f'x_{split}'].name}, got shape {labels.shape}"
            )
    return ArrayDataset(
        name=name, class_names=tuple(class_names),
        x_train=arrays["x_train"][..., None], y_train=arrays["y_train"].astype(np.int64),
        x_test=arrays["x_test"][..., None], y_test=arrays["y_test"].astype(np.int64),
        source=str(folder),
    )


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, allow_download: bool = True) -> ArrayDataset:
    """Fashion-MNIST from `data_dir`, Debian's folder or the Keras cache; else download."""
    candidates = fashion_mnist_candidate_dirs(data_dir)
    for folder in candidates:
        if _find_idx(folder, IDX_FILES["x_test"]) is not None:
            return load_idx_folder(folder)
    if data_dir is not None or not allow_download:
        raise DatasetError(
            "Fashion-MNIST not found: expected IDX files (train-images-idx3-ubyte[.gz] ...) in one of "
            + ", ".join(map(str, candidates))
            + "; on Debian/Ubuntu: apt-get install -y dataset-fashion-mnist"
        )
    return _download("fashion-mnist", FASHION_MNIST_CLASS_NAMES, candidates)


def _download(name: str, class_names: Sequence[str], searched: Sequence[Path]) -> ArrayDataset:
    import keras  # heavy; only on the download path

    logger.info("%s: no local copy in %s; downloading with keras.datasets", name, ", ".join(map(str, searched)))
    module = keras.datasets.cifar10 if name == "cifar10" else keras.datasets.fashion_mnist
    try:
        (x_train, y_train), (x_test, y_test) = module.load_data()
    except Exception as error:  # network errors come in many types
        raise DatasetError(
            f"{name}: no local copy in {', '.join(map(str, searched))} and the download failed ({error})"
        ) from None
    if x_train.ndim == 3:
        x_train, x_test = x_train[..., None], x_test[..., None]
    return ArrayDataset(
        name=name, class_names=tuple(class_names),
        x_train=x_train, y_train=np.asarray(y_train, np.int64).reshape(-1),
        x_test=x_test, y_test=np.asarray(y_test, np.int64).reshape(-1),
        source="keras.datasets download",
    )


# --------------------------------------------------------------------------- class folders


def _load_resized(path: Path, image_size: int) -> np.ndarray:
    image = load_image(path)
    if image.size != (image_size, image_size):
        # The whole image squashed to a square, like the in-graph Resizing at predict time.
        image = image.resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def load_class_folders(
    root: str | os.PathLike, image_size: int = 32, test_ratio: float = 0.2, seed: int = 0, progress: bool = True
) -> ArrayDataset:
    """Decode a class-folder dataset into square RGB arrays and split it into train and test.

    The split is grouped (byte-identical files and crops of one source photo stay on one
    side) and stratified by class. Unreadable images are skipped and listed in `skipped`.
    """
    dataset = scan_class_folders(root)
    if len(dataset.class_names) < 2:
        raise DatasetError(f"{root}: expected at least 2 class folders, got {len(dataset.class_names)}")
    skipped = [{"path": str(item.path), "kind": "not-an-image", "reason": item.reason} for item in dataset.skipped]
    images, labels, paths = [], [], []
    readable = []
    for sample in tqdm(dataset.samples, desc="decode", unit="img", disable=not progress):
        try:
            images.append(_load_resized(sample.path, image_size))
        except ImageError as error:
            skipped.append({"path": error.path, "kind": error.kind, "reason": error.reason})
            continue
        labels.append(sample.label_index)
        paths.append(str(sample.path))
        readable.append(sample)
    if skipped:
        logger.warning("%s: skipped %d unreadable or non-image files", root, len(skipped))
    if not readable:
        raise DatasetError(f"{root}: no readable images in {len(dataset.class_names)} class folders")
    from detcrop.data.folders import ClassFolderDataset

    readable_dataset = ClassFolderDataset(root=dataset.root, class_names=dataset.class_names, samples=tuple(readable))
    split = split_class_folders(
        readable_dataset, val_ratio=test_ratio, seed=seed, source_by_path=source_hashes_from_manifest(root)
    )
    if not split.val:
        raise DatasetError(f"{root}: {len(readable)} readable images are too few for a test split of {test_ratio}")
    x = np.stack(images)
    y = np.asarray(labels, dtype=np.int64)
    train, test = np.asarray(split.train), np.asarray(split.val)
    return ArrayDataset(
        name=str(root), class_names=dataset.class_names,
        x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test],
        source=str(root), skipped=tuple(skipped), test_paths=tuple(paths[index] for index in test),
    )


def load_dataset(
    dataset: str,
    data_dir: str | os.PathLike | None = None,
    image_size: int = 32,
    test_ratio: float = 0.2,
    seed: int = 0,
    allow_download: bool = True,
    progress: bool = True,
) -> ArrayDataset:
    """``"cifar10"``, ``"fashion-mnist"`` or a class-folder path -> `ArrayDataset`.

    >>> data = load_dataset("fashion-mnist")  # doctest: +SKIP
    >>> data.x_train.shape, data.class_names[0]  # doctest: +SKIP
    ((60000, 28, 28, 1), 'T-shirt/top')
    """
    if dataset == "cifar10":
        return load_cifar10(data_dir, allow_download)
    if dataset == "fashion-mnist":
        return load_fashion_mnist(data_dir, allow_download)
    if not Path(dataset).exists():
        raise DatasetError(
            f"--dataset must be one of {', '.join(BUILTIN_DATASETS)} or a class-folder path, got {dataset!r} (no such folder)"
        )
    return load_class_folders(dataset, image_size, test_ratio, seed, progress)
