"""Cropping detected objects: one image (`crop_detections`, `crop_photo`) or a folder (`crop_photos`).

`crop_detections` is the single definition of how a crop is made; `crop_photos` uses it to
build a training dataset and stage three uses it, with the dataset's saved
`crop_config.json`, to crop new photos the same way.

Dataset layout written by `crop_photos`:

    DATASET/crop_config.json   the resolved CropConfig (load with data.config.load_config_file)
    DATASET/manifest.jsonl     one CropRecord per crop, and one per photo with no crop
    DATASET/summary.json       photos seen, cropped, empty, failed
    DATASET/<label>/<source stem>_<source sha256[:10]>_<index>.jpg

The stage itself is `crop_photo`: one photo (bytes or array) + `CropConfig` + `Detector` ->
`PhotoOutcome` (encoded crops and their records, or the empty/failed reason), with no file
I/O. `crop_photos` is the resumable folder driver over it; a Ray Data job or the web page
are other drivers.

Resume: rerunning skips photos whose (content hash, label) already has records, wherever
the photo now lies: a moved or renamed input folder redoes nothing and adds no record. A
byte-identical copy of a photo under the same label is cropped once. Crop files are written
atomically before their record is appended, and the last photo of the manifest is always
redone unless summary.json says a finished run left the manifest as it is (a kill may have
cut the last photo's records short), so an interrupted run plus a rerun gives the same files
and records as one uninterrupted run.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections import deque
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
from PIL import Image
from tqdm import tqdm

from detcrop.data import layout
from detcrop.data.atomic import atomic_write_bytes, atomic_write_json
from detcrop.data.config import ConfigError, config_to_dict, load_config_file
from detcrop.data.errors import DetcropError, MissingFileError, NotAFolderError
from detcrop.data.folders import Skipped, check_class_name, find_images, not_an_image, scan_class_folders
from detcrop.data.images import (
    IMAGE_EXTENSIONS, ImageError, ImageLimits, bytes_sha256, decode_image_array, file_sha256, is_image_path, read_image_bytes,
)
from detcrop.data.layout import MANIFEST_NAME
from detcrop.data.locks import folder_lock
from detcrop.data.manifest import (
    STATUS_CROPPED, STATUS_EMPTY, STATUS_FAILED, CropRecord, ManifestWriter,
    read_manifest, write_manifest,
)
from detcrop.data.outputs import check_output_path
from detcrop.data.streams import prefetched
from detcrop.detect.base import (
    DEFAULT_DETECTOR, DEFAULT_PRECISION, DEFAULT_RUNTIME, PRECISIONS, RUNTIMES, Detector, check_image, detector_label_map,
)
from detcrop.detect.detections import Detections
from detcrop.detect.geometry import SQUARE_MODES, CropTooSmallError, crop_region, cut_region
from detcrop.detect.labels import coco_labels, resolve_class_ids

logger = logging.getLogger(__name__)

#: The resolved config written into every cropped dataset, and the job's summary (data.layout).
CROP_CONFIG_NAME = layout.CROP_CONFIG_NAME
SUMMARY_NAME = layout.CROP_SUMMARY_NAME
ON_EMPTY_MODES = ("record", "whole-photo")
#: Fields that change how fast a job runs, not what it writes; they may differ on resume.
RUNTIME_FIELDS = frozenset({"workers", "prefetch", "runtime"})


class NoPhotosError(DetcropError, ValueError):
    """An input folder with no image file to crop."""


@dataclass(frozen=True)
class CropConfig:
    """Defaults of `detcrop crop`; written as DATASET/crop_config.json next to the crops."""

    detector: str = DEFAULT_DETECTOR  # detector name, TF Hub handle, SavedModel folder or .pb file
    targets: tuple[str, ...] = ("clock",)  # COCO class names or ids to crop ("clock" = 85, for watches too)
    # chosen by measurement: benchmarks/RESULTS.md#crop-threshold
    score_threshold: float = 0.5  # keep boxes scoring at least this, 0-1
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
    # chosen by measurement: benchmarks/RESULTS.md#runtime
    runtime: str = DEFAULT_RUNTIME  # detector runtime: "auto" (ONNX Runtime where installed and the detector converts, else TensorFlow), "onnx" or "tensorflow"
    # opt-in; parity and speed: benchmarks/RESULTS.md#int8-detector
    precision: str = DEFAULT_PRECISION  # detector weights: "float32" or "int8" (quantized SSD, faster, ONNX Runtime only)

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
            (self.runtime in RUNTIMES, f"runtime must be one of {', '.join(RUNTIMES)}", self.runtime),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}", self.precision),
            (not (self.precision == "int8" and self.runtime == "tensorflow"),
             "precision int8 runs in ONNX Runtime only (use runtime onnx or precision float32)",
             (self.precision, self.runtime)),
        )
        for passed, expected, received in checks:
            if not passed:
                raise ConfigError(f"CropConfig: {expected}, got {received!r}")

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


def _normalised(name: str) -> str:
    return name.strip().lower().replace("_", " ")


def target_names(config: CropConfig, label_map: Mapping[int, str] | None = None) -> tuple[str, ...]:
    """The class names `config.targets` mean in `label_map` (the detector's; COCO by default).

    Names are looked up as given and ids are read through the map, so matching by name works
    whatever ids the detector gives its classes. Raises `ValueError` naming the nearest class.
    """
    label_map = coco_labels() if label_map is None else label_map
    return tuple(label_map[class_id] for class_id in resolve_class_ids(config.targets, label_map))


def _plan(detections: Detections, config: CropConfig, label_map: Mapping[int, str] | None = None) \
        -> tuple[list[tuple[int, tuple[int, int, int, int]]], str]:
    """(detection index, region) of the boxes to crop, best first, and why there are none."""
    wanted = target_names(config, label_map)
    ranked = detections.sorted_by_score()
    wanted_normalised = {_normalised(name) for name in wanted}
    is_target = np.array([_normalised(name) in wanted_normalised for name in ranked.class_names], dtype=bool)
    names = "/".join(wanted)
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


def crop_detections(image: np.ndarray, detections: Detections, config: CropConfig = CropConfig(),
                    label_map: Mapping[int, str] | None = None) -> list[Crop]:
    """The crops `config` makes from `detections` in `image`, best first (empty when none pass).

    Targets are matched by class name; `label_map` is the detector's (`detector_label_map`),
    COCO's by default.

    >>> crops = crop_detections(image, detector.detect(image), load_config_file(CropConfig, "crop_config.json"))  # doctest: +SKIP
    """
    height, width = image.shape[:2]
    if detections.image_size != (width, height):
        raise ValueError(f"detections are for a {detections.image_size} image, got an image of {(width, height)}")
    plan, _ = _plan(detections, config, label_map)
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


def describe_empty(detections: Detections, config: CropConfig = CropConfig(),
                   label_map: Mapping[int, str] | None = None) -> str:
    """Why `crop_detections` finds nothing to crop in `detections` ("" when it does)."""
    return _plan(detections, config, label_map)[1]


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a uint8 RGB array (deterministic for equal input)."""
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


# ---------------------------------------------------------------- one photo, no files: the stage


@dataclass(frozen=True)
class CropFile:
    """One encoded crop: `jpeg` is to be written at `path`, relative to the dataset root."""

    path: str  # "<label>/<source stem>_<source sha256[:10]>_<index>.jpg"
    jpeg: bytes  # the crop, JPEG-encoded at CropConfig.jpeg_quality


@dataclass(frozen=True)
class PhotoOutcome:
    """What stage one made of one photo: the crop files with their manifest records, or why none.

    `status` is "cropped" (`files` holds one `CropFile` per cropped record, in order),
    "empty" or "failed" (no files; the one record's `reason` says why). Plain frozen
    dataclasses of str/bytes/tuples: they pickle, so they cross process boundaries.
    """

    source_path: str  # the photo's name or path as the caller gave it
    source_sha256: str | None  # content hash of its bytes (None when they could not be read)
    label: str  # class folder of its crops
    status: str  # "cropped", "empty" or "failed" (manifest STATUS_*)
    records: tuple[CropRecord, ...]  # what the manifest gets, in order
    files: tuple[CropFile, ...] = ()  # the crops to write (cropped only)

    @property
    def reason(self) -> str | None:
        """Why the photo gave no crop (empty or failed), else None."""
        return None if self.status == STATUS_CROPPED else self.records[0].reason

    @classmethod
    def failed(cls, source_path: str, source_sha256: str | None, label: str, detector_name: str,
               reason: str) -> "PhotoOutcome":
        """A photo that could not be read or processed, with the reason recorded."""
        return cls(source_path, source_sha256, label, STATUS_FAILED, (CropRecord(
            source_path, source_sha256, STATUS_FAILED, label=label, detector=detector_name, reason=reason),))


def default_label(config: CropConfig) -> str:
    """The label of photos given without one: the first target's class name ("clock")."""
    return coco_labels()[config.target_class_ids[0]]


def crop_photo(
    photo: bytes | np.ndarray,
    config: CropConfig,
    detector: Detector,
    *,
    source: str = "photo",
    label: str | None = None,
    source_sha256: str | None = None,
) -> PhotoOutcome:
    """Stage one for one photo, with no file I/O: detect, crop, encode; or say why not.

    Arguments:
        photo: the encoded photo (bytes of a JPEG/PNG/BMP/WEBP/GIF file, decoded under
            `config.max_bytes`/`config.max_pixels` exactly as a file would be), or an already
            decoded uint8 RGB array of shape (height, width, 3).
        config: the `CropConfig` (a frozen dataclass; e.g. a dataset's crop_config.json).
        detector: any `Detector` (`detect(image) -> Detections`, `name`); load it once per
            process or actor (`load_detector(config.detector)`), not per photo.
        source: the photo's path or name; recorded as `source_path`, and its stem names the crops.
        label: class folder of the crops; default `default_label(config)`. Must pass
            `data.folders.check_class_name` (one plain folder name).
        source_sha256: hex SHA-256 of the photo's file bytes; computed from `photo` when
            omitted (for an array, from its raw pixel bytes).

    Returns a `PhotoOutcome`. Unreadable bytes and detector errors become a "failed" outcome
    (never an exception: one bad photo must not end a batch); a bad `label` or a non-image
    `photo` argument raise, being the caller's mistakes. Equal inputs give equal outcomes,
    byte for byte, so any driver (the resumable folder job `crop_photos`, a Ray Data job,
    the web page) writes the same dataset.

    >>> outcome = crop_photo(Path("a.jpg").read_bytes(), config, detector, source="a.jpg", label="rolex")  # doctest: +SKIP
    >>> [file.path for file in outcome.files]  # doctest: +SKIP
    ['rolex/a_3f2c9e01ab_0.jpg']
    """
    label = check_class_name(default_label(config) if label is None else label)
    source = str(source)
    if isinstance(photo, (bytes, bytearray, memoryview)):
        payload = bytes(photo)
        if source_sha256 is None:
            source_sha256 = bytes_sha256(payload)
        try:
            image = decode_image_array(payload, config.image_limits, source)
        except ImageError as error:
            return PhotoOutcome.failed(source, source_sha256, label, detector.name, f"{error.kind}: {error.reason}")
    elif isinstance(photo, np.ndarray):
        image = check_image(photo)
        if source_sha256 is None:
            source_sha256 = bytes_sha256(np.ascontiguousarray(image).tobytes())
    else:
        raise TypeError(f"crop_photo expects encoded image bytes or a uint8 RGB array, got {type(photo).__name__}")
    return _crop_image(image, config, detector, source, label, source_sha256)


def _crop_image(image: np.ndarray, config: CropConfig, detector: Detector, source: str, label: str,
                source_sha256: str) -> PhotoOutcome:
    label_map = detector_label_map(detector)
    try:
        detections = detector.detect(image)
        crops = crop_detections(image, detections, config, label_map)
    except Exception as error:  # one photo the detector chokes on must not end a batch of thousands
        logger.warning("%s: detection failed: %s", source, error)
        return PhotoOutcome.failed(source, source_sha256, label, detector.name, f"processing-error: {error}")
    if not crops:
        return PhotoOutcome(source, source_sha256, label, STATUS_EMPTY, (CropRecord(
            source, source_sha256, STATUS_EMPTY, label=label, detector=detector.name,
            reason=describe_empty(detections, config, label_map)),))
    stem = Path(source).stem or "photo"
    files, records = [], []
    for crop in crops:
        relative = f"{label}/{stem}_{source_sha256[:10]}_{crop.index}.jpg"
        payload = encode_jpeg(crop.image, config.jpeg_quality)
        files.append(CropFile(relative, payload))
        records.append(CropRecord(
            source, source_sha256, STATUS_CROPPED, label=label, path=relative, sha256=bytes_sha256(payload),
            detector=detector.name,
            reason=None if crop.score is not None else f"whole photo: {describe_empty(detections, config, label_map)}",
            **crop.record_fields(),
        ))
    return PhotoOutcome(source, source_sha256, label, STATUS_CROPPED, tuple(records), tuple(files))


def write_outcome(dataset: str | os.PathLike, outcome: PhotoOutcome, writer: "ManifestWriter") -> None:
    """Write `outcome`'s crop files under `dataset`, then append its records with `writer`.

    Each file lands (atomically) before its record: a kill in between leaves an orphan
    that the rerun rewrites byte for byte. Drivers that collect outcomes elsewhere (a Ray
    job) call this in the one process that owns the dataset.
    """
    dataset = Path(dataset)
    files = iter(outcome.files)
    for record in outcome.records:
        if record.status == STATUS_CROPPED:
            crop_file = next(files)
            atomic_write_bytes(dataset / crop_file.path, crop_file.jpeg)
        writer.append(record)


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
    duplicates: int = 0  # photos skipped as byte-identical copies of one cropped under the same label
    not_images: int = 0  # files in the input without an image extension (not counted as photos)
    crops_per_label: dict[str, int] = field(default_factory=dict)
    manifest_records: int = 0  # records in the manifest when this run finished (resume trusts them all)
    precision: str = DEFAULT_PRECISION  # detector precision of the run ("float32" or "int8")
    skipped: list[Skipped] = field(default_factory=list)  # files in the input not used, and why

    def to_dict(self) -> dict:
        values = dict(self.__dict__)
        values["skipped"] = [{"path": str(item.path), "reason": item.reason} for item in self.skipped]
        return values


def list_photos(input_dir: str | os.PathLike, label: str | None = None,
                default_label: str = "clock") -> tuple[list[Photo], list[Skipped]]:
    """The photos to crop and the files left out (with the reason), in sorted order.

    With `label`, every image under `input_dir` (recursively) gets that label. Without it,
    `input_dir` holding class folders and no images of its own is read as class folders
    (labels from the folder names); a folder with images directly in it is one class named
    `default_label`.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise (NotAFolderError if input_dir.exists() else MissingFileError)(
            f"{input_dir}: expected a folder of photos or of class folders, "
            f"got {'a file' if input_dir.exists() else 'nothing'}"
        )
    has_own_images = any(entry.is_file() and is_image_path(entry) and not entry.name.startswith(".")
                         for entry in input_dir.iterdir())
    if label is not None or has_own_images:
        images, not_images = find_images(input_dir)
        return [Photo(path, label or default_label) for path in images], [not_an_image(path) for path in not_images]
    dataset = scan_class_folders(input_dir)
    return [Photo(sample.path, sample.label) for sample in dataset.samples], list(dataset.skipped)


@dataclass(frozen=True)
class _Loaded:
    photo: Photo
    key: tuple
    sha256: str | None
    image: np.ndarray | None = None
    error: ImageError | None = None
    done: bool = False  # an earlier run recorded this photo


def _source_key(path: str | os.PathLike) -> str:
    return os.path.normcase(os.path.abspath(path))


def _photo_key(source_path: str | os.PathLike, source_sha256: str | None, label: str | None) -> tuple:
    """What resume matches on: the photo's content and its label, so a moved or renamed input
    folder redoes nothing. A photo whose bytes could not be read has no hash: its path stands in."""
    if source_sha256:
        return ("sha256", source_sha256, label)
    return ("path", _source_key(source_path), label)


def _record_key(record: CropRecord) -> tuple:
    return _photo_key(record.source_path, record.source_sha256, record.label)


def _check_config(dataset: Path, config: CropConfig) -> None:
    """Check that an earlier run's DATASET/crop_config.json, if any, matches `config`."""
    path = dataset / CROP_CONFIG_NAME
    wanted = config_to_dict(config)
    if path.exists():
        try:
            earlier = config_to_dict(load_config_file(CropConfig, path))
        except ValueError as error:
            raise ConfigError(f"{path}: cannot read the earlier run's crop config ({error})") from None
        differences = [f"{key}: {earlier[key]!r} there, {wanted[key]!r} now" for key in wanted
                       if key not in RUNTIME_FIELDS and earlier.get(key) != wanted[key]]
        if differences:
            raise ConfigError(
                f"{dataset} was cropped with other settings ({'; '.join(differences)}); to resume it use the "
                f"same options (or --config {path}), or pick a new --out folder"
            )


def _finished_records(dataset: Path) -> int | None:
    """How many records the manifest held when the last run finished (from summary.json), if known."""
    try:
        value = json.loads((dataset / SUMMARY_NAME).read_text(encoding="utf-8")).get("manifest_records")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def _resume_state(dataset: Path) -> set[tuple]:
    """Keys (`_photo_key`) of the photos already done.

    Unless the manifest is exactly as a finished run left it, the last photo's records are
    dropped so that it is redone: a kill may have cut them short.
    """
    manifest = dataset / MANIFEST_NAME
    records = read_manifest(manifest)
    if records and len(records) != _finished_records(dataset):
        last_key = _record_key(records[-1])
        keep = len(records)
        while keep and _record_key(records[keep - 1]) == last_key:
            keep -= 1
        # A kill between two crops of one photo leaves its records short; redoing it is cheap.
        write_manifest(manifest, records[:keep])
        records = records[:keep]
    for leftover in dataset.rglob(".*.part"):
        logger.info("removing %s, left by an interrupted write", leftover)
        leftover.unlink()
    return {_record_key(record) for record in records}


def _warn_stale_records(dataset: Path, records: list[CropRecord], seen: set[tuple]) -> list[CropRecord]:
    """Records of photos that are gone from the input or now carry another label; logged, not deleted.

    `seen` holds the keys of this run's input photos. The crops stay (deleting a user's files
    on a guess is worse), but `train` reads the class folders, so a relabelled photo would
    otherwise train under both labels unnoticed.
    """
    stale = [record for record in records if _record_key(record) not in seen]
    if stale:
        examples = ", ".join(sorted({record.source_path for record in stale})[:3])
        logger.warning("%s: %d manifest record(s) are of photos no longer in the input or now under another "
                       "label (e.g. %s); their crops are still in the dataset: delete them (see manifest.jsonl) "
                       "or crop into a new folder", dataset, len(stale), examples)
    return stale


def _summarise(records: list[CropRecord], summary: CropSummary) -> CropSummary:
    statuses: dict[str, set[tuple]] = {STATUS_CROPPED: set(), STATUS_EMPTY: set(), STATUS_FAILED: set()}
    for record in records:
        statuses[record.status].add(_record_key(record))
        if record.status == STATUS_CROPPED:
            summary.crops += 1
            summary.crops_per_label[record.label] = summary.crops_per_label.get(record.label, 0) + 1
    summary.cropped = len(statuses[STATUS_CROPPED])
    summary.empty = len(statuses[STATUS_EMPTY])
    summary.failed = len(statuses[STATUS_FAILED])
    summary.crops_per_label = dict(sorted(summary.crops_per_label.items()))
    summary.manifest_records = len(records)
    return summary


def finish_crop_run(dataset: Path, summary: CropSummary, seen: set[tuple]) -> CropSummary:
    """The end of a crop job (any engine): read the manifest once, warn about stale records,
    count what it holds into `summary` and write summary.json."""
    records = read_manifest(dataset / MANIFEST_NAME)
    _warn_stale_records(dataset, records, seen)
    summary = _summarise(records, summary)
    atomic_write_json(dataset / SUMMARY_NAME, summary.to_dict())
    return summary


class CropJob:
    """The bookkeeping every crop driver shares (the local loop, the Ray driver).

    Photos are offered in input order with `claim`, which applies the resume and duplicate
    rules (an earlier run's photo, or a byte-identical copy under the same label, is counted
    and not written again); `write` hands a claimed photo's outcome to one writer thread, which
    writes crop files and manifest lines in that same order while the caller detects the next
    photos (each file and line is fsynced, which would otherwise stall the detector; chosen by
    measurement: benchmarks/RESULTS.md#crop-writer-thread). `finish` reads the manifest once and
    writes summary.json.

    >>> with CropJob(dataset, len(photos), skipped) as job:  # doctest: +SKIP
    ...     if job.claim(key, source, label, done=key in done_before):
    ...         job.write(crop_photo(...))
    >>> summary = job.finish()  # doctest: +SKIP
    """

    def __init__(self, dataset: Path, photos_seen: int, skipped: list[Skipped], depth: int = 8,
                 precision: str = DEFAULT_PRECISION):
        self.dataset = Path(dataset)
        self.summary = CropSummary(dataset=str(dataset), photos_seen=photos_seen, not_images=len(skipped),
                                   skipped=list(skipped), precision=precision)
        self.seen: set[tuple] = set()
        #: Photos handed to `write` so far, by status: the live figures of a progress bar.
        self.written: dict[str, int] = {STATUS_CROPPED: 0, STATUS_EMPTY: 0, STATUS_FAILED: 0}
        self._depth = max(1, int(depth))
        self._pending: deque = deque()
        self._failed = False

    def __enter__(self) -> "CropJob":
        self._manifest = ManifestWriter(self.dataset / MANIFEST_NAME)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="detcrop-write")
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            # After an error in the driver, what has not started writing is dropped (the rerun redoes it).
            self._pool.shutdown(wait=True, cancel_futures=exc_info[0] is not None)
            if exc_info[0] is None:
                while self._pending:
                    self._pending.popleft().result()  # a failed write raises here
        finally:
            self._manifest.close()

    def claim(self, key: tuple, source: str, label: str, done: bool = False) -> bool:
        """True when this photo is to be written; False (and counted) for resumed photos and duplicates."""
        if done:
            self.summary.skipped_done += 1
            self.seen.add(key)
            return False
        if key in self.seen:
            # A byte-identical copy under the same label: its crops would be the same pixels again.
            logger.info("%s: skipped, the same photo as one already cropped under %s", source, label)
            self.summary.duplicates += 1
            return False
        self.seen.add(key)
        return True

    def write(self, outcome: PhotoOutcome) -> None:
        """Write `outcome` on the writer thread (after every outcome written before it)."""
        self.written[outcome.status] = self.written.get(outcome.status, 0) + 1
        self._pending.append(self._pool.submit(self._write, outcome))
        while self._pending and (len(self._pending) > self._depth or self._pending[0].done()):
            self._pending.popleft().result()  # a failed write raises here, in the driver

    def _write(self, outcome: PhotoOutcome) -> None:
        if self._failed:
            return  # nothing is written after a failed write: the manifest stays a prefix of the input order
        try:
            write_outcome(self.dataset, outcome, self._manifest)
        except BaseException:
            self._failed = True
            raise

    def figures(self) -> dict[str, int]:
        """What a progress bar shows after each photo: written photos by status, resumed and duplicate ones."""
        figures = dict(self.written)
        if self.summary.skipped_done:
            figures["resumed"] = self.summary.skipped_done
        if self.summary.duplicates:
            figures["duplicates"] = self.summary.duplicates
        return figures

    def finish(self) -> CropSummary:
        """After the `with` block: the summary of the whole manifest, written to summary.json."""
        return finish_crop_run(self.dataset, self.summary, self.seen)


