"""Cropping detected objects: one image (`crop_detections`) or a folder (`crop_photos`).

`crop_detections` is the single definition of how a crop is made; `crop_photos` uses it to
build a training dataset and stage three uses it, with the dataset's saved
`crop_config.json`, to crop new photos the same way.

Dataset layout written by `crop_photos`:

    DATASET/crop_config.json   the resolved CropConfig (load with data.config.load_config_file)
    DATASET/manifest.jsonl     one CropRecord per crop, and one per photo with no crop
    DATASET/summary.json       photos seen, cropped, empty, failed
    DATASET/<label>/<source stem>_<source sha256[:10]>_<index>.jpg

Resume: rerunning the same command skips photos whose path and content hash already have
records. Crop files are written atomically before their record is appended, and the last
photo of the manifest is always redone (a kill may have cut its records short), so an
interrupted run plus a rerun gives the same files and records as one uninterrupted run.
"""

from __future__ import annotations

import io
import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from detcrop.data.atomic import atomic_write_bytes, atomic_write_json
from detcrop.data.config import config_to_dict, load_config_file
from detcrop.data.folders import find_images, scan_class_folders
from detcrop.data.images import ImageError, ImageLimits, bytes_sha256, file_sha256, is_image_path, load_image_array
from detcrop.data.manifest import (
    MANIFEST_NAME, STATUS_CROPPED, STATUS_EMPTY, STATUS_FAILED, CropRecord, ManifestWriter,
    read_manifest, write_manifest,
)
from detcrop.detect.base import DEFAULT_DETECTOR, Detector
from detcrop.detect.detections import Detections
from detcrop.detect.geometry import SQUARE_MODES, CropTooSmallError, crop_region, cut_region
from detcrop.detect.labels import coco_labels, resolve_class_ids

logger = logging.getLogger(__name__)

#: The resolved config written into every cropped dataset.
CROP_CONFIG_NAME = "crop_config.json"
SUMMARY_NAME = "summary.json"
ON_EMPTY_MODES = ("record", "whole-photo")
#: Fields that change how fast a job runs, not what it writes; they may differ on resume.
RUNTIME_FIELDS = frozenset({"workers", "prefetch"})


@dataclass(frozen=True)
class CropConfig:
    """Defaults of `detcrop crop`; written as DATASET/crop_config.json next to the crops."""

    detector: str = DEFAULT_DETECTOR  # detector name, TF Hub handle, SavedModel folder or .pb file
    targets: tuple[str, ...] = ("clock",)  # COCO class names or ids to crop ("clock" = 85, for watches too)
    score_threshold: float = 0.5  # keep boxes scoring at least this (chosen from measured recall, see README)
    margin: float = 0.1  # grow each side by this fraction of the box width/height (context around the object)
    square: str = "expand"  # "expand" (grow the short side inside the image), "pad" (pad colour), "none"
    pad_color: tuple[int, ...] = (0, 0, 0)  # RGB fill for square="pad" outside the image
    min_size: int = 32  # reject crops whose short side inside the photo is under this many pixels
    max_crops_per_photo: int = 1  # best-scoring boxes kept per photo; 1 = the photo's main object
    jpeg_quality: int = 95  # crops are written as JPEG at this quality
    on_empty: str = "record"  # no box passes: "record" it only, or "whole-photo" (crop the whole photo)
    max_bytes: int = ImageLimits.max_bytes  # photos larger than this are refused as failed (bytes)
    max_pixels: int = ImageLimits.max_pixels  # photos with more pixels are refused as failed
    workers: int = 2  # decoding threads running ahead of the detector
    prefetch: int = 8  # decoded photos held ready for the detector

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(str(target) for target in self.targets))
        resolve_class_ids(self.targets)  # raises naming the nearest class
        checks = (
            (0.0 <= self.score_threshold <= 1.0, "score_threshold must be in [0, 1]", self.score_threshold),
            (self.margin >= 0, "margin must be >= 0 (a fraction of the box size)", self.margin),
            (self.square in SQUARE_MODES, f"square must be one of {', '.join(SQUARE_MODES)}", self.square),
            (len(self.pad_color) == 3 and all(0 <= value <= 255 for value in self.pad_color),
             "pad_color must be 3 values 0..255 (R, G, B)", self.pad_color),
            (self.min_size >= 1, "min_size must be >= 1 pixel", self.min_size),
            (self.max_crops_per_photo >= 1, "max_crops_per_photo must be >= 1", self.max_crops_per_photo),
            (1 <= self.jpeg_quality <= 100, "jpeg_quality must be in 1..100", self.jpeg_quality),
            (self.on_empty in ON_EMPTY_MODES, f"on_empty must be one of {', '.join(ON_EMPTY_MODES)}", self.on_empty),
            (self.max_bytes > 0 and self.max_pixels > 0, "max_bytes and max_pixels must be > 0",
             (self.max_bytes, self.max_pixels)),
            (self.workers >= 1 and self.prefetch >= 1, "workers and prefetch must be >= 1",
             (self.workers, self.prefetch)),
        )
        for passed, expected, received in checks:
            if not passed:
                raise ValueError(f"CropConfig: {expected}, got {received!r}")

    @property
    def target_class_ids(self) -> tuple[int, ...]:
        """The targets as COCO class ids."""
        return resolve_class_ids(self.targets)

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_bytes, max_pixels=self.max_pixels)


