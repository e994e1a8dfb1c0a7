"""The crop job on Ray Data: the same dataset as `crop_photos`, with detectors on many workers.

The Ray docs' offline batch inference shape: photos are read as bytes
(`ray.data.read_binary_files`, local paths or any filesystem pyarrow reads, such as s3:// or
gs://), an actor pool holds one detector per worker (`map_batches` with a callable class,
`ActorPoolStrategy`), and each actor runs the pure stage `detect.crop.crop_photo` on every
photo. The driver, the one process that owns the dataset, takes the outcomes in input order
and writes crop files and manifest records with `write_outcome`, exactly as the local engine
does: same names, same records, same resume rules (photos whose content hash and label are
in the manifest are skipped by the workers before any detection).

Ray is an optional extra: `pip install 'detcrop[ray]'`.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from detcrop.data.atomic import atomic_write_json
from detcrop.data.config import config_to_dict
from detcrop.data.errors import DetcropError, UsageError
from detcrop.data.folders import check_class_name, not_an_image
from detcrop.data.images import IMAGE_EXTENSIONS, bytes_sha256, is_image_path
from detcrop.data.layout import MANIFEST_NAME
from detcrop.data.locks import folder_lock
from detcrop.data.manifest import ManifestWriter
from detcrop.data.outputs import check_output_path
from detcrop.detect.crop import (
    CROP_CONFIG_NAME, CropConfig, CropSummary, NoPhotosError, PhotoOutcome, _check_config,
    _photo_key, _resume_state, crop_photo, default_label, finish_crop_run, list_photos,
    write_outcome,
)

logger = logging.getLogger(__name__)

#: Photos per `map_batches` call on a worker.
DEFAULT_BATCH_SIZE = 4


class RayMissingError(DetcropError, ImportError):
    """Ray is not installed; the message says how to install it."""


def import_ray():
    """The `ray` module, or `RayMissingError` saying how to install the extra."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray[data]: pyarrow, pandas)
    except ImportError:
        raise RayMissingError("--engine ray needs Ray Data: pip install 'detcrop[ray]' "
                              "(ray[data] 2.60; or use --engine local)") from None
    return ray


@dataclass(frozen=True)
class InputPhoto:
    """One photo of the job: where Ray reads it, what the manifest records, its class folder."""

    read_path: str  # as given to read_binary_files (a local absolute path, or a path in `filesystem`)
    source: str  # recorded as source_path (the local engine's path; the URI for remote files)
    label: str


def list_input(input_location: str | os.PathLike, label: str | None, config: CropConfig):
    """(photos, skipped, pyarrow filesystem or None) for a local folder or a pyarrow URI (s3://, gs://, file://)."""
    text = os.fspath(input_location)
    if "://" not in text:
        photos, skipped = list_photos(Path(text), label, default_label=default_label(config))
        return [InputPhoto(os.path.abspath(photo.path), str(photo.path), photo.label) for photo in photos], skipped, None
    import pyarrow.fs

    filesystem, root = pyarrow.fs.FileSystem.from_uri(text)
    root = root.rstrip("/")
    infos = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    files, skipped = [], []
    for info in infos:
        if info.type != pyarrow.fs.FileType.File:
            continue
        relative = PurePosixPath(info.path).relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        (files if is_image_path(relative.name) else skipped).append(relative)
    files.sort()
    has_own_images = any(len(relative.parts) == 1 for relative in files)
    prefix = text.rstrip("/")
    photos = []
    for relative in files:
        if label is not None or has_own_images:
            photo_label = label or default_label(config)
        else:
            photo_label = check_class_name(relative.parts[0])
        photos.append(InputPhoto(f"{root}/{relative.as_posix()}", f"{prefix}/{relative.as_posix()}", photo_label))
    return photos, [not_an_image(f"{prefix}/{relative.as_posix()}") for relative in skipped], filesystem


def _detector_payload(config: CropConfig) -> bytes | None:
    """The ONNX model bytes for workers (shipped through the object store), or None to load by name there."""
    from detcrop.detect.base import onnx_model_path

    path = onnx_model_path(config.detector, config.runtime)
    return None if path is None else path.read_bytes()


class CropActor:
    """One detector per Ray worker; `__call__` runs `crop_photo` on a batch of photo bytes."""

    def __init__(self, config_dict: dict, sources: dict, done: frozenset, onnx_model=None):
        import ray

        from detcrop.data.config import build_config

        if isinstance(onnx_model, ray.ObjectRef):
            onnx_model = ray.get(onnx_model)  # one copy in the object store, shared by the actors of a node

        self.config = build_config(CropConfig, config_dict)
        self.sources = sources
        self.done = done
        if onnx_model is not None:
            from detcrop.detect.onnx_detectors import OnnxDetector

            # One intra-op thread per actor: Ray scales by actors, one per CPU.
            self.detector = OnnxDetector(onnx_model, name=self.config.detector, threads=1)
        else:
            if self.config.runtime == "tensorflow":
                import tensorflow as tf

                tf.config.threading.set_intra_op_parallelism_threads(1)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            from detcrop.detect.base import load_configured_detector

            self.detector = load_configured_detector(self.config.detector, self.config.runtime)

    def __call__(self, batch: dict) -> dict:
        outcomes = []
        for payload, read_path in zip(batch["bytes"], batch["path"]):
            source, label = self.sources[_normalise(read_path)]
            payload = bytes(payload)
            sha256 = bytes_sha256(payload)
            if _photo_key(source, sha256, label) in self.done:
                outcome = None  # an earlier run recorded it: no detection
            else:
                outcome = crop_photo(payload, self.config, self.detector, source=source, label=label,
                                     source_sha256=sha256)
            outcomes.append(pickle.dumps((source, label, sha256, outcome)))
        return {"outcome": outcomes}