def _read_photo(photo: Photo, limits: ImageLimits, done: set[tuple]) -> _Loaded:
    """Read, hash and decode one photo (run on the prefetch threads); never raises an `ImageError`."""
    try:
        payload = read_image_bytes(photo.path, limits)
    except ImageError as error:
        try:
            digest = file_sha256(photo.path)  # streamed: a file over the byte limit is hashed, not held
        except OSError:
            digest = None
        key = _photo_key(photo.path, digest, photo.label)
        return _Loaded(photo, key, digest, done=key in done, error=error)
    digest = bytes_sha256(payload)
    key = _photo_key(photo.path, digest, photo.label)
    if key in done:
        return _Loaded(photo, key, digest, done=True)
    try:
        return _Loaded(photo, key, digest, image=decode_image_array(payload, limits, photo.path))
    except ImageError as error:
        return _Loaded(photo, key, digest, error=error)


def crop_photos(
    input_dir: str | os.PathLike,
    dataset: str | os.PathLike,
    config: CropConfig = CropConfig(),
    detector: Detector | None = None,
    label: str | None = None,
    progress: bool = True,
) -> CropSummary:
    """Detect and crop every photo under `input_dir` into the class-folder dataset `dataset`.

    A driver over `crop_photo`: it lists, reads and decodes the photos (on `config.workers`
    threads), calls the stage for each and writes its outcome. `detector` defaults to
    `load_detector(config.detector, config.runtime, config.precision)`, which, run by ONNX Runtime,
    detects several photos at once on a thread each (`data.runtime.parallel_split`; the same
    outcomes); pass one to reuse a loaded model (one photo at a time). Unreadable photos
    get a "failed" record and the job goes on; photos where nothing passes get an "empty"
    record with the reason. Resumable; see the module doc.
    """
    input_dir, dataset = Path(input_dir), Path(dataset)
    if label is not None:
        check_class_name(label)
    photos, skipped = list_photos(input_dir, label, default_label=default_label(config))
    for item in skipped:
        logger.debug("skipped %s", item)

    from detcrop.data.runtime import parallel_split

    batches, threads = parallel_split()

    def load() -> Detector:
        if detector is not None:
            return detector
        from detcrop.detect.base import load_configured_detector

        return load_configured_detector(config.detector, config.runtime, config.precision, threads)

    with crop_dataset(dataset, config, input_dir, input_dir, photos, skipped, load) as (loaded_detector, done):
        parallel = batches if detector is None and getattr(loaded_detector, "concurrent", False) else 1
        return _crop_into(dataset, photos, skipped, config, loaded_detector, done, progress, parallel)