@dataclass(frozen=True)
class Crop:
    """One cut crop and where it came from."""

    image: np.ndarray  # uint8 (h, w, 3)
    box: tuple[float, float, float, float]  # detector box, pixels xyxy (the whole photo for on_empty="whole-photo")
    crop_box: tuple[int, int, int, int]  # region cut, pixels xyxy (outside the photo only for square="pad")
    score: float | None  # detector score (None for a whole-photo crop)
    class_id: int | None
    class_name: str | None
    index: int  # rank within the photo, 0 = best

    def record_fields(self) -> dict:
        """The `CropRecord` fields this crop fills."""
        return {
            "box": tuple(round(float(value), 2) for value in self.box), "crop_box": self.crop_box,
            "score": None if self.score is None else round(float(self.score), 6),
            "class_id": self.class_id, "class_name": self.class_name, "index": self.index,
        }


def _plan(detections: Detections, config: CropConfig) -> tuple[list[tuple[int, tuple[int, int, int, int]]], str]:
    """(detection index, region) of the boxes to crop, best first, and why there are none."""
    target_ids = config.target_class_ids
    ranked = detections.sorted_by_score()
    is_target = np.isin(ranked.class_ids, target_ids)
    names = "/".join(coco_labels().get(class_id, str(class_id)) for class_id in target_ids)
    if not is_target.any():
        return [], f"no {names} detected"
    passing = is_target & (ranked.scores >= config.score_threshold)
    if not passing.any():
        best = float(ranked.scores[is_target].max())
        return [], f"no {names} with score >= {config.score_threshold:g} (best {best:.3f})"
    order = np.argsort(-detections.scores, kind="stable")
    plan: list[tuple[int, tuple[int, int, int, int]]] = []
    too_small = degenerate = 0
    for rank in np.flatnonzero(passing):
        try:
            region = crop_region(ranked.boxes_xyxy[rank], detections.image_size, config.margin, config.square,
                                 config.min_size)
        except CropTooSmallError:
            too_small += 1
            continue
        except ValueError:
            degenerate += 1  # a zero-width or inverted box some detectors emit at the image border
            continue
        plan.append((int(order[rank]), region))
        if len(plan) == config.max_crops_per_photo:
            break
    rejected = ([f"{too_small} under min_size {config.min_size} px"] if too_small else []) + \
        ([f"{degenerate} with no area"] if degenerate else [])
    reason = "" if plan else f"{too_small + degenerate} {names} box(es) passed the score threshold but were " \
                             f"rejected: {', '.join(rejected)}"
    return plan, reason


