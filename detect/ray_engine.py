"""The crop job on Ray Data: the same dataset as `crop_photos`, with detectors on many workers.

The Ray docs' offline batch inference shape: photos are read as bytes
(`ray.data.read_binary_files`, local paths or any filesystem pyarrow reads, such as s3:// or
gs://), an actor pool holds one detector per worker (`map_batches` with a callable class,
`ActorPoolStrategy`), and each actor runs the pure stage `detect.crop.crop_photo` on every
photo. The driver, the one process that owns the dataset, takes the outcomes in input order
and writes crop files and manifest records through the same `CropJob` as the local engine
does: same names, same records, same resume rules (photos whose content hash and label are
in the manifest are skipped by the workers before any detection).

Ray is an optional extra: `pip install 'detcrop[ray]'`; starting Ray, reading bytes and the
actor pool are `detcrop.data.ray_runtime`'s, shared with train's feature pass.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from detcrop.data.config import config_to_dict
from detcrop.data.errors import UsageError
from detcrop.data.folders import check_class_name, not_an_image
from detcrop.data.images import bytes_sha256
from detcrop.data.ray_runtime import (
    list_uri_images,
    RayMissingError, RaySettings, import_ray, map_with_actors, path_key, ray_session, read_files, shared_value,
    single_thread_tensorflow,
)
from detcrop.detect.crop import (
    CropConfig, CropJob, CropSummary, PhotoOutcome, _photo_key, crop_dataset, crop_photo, default_label, list_photos,
)

#: Photos per `map_batches` call on a worker.
DEFAULT_BATCH_SIZE = 4


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
    filesystem, root, files, skipped = list_uri_images(text)
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

    path = onnx_model_path(config.detector, config.runtime, config.precision)
    return None if path is None else path.read_bytes()


class CropActor:
    """One detector per Ray worker; `__call__` runs `crop_photo` on a batch of photo bytes."""

    def __init__(self, config_dict: dict, sources: dict, done: frozenset, onnx_model=None):
        from detcrop.data.config import build_config

        onnx_model = shared_value(onnx_model)  # one copy in the object store, shared by the actors of a node
        self.config = build_config(CropConfig, config_dict)
        self.sources = sources
        self.done = done
        if onnx_model is not None:
            from detcrop.detect.onnx_detectors import OnnxDetector

            # One intra-op thread per actor: Ray scales by actors, one per CPU.
            self.detector = OnnxDetector(onnx_model, name=self.config.detector, threads=1)
        else:
            single_thread_tensorflow()
            from detcrop.detect.base import load_configured_detector

            self.detector = load_configured_detector(self.config.detector, self.config.runtime, self.config.precision)

    def __call__(self, batch: dict) -> dict:
        outcomes = []
        for payload, read_path in zip(batch["bytes"], batch["path"]):
            source, label = self.sources[path_key(read_path)]
            payload = bytes(payload)
            sha256 = bytes_sha256(payload)
            if _photo_key(source, sha256, label) in self.done:
                outcome = None  # an earlier run recorded it: no detection
            else:
                outcome = crop_photo(payload, self.config, self.detector, source=source, label=label,
                                     source_sha256=sha256)
            outcomes.append(pickle.dumps((source, label, sha256, outcome)))
        return {"outcome": outcomes}


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
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    settings = RaySettings(address, workers)
    import_ray()  # before any work: without the extra, say how to install it
    dataset = Path(dataset)
    if label is not None:
        check_class_name(label)
    photos, skipped, filesystem = list_input(input_location, label, config)
    # The local engine's set-up; a remote input cannot overlap a local folder.
    local_input = None if filesystem else input_location
    with crop_dataset(dataset, config, input_location, local_input, photos, skipped,
                      lambda: _detector_payload(config)) as (onnx_model, done):
        # The manifest lists photos in the local engine's order.
        with ray_session(settings, preserve_order=True) as ray:
            return _run(ray, dataset, photos, skipped, filesystem, config, frozenset(done), onnx_model, settings,
                        batch_size, progress)


def _run(ray, dataset: Path, photos: list[InputPhoto], skipped: list, filesystem, config: CropConfig,
         done: frozenset, onnx_model: bytes | None, settings: RaySettings, batch_size: int,
         progress: bool) -> CropSummary:
    sources = {path_key(photo.read_path): (photo.source, photo.label) for photo in photos}
    photos_ds = read_files(ray, [photo.read_path for photo in photos], settings.workers, filesystem)
    outcomes = map_with_actors(ray, photos_ds, CropActor, settings, batch_size, config_dict=config_to_dict(config),
                               sources=sources, done=done, onnx_model=onnx_model)
    with CropJob(dataset, len(photos), skipped, precision=config.precision) as job:
        bar = tqdm(total=len(photos), desc="crop (ray)", unit="photo", disable=not progress)
        for batch in outcomes.iter_batches(batch_size=None, batch_format="numpy"):
            for blob in batch["outcome"]:
                source, label, sha256, outcome = pickle.loads(bytes(blob))
                if job.claim(_photo_key(source, sha256, label), source, label, done=outcome is None):
                    job.write(outcome)
                bar.set_postfix(job.figures(), refresh=False)
                bar.update(1)
        bar.close()
    return job.finish()


__all__ = ["CropActor", "InputPhoto", "PhotoOutcome", "RayMissingError", "crop_photos_ray", "import_ray",
           "list_input"]