@contextmanager
def crop_dataset(dataset: Path, config: CropConfig, input_name: str | os.PathLike, local_input: Path | None,
                 photos: list, skipped: list[Skipped], load: Callable[[], object]) -> Iterator[tuple[object, set[tuple]]]:
    """The set-up every crop driver shares, around its loop: (what `load()` returned, the resume state).

    Refuses an output inside or around `local_input` (a rerun would crop the crops; around
    it, the photos would become a class) and an input without photos; then, holding the
    dataset's lock, checks an earlier run's config, calls `load()` (the detector, or what the
    workers load) and only then writes crop_config.json: a detector that does not load must
    not leave a config that refuses the right command.
    """
    check_output_path(dataset, "--out", inputs=[("the input folder", local_input)], kind="folder")
    if not photos:
        raise NoPhotosError(
            f"{input_name}: no photos to crop (looked for {', '.join(sorted(IMAGE_EXTENSIONS))} files, recursively"
            + (f"; {len(skipped)} other file(s) skipped, e.g. {skipped[0]}" if skipped else "") + ")")
    with folder_lock(dataset, "crop"):
        _check_config(dataset, config)
        loaded = load()
        atomic_write_json(dataset / CROP_CONFIG_NAME, config_to_dict(config))
        yield loaded, _resume_state(dataset)