def crop_detections(image: np.ndarray, detections: Detections, config: CropConfig = CropConfig()) -> list[Crop]:
    """The crops `config` makes from `detections` in `image`, best first (empty when none pass).

    >>> crops = crop_detections(image, detector.detect(image), load_config_file(CropConfig, "crop_config.json"))  # doctest: +SKIP
    """
    height, width = image.shape[:2]
    if detections.image_size != (width, height):
        raise ValueError(f"detections are for a {detections.image_size} image, got an image of {(width, height)}")
    plan, _ = _plan(detections, config)
    crops = []
    for index, (detection, region) in enumerate(plan):
        crops.append(Crop(
            image=cut_region(image, region, config.pad_color), box=tuple(detections.boxes_xyxy[detection].tolist()),
            crop_box=region, score=float(detections.scores[detection]), class_id=int(detections.class_ids[detection]),
            class_name=detections.class_names[detection], index=index,
        ))
    if not crops and config.on_empty == "whole-photo":
        region = crop_region((0, 0, width, height), (width, height), 0.0, config.square, 1)
        crops.append(Crop(cut_region(image, region, config.pad_color), (0.0, 0.0, float(width), float(height)),
                          region, None, None, None, 0))
    return crops


def describe_empty(detections: Detections, config: CropConfig = CropConfig()) -> str:
    """Why `crop_detections` finds nothing to crop in `detections` ("" when it does)."""
    return _plan(detections, config)[1]


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a uint8 RGB array (deterministic for equal input)."""
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


# ---------------------------------------------------------------- folders of photos


@dataclass(frozen=True)
class Photo:
    path: Path
    label: str


@dataclass
class CropSummary:
    """What a `crop_photos` run found; counts are over the whole manifest (earlier runs included)."""

    dataset: str
    photos_seen: int = 0  # image files in the input
    cropped: int = 0  # photos with at least one crop
    empty: int = 0  # photos read without a crop
    failed: int = 0  # photos that could not be read
    crops: int = 0  # crop files
    skipped_done: int = 0  # photos this run skipped because earlier runs did them
    not_images: int = 0  # files in the input without an image extension (not counted as photos)
    crops_per_label: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def list_photos(input_dir: str | os.PathLike, label: str | None = None,
                default_label: str = "clock") -> tuple[list[Photo], list[Path]]:
    """The photos to crop and the non-image files found, in sorted order.

    With `label`, every image under `input_dir` (recursively) gets that label. Without it,
    `input_dir` holding class folders and no images of its own is read as class folders
    (labels from the folder names); a folder with images directly in it is one class named
    `default_label`.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise (NotADirectoryError if input_dir.exists() else FileNotFoundError)(
            f"{input_dir}: expected a folder of photos or of class folders, "
            f"got {'a file' if input_dir.exists() else 'nothing'}"
        )
    has_own_images = any(entry.is_file() and is_image_path(entry) and not entry.name.startswith(".")
                         for entry in input_dir.iterdir())
    if label is not None or has_own_images:
        images, not_images = find_images(input_dir)
        return [Photo(path, label or default_label) for path in images], not_images
    dataset = scan_class_folders(input_dir)
    return [Photo(sample.path, sample.label) for sample in dataset.samples], [item.path for item in dataset.skipped]


@dataclass(frozen=True)
class _Loaded:
    photo: Photo
    sha256: str | None
    image: np.ndarray | None = None
    error: ImageError | None = None
    done: bool = False  # an earlier run recorded this photo


T = TypeVar("T")
R = TypeVar("R")