def _normalise(path: str) -> str:
    return os.path.normcase(os.path.normpath(str(path)))


def _init_ray(ray, address: str | None, workers: int) -> bool:
    """Connect to `address` (a cluster), or start a local Ray; True when this call started it."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        # One CPU per detector actor and one for the read tasks: with only `workers` CPUs the
        # actors would hold them all and the reads that feed them would never be scheduled.
        ray.init(num_cpus=workers + 1, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    return True


def crop_photos_ray(
    input_location: str | os.PathLike,
    dataset: str | os.PathLike,
    config: CropConfig = CropConfig(),
    label: str | None = None,
    progress: bool = True,
    address: str | None = None,
    workers: int = 2,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> CropSummary:
    """`crop_photos` on Ray Data: `workers` actors, one detector each (see the module doc).

    `input_location` is a local folder or a URI pyarrow reads (s3://bucket/photos, gs://...,
    file:///...); `dataset` is a local folder written by this process. `address` is a Ray
    cluster ("auto", "ray://HOST:10001"); without it a local Ray with `workers` CPUs starts
    and stops here. The dataset equals the local engine's, file for file and record for record.
    """
    if workers < 1 or batch_size < 1:
        raise UsageError(f"workers and batch_size must be >= 1, got {workers} and {batch_size}")
    ray = import_ray()
    dataset = Path(dataset)
    if label is not None:
        check_class_name(label)
    photos, skipped, filesystem = list_input(input_location, label, config)
    # The same output rule as the local engine (a remote input cannot overlap a local folder).
    check_output_path(dataset, "--out", inputs=[("the input folder", None if filesystem else input_location)],
                      kind="folder")
    if not photos:
        raise NoPhotosError(f"{input_location}: no photos to crop (looked for "
                            f"{', '.join(sorted(IMAGE_EXTENSIONS))} files, recursively)")
    with folder_lock(dataset, "crop"):
        _check_config(dataset, config)
        onnx_model = _detector_payload(config)
        atomic_write_json(dataset / CROP_CONFIG_NAME, config_to_dict(config))
        done = frozenset(_resume_state(dataset))
        started_here = _init_ray(ray, address, workers)
        try:
            summary = _run(ray, dataset, photos, skipped, filesystem, config, done, onnx_model, workers, batch_size,
                           progress)
        finally:
            if started_here:
                ray.shutdown()
    return summary


def _run(ray, dataset: Path, photos: list[InputPhoto], skipped: list, filesystem, config: CropConfig,
         done: frozenset, onnx_model: bytes | None, workers: int, batch_size: int, progress: bool) -> CropSummary:
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the manifest lists photos in the local engine's order
    context.enable_progress_bars = False
    sources = {_normalise(photo.read_path): (photo.source, photo.label) for photo in photos}
    read_kwargs = {"filesystem": filesystem} if filesystem is not None else {}
    photos_ds = ray.data.read_binary_files([photo.read_path for photo in photos], include_paths=True,
                                           num_cpus=0.5, **read_kwargs)
    outcomes = photos_ds.map_batches(
        CropActor,
        fn_constructor_kwargs={"config_dict": config_to_dict(config), "sources": sources, "done": done,
                               "onnx_model": ray.put(onnx_model) if onnx_model is not None else None},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=1,
    )
    summary = CropSummary(dataset=str(dataset), photos_seen=len(photos), not_images=len(skipped), skipped=list(skipped))
    seen: set[tuple] = set()
    with ManifestWriter(dataset / MANIFEST_NAME) as writer:
        bar = tqdm(total=len(photos), desc="crop (ray)", unit="photo", disable=not progress)
        for batch in outcomes.iter_batches(batch_size=None, batch_format="numpy"):
            for blob in batch["outcome"]:
                source, label, sha256, outcome = pickle.loads(bytes(blob))
                key = _photo_key(source, sha256, label)
                bar.update(1)
                if outcome is None:
                    summary.skipped_done += 1
                    seen.add(key)
                    continue
                if key in seen:
                    logger.info("%s: skipped, the same photo as one already cropped under %s", source, label)
                    summary.duplicates += 1
                    continue
                seen.add(key)
                write_outcome(dataset, outcome, writer)
        bar.close()
    return finish_crop_run(dataset, summary, seen)


__all__ = ["CropActor", "InputPhoto", "PhotoOutcome", "RayMissingError", "crop_photos_ray", "import_ray",
           "list_input"]