def _crop_into(dataset: Path, photos: list[Photo], skipped: list[Skipped], config: CropConfig, detector: Detector,
               done: set[tuple], progress: bool, parallel: int = 1) -> CropSummary:
    """The resumable loop of `crop_photos`, run while it holds the dataset's lock; `parallel` photos are detected
    at once (their outcomes are written in input order all the same)."""
    limits = config.image_limits
    with CropJob(dataset, len(photos), skipped, config.prefetch, config.precision) as job:
        loaded_photos = prefetched(photos, lambda photo: _read_photo(photo, limits, done), config.workers,
                                    config.prefetch)
        # Claimed in input order on this thread (resumed photos and duplicates are decided here), then cropped.
        claimed = ((loaded, job.claim(loaded.key, str(loaded.photo.path), loaded.photo.label, loaded.done))
                   for loaded in loaded_photos)

        def outcome(item: tuple) -> PhotoOutcome | None:
            loaded, wanted = item
            photo, source = loaded.photo, str(loaded.photo.path)
            if not wanted:
                return None
            if loaded.error is not None:
                logger.warning("%s", loaded.error)
                return PhotoOutcome.failed(source, loaded.sha256, photo.label, detector.name,
                                           f"{loaded.error.kind}: {loaded.error.reason}")
            return _crop_image(loaded.image, config, detector, source, photo.label, loaded.sha256)

        outcomes = map(outcome, claimed) if parallel == 1 else prefetched(claimed, outcome, parallel, parallel)
        bar = tqdm(outcomes, total=len(photos), desc="crop", unit="photo", disable=not progress)
        for result in bar:
            if result is not None:
                job.write(result)
            bar.set_postfix(job.figures(), refresh=False)
        bar.close()
    return job.finish()