def _prefetched(items: Iterable[T], function: Callable[[T], R], workers: int, depth: int) -> Iterator[R]:
    """`map(function, items)` in order, run up to `depth` items ahead on `workers` threads."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="detcrop-decode")
    pending: deque = deque()
    iterator = iter(items)
    try:
        for item in iterator:
            pending.append(pool.submit(function, item))
            if len(pending) >= depth:
                break
        while pending:
            result = pending.popleft().result()
            for item in iterator:
                pending.append(pool.submit(function, item))
                break
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _source_key(path: str | os.PathLike) -> str:
    return os.path.normcase(os.path.abspath(path))


def _check_config(dataset: Path, config: CropConfig) -> None:
    """Write DATASET/crop_config.json, or check that an earlier run's matches `config`."""
    path = dataset / CROP_CONFIG_NAME
    wanted = config_to_dict(config)
    if path.exists():
        try:
            earlier = config_to_dict(load_config_file(CropConfig, path))
        except ValueError as error:
            raise ValueError(f"{path}: cannot read the earlier run's crop config ({error})") from None
        differences = [f"{key}: {earlier[key]!r} there, {wanted[key]!r} now" for key in wanted
                       if key not in RUNTIME_FIELDS and earlier.get(key) != wanted[key]]
        if differences:
            raise ValueError(
                f"{dataset} was cropped with other settings ({'; '.join(differences)}); to resume it use the "
                f"same options (or --config {path}), or pick a new --out folder"
            )
    atomic_write_json(path, wanted)


def _resume_state(dataset: Path) -> set[tuple[str, str | None]]:
    """(source path, source hash) pairs already done; drops the last photo's records to redo it."""
    manifest = dataset / MANIFEST_NAME
    records = read_manifest(manifest)
    if records:
        last_source = records[-1].source_path
        keep = len(records)
        while keep and records[keep - 1].source_path == last_source:
            keep -= 1
        # A kill between two crops of one photo leaves its records short; redoing it is cheap.
        write_manifest(manifest, records[:keep])
        records = records[:keep]
    for leftover in dataset.rglob(".*.part"):
        logger.info("removing %s, left by an interrupted write", leftover)
        leftover.unlink()
    return {(_source_key(record.source_path), record.source_sha256) for record in records}


def _warn_stale_records(dataset: Path, photos: list[Photo]) -> list[CropRecord]:
    """Records of photos that are gone from the input or now carry another label; logged, not deleted.

    The crops stay (deleting a user's files on a guess is worse), but `train` reads the class
    folders, so a relabelled photo would otherwise train under both labels unnoticed.
    """
    current = {_source_key(photo.path): photo.label for photo in photos}
    stale = [record for record in read_manifest(dataset / MANIFEST_NAME)
             if current.get(_source_key(record.source_path), record.label) != record.label
             or _source_key(record.source_path) not in current]
    if stale:
        examples = ", ".join(sorted({record.source_path for record in stale})[:3])
        logger.warning("%s: %d manifest record(s) are of photos no longer in the input or now under another "
                       "label (e.g. %s); their crops are still in the dataset: delete them (see manifest.jsonl) "
                       "or crop into a new folder", dataset, len(stale), examples)
    return stale


def _summarise(dataset: Path, summary: CropSummary) -> CropSummary:
    statuses: dict[str, set[str]] = {STATUS_CROPPED: set(), STATUS_EMPTY: set(), STATUS_FAILED: set()}
    for record in read_manifest(dataset / MANIFEST_NAME):
        statuses[record.status].add(record.source_path)
        if record.status == STATUS_CROPPED:
            summary.crops += 1
            summary.crops_per_label[record.label] = summary.crops_per_label.get(record.label, 0) + 1
    summary.cropped = len(statuses[STATUS_CROPPED])
    summary.empty = len(statuses[STATUS_EMPTY])
    summary.failed = len(statuses[STATUS_FAILED])
    summary.crops_per_label = dict(sorted(summary.crops_per_label.items()))
    return summary


def crop_photos(
    input_dir: str | os.PathLike,
    dataset: str | os.PathLike,
    config: CropConfig = CropConfig(),
    detector: Detector | None = None,
    label: str | None = None,
    progress: bool = True,
) -> CropSummary:
    """Detect and crop every photo under `input_dir` into the class-folder dataset `dataset`.

    `detector` defaults to `load_detector(config.detector)`; pass one to reuse a loaded
    model. Unreadable photos get a "failed" record and the job goes on; photos where nothing
    passes get an "empty" record with the reason. Resumable; see the module doc.
    """
    input_dir, dataset = Path(input_dir), Path(dataset)
    photos, not_images = list_photos(input_dir, label, default_label=coco_labels()[config.target_class_ids[0]])
    if dataset.resolve().is_relative_to(input_dir.resolve()):
        raise ValueError(f"--out {dataset} is inside the input folder {input_dir}; a rerun would crop the crops. "
                         f"Pick an output folder outside it")
    for path in not_images:
        logger.warning("%s: skipped, not an image file", path)
    dataset.mkdir(parents=True, exist_ok=True)
    _check_config(dataset, config)
    if detector is None:
        from detcrop.detect.base import load_detector

        detector = load_detector(config.detector)
    done = _resume_state(dataset)
    _warn_stale_records(dataset, photos)
    summary = CropSummary(dataset=str(dataset), photos_seen=len(photos), not_images=len(not_images))
    limits = config.image_limits

    def read(photo: Photo) -> _Loaded:
        try:
            digest = file_sha256(photo.path)
        except OSError:
            digest = None
        if (_source_key(photo.path), digest) in done:
            return _Loaded(photo, digest, done=True)
        try:
            return _Loaded(photo, digest, image=load_image_array(photo.path, limits))
        except ImageError as error:
            return _Loaded(photo, digest, error=error)

    with ManifestWriter(dataset / MANIFEST_NAME) as writer:
        bar = tqdm(_prefetched(photos, read, config.workers, config.prefetch), total=len(photos), desc="crop",
                   unit="photo", disable=not progress)
        for loaded in bar:
            photo, source = loaded.photo, str(loaded.photo.path)
            if loaded.done:
                summary.skipped_done += 1
                continue
            if loaded.error is not None:
                logger.warning("%s", loaded.error)
                writer.append(CropRecord(source, loaded.sha256, STATUS_FAILED, label=photo.label,
                                         detector=detector.name, reason=f"{loaded.error.kind}: {loaded.error.reason}"))
                continue
            try:
                detections = detector.detect(loaded.image)
                crops = crop_detections(loaded.image, detections, config)
            except Exception as error:  # one photo the detector chokes on must not end a batch of thousands
                logger.warning("%s: detection failed: %s", source, error)
                writer.append(CropRecord(source, loaded.sha256, STATUS_FAILED, label=photo.label,
                                         detector=detector.name, reason=f"processing-error: {error}"))
                continue
            if not crops:
                writer.append(CropRecord(source, loaded.sha256, STATUS_EMPTY, label=photo.label,
                                         detector=detector.name, reason=describe_empty(detections, config)))
            for crop in crops:
                relative = f"{photo.label}/{photo.path.stem}_{loaded.sha256[:10]}_{crop.index}.jpg"
                payload = encode_jpeg(crop.image, config.jpeg_quality)
                # The file lands before its record: a kill in between leaves an orphan that the
                # rerun rewrites byte for byte.
                atomic_write_bytes(dataset / relative, payload)
                writer.append(CropRecord(
                    source, loaded.sha256, STATUS_CROPPED, label=photo.label, path=relative,
                    sha256=bytes_sha256(payload), detector=detector.name,
                    reason=None if crop.score is not None else f"whole photo: {describe_empty(detections, config)}",
                    **crop.record_fields(),
                ))
    summary = _summarise(dataset, summary)
    atomic_write_json(dataset / SUMMARY_NAME, summary.to_dict())
    return summary
