"""Stage three: score photos end to end (detect, crop as in training, classify).

`Scorer` loads the detector and the bundle once. For each photo it finds the target objects,
cuts each one exactly as the bundle's training crops were cut (the dataset's
`crop_config.json` travels in `bundle.json` as `crop_config`), classifies the crops in one
batch and returns a `PhotoResult`. With `detect=False` the whole photo is classified, for
data that is already cropped.

A photo with no detection is handled as the training crops were: when the dataset was cropped
with ``on_empty: whole-photo`` (the bundle's ``crop_config``), the classifier was trained on
whole photos for such cases, so the whole photo is scored and the object says so
(``region="whole-photo"``, a note naming why); with ``on_empty: record`` the photo has no
object. ``Scorer.load(on_empty=...)`` (``predict --on-empty``) overrides the policy either way.

The beginner's questions (as in block-coding tools) are methods of `PhotoResult`:
`top_class()`, `confidence(name)` and `is_class(name)`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence, Union

import numpy as np

from detcrop.data.config import ConfigError, build_config
from detcrop.data.images import ImageError, ImageLimits, load_image_array
from detcrop.data.runtime import AUTO, resolve_runtime

logger = logging.getLogger(__name__)

#: Label used when the top probability is under the bundle's unknown threshold.
UNKNOWN = "unknown"
#: Used when a bundle carries no threshold chosen on validation data.
FALLBACK_UNKNOWN_THRESHOLD = 0.5
#: What `ObjectResult.region` says about the region that was classified.
REGION_DETECTION = "detection"  # a detector box, cut with the training crop settings
REGION_WHOLE_PHOTO = "whole-photo"  # nothing detected; the whole photo, as on_empty=whole-photo trained it
REGION_WHOLE_IMAGE = "whole-image"  # no detector at all (detect=False): the image as given
#: Photos whose crops `Scorer.score_many` classifies in one pass.
DEFAULT_BATCH_PHOTOS = 16
#: What `Scorer.score_many` takes: a path, or a (name, bytes) pair.
PhotoSource = Union[str, os.PathLike, tuple]


class Region(NamedTuple):
    """One region of a photo to classify: a detection cut as in training, or the whole photo."""

    box: tuple | None  # detector box, pixels xyxy (None: whole photo)
    crop_box: tuple  # the region cut out
    score: float | None  # detector confidence (None: whole photo)
    image: np.ndarray  # the cut-out pixels
    region: str  # REGION_DETECTION, REGION_WHOLE_PHOTO or REGION_WHOLE_IMAGE


class ReadPhoto(NamedTuple):
    """A photo as `Scorer.read` left it: decoded, or the reason it could not be."""

    path: str
    image: np.ndarray | None
    sha256: str | None  # of the file's bytes (None when they could not be read)
    error: str | None
    seconds: float  # spent reading and decoding


@dataclass(frozen=True)
class ObjectResult:
    """One object found in a photo and what the classifier says about it."""

    box: tuple[float, float, float, float] | None  # detector box, pixels xyxy (None: whole photo)
    crop_box: tuple[int, int, int, int] | None  # region that was classified
    detector_score: float | None  # detector confidence (None: whole photo)
    probabilities: dict[str, float]  # every class, in class order
    label: str  # top class, or "unknown" when its probability is under the threshold
    top_class: str  # top class regardless of the threshold
    top_probability: float
    region: str = REGION_DETECTION  # REGION_DETECTION, REGION_WHOLE_PHOTO (no detection) or REGION_WHOLE_IMAGE

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PhotoResult:
    """What `Scorer.score` says about one photo."""

    path: str
    objects: tuple[ObjectResult, ...] = ()
    error: str | None = None  # the photo could not be read (the reason)
    note: str | None = None  # why no object was detected, when none was (also when the whole photo was scored)
    seconds: float = 0.0  # wall time spent on this photo (read, detect, crop, its share of the classifier pass)
    sha256: str | None = None  # of the photo's bytes, when it was read from a file or bytes

    def top_class(self) -> str | None:
        """Which class? The label of the most confident object; None when nothing was found."""
        if not self.objects:
            return None
        return max(self.objects, key=lambda item: item.top_probability).label

    def confidence(self, class_name: str) -> float:
        """The confidence of class X: its highest probability over the objects; 0 when nothing was found."""
        return max((item.probabilities[class_name] for item in self.objects), default=0.0)

    def is_class(self, class_name: str) -> bool:
        """Is it class X? True when the photo's top class is X (never when nothing was found)."""
        return self.top_class() == class_name

    def to_dict(self) -> dict:
        return {
            "path": self.path, "error": self.error, "note": self.note, "seconds": round(self.seconds, 4),
            "top_class": self.top_class(), "objects": [item.to_dict() for item in self.objects],
        }


@dataclass
class Scorer:
    """Detector + bundle, loaded once; see the module doc.

    >>> scorer = Scorer.load("runs/watches")  # doctest: +SKIP
    >>> scorer.score("photo.jpg").top_class()  # doctest: +SKIP
    'rolex'
    """

    bundle: object  # classify.bundle.Bundle
    detector: object | None  # detect.base.Detector, None for whole-photo scoring
    crop_config: object  # detect.crop.CropConfig
    unknown_threshold: float
    limits: ImageLimits = field(default_factory=ImageLimits)
    tta_flip: bool | None = None  # None: as the bundle was evaluated

    @classmethod
    def load(cls, run_dir: str | os.PathLike, detector: str | None = None, detect: bool = True,
             unknown_threshold: float | None = None, max_objects: int = 10, score_threshold: float | None = None,
             limits: ImageLimits = ImageLimits(), detector_runtime: str | None = None,
             on_empty: str | None = None, classifier_runtime: str | None = None,
             detector_precision: str | None = None, threads: int | None = None) -> "Scorer":
        """Load the bundle in `run_dir` and (unless `detect=False`) the detector it was cropped with.

        `detector` overrides the detector named in the bundle's crop config, which loads only
        when it is a registered name (see `detect.base.detector_to_load`); `max_objects`
        caps the objects scored per photo (training may keep only the best one); a
        `score_threshold` overrides the crop config's; `detector_runtime` and
        `classifier_runtime` ("onnx", "tensorflow"; None = "auto": ONNX Runtime where installed
        and the model converts) choose the runtimes, whatever runtime the training crops were
        made with (both give the same answers up to float rounding: a speed setting, not a result
        setting); ONNX models are converted once and cached. `on_empty` ("record" or "whole-photo") overrides what
        happens to a photo with no detection; None keeps the training crops' policy (the crop
        config's ``on_empty``, "record" when the bundle has none). `detector_precision` ("float32",
        "int8") overrides the crop config's ``precision``; None keeps the training crops' one.
        `threads` sets ONNX Runtime's threads per model call (None: all cores; 1 for a scorer
        that scores batches on several threads at once, see `score_many`).
        """
        from detcrop.classify.bundle import load_bundle, read_bundle_metadata
        from detcrop.detect.crop import CropConfig

        metadata = read_bundle_metadata(run_dir)  # the model loads after every check: nothing loads for a refusal
        saved = dict(metadata.crop_config or {})
        if detect and not saved:
            logger.warning("%s: bundle has no crop_config (not trained on detcrop crops); using crop defaults", run_dir)
        runtime = {"max_crops_per_photo": max_objects}
        if on_empty is not None:
            runtime["on_empty"] = on_empty
        if detect:
            from detcrop.data.layout import BUNDLE_NAME
            from detcrop.detect.base import detector_to_load

            # The run folder is data: it may name a registered detector, not a model to run.
            runtime["detector"] = detector_to_load(saved.get("detector"), detector,
                                                   f"{os.path.join(run_dir, BUNDLE_NAME)} (crop_config.detector)")
        if score_threshold is not None:
            runtime["score_threshold"] = score_threshold
        runtime["runtime"] = detector_runtime or AUTO
        if detector_precision is not None:
            runtime["precision"] = detector_precision
        crop_config = build_config(CropConfig, {**saved, **runtime})
        threshold = unknown_threshold
        if threshold is None:
            threshold = metadata.unknown_threshold
        if threshold is None:
            threshold = FALLBACK_UNKNOWN_THRESHOLD
            logger.warning("%s: bundle has no unknown_threshold; using %.2f", run_dir, threshold)
        if not 0.0 <= float(threshold) <= 1.0:
            raise ConfigError(f"unknown threshold must be in [0, 1], got {threshold}")
        if resolve_runtime(classifier_runtime or AUTO) == "onnx":
            from detcrop.classify.onnx_runtime import load_onnx_bundle

            bundle = load_onnx_bundle(run_dir, threads=threads)  # a cached conversion runs without the Keras model
        else:
            bundle = load_bundle(run_dir)
        loaded_detector = None
        if detect:
            from detcrop.detect.base import load_configured_detector

            loaded_detector = load_configured_detector(crop_config.detector, crop_config.runtime, crop_config.precision,
                                                       threads)
        return cls(bundle=bundle, detector=loaded_detector, crop_config=crop_config,
                   unknown_threshold=float(threshold), limits=limits)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.bundle.class_names

    def regions(self, image: np.ndarray) -> tuple[list[Region], str | None]:
        """Detect and crop `image` as in training: (the regions to classify, why nothing was detected)."""
        from detcrop.detect.base import detector_label_map
        from detcrop.detect.crop import crop_detections, describe_empty

        if self.detector is None:
            height, width = image.shape[:2]
            return [Region(None, (0, 0, width, height), None, image, REGION_WHOLE_IMAGE)], None
        detections = self.detector.detect(image)
        label_map = detector_label_map(self.detector)
        crops = crop_detections(image, detections, self.crop_config, label_map)
        # A whole-photo crop (on_empty="whole-photo") is the only kind without a detector score.
        regions = [Region(None, crop.crop_box, None, crop.image, REGION_WHOLE_PHOTO) if crop.score is None
                   else Region(crop.box, crop.crop_box, crop.score, crop.image, REGION_DETECTION) for crop in crops]
        note = None
        if not crops or crops[0].score is None:
            note = describe_empty(detections, self.crop_config, label_map)
            if crops:
                note += "; scored the whole photo"
        return regions, note

    def classify(self, regions: list[Region]) -> list[ObjectResult]:
        """One classifier pass over `regions` (of any number of photos), in order."""
        if not regions:
            return []
        probabilities = self.bundle.predict([region.image for region in regions], batch_size=len(regions),
                                            tta_flip=self.tta_flip)
        objects = []
        for region, row in zip(regions, probabilities):
            top = int(np.argmax(row))
            objects.append(ObjectResult(
                box=None if region.box is None else tuple(round(float(value), 2) for value in region.box),
                crop_box=tuple(int(value) for value in region.crop_box),
                detector_score=None if region.score is None else round(float(region.score), 6),
                probabilities={name: round(float(value), 6) for name, value in zip(self.class_names, row)},
                label=self.class_names[top] if row[top] >= self.unknown_threshold else UNKNOWN,
                top_class=self.class_names[top],
                top_probability=round(float(row[top]), 6),
                region=region.region,
            ))
        return objects

    def score_images(self, photos: Sequence[ReadPhoto]) -> list[PhotoResult]:
        """Score decoded photos together: each is detected and cropped, then all their crops are classified in
        one pass. A photo that failed to read (or that the detector chokes on) gets a result with `error`."""
        detected = []  # (photo, regions, note, error, seconds spent on it)
        for photo in photos:
            if photo.image is None:
                detected.append((photo, [], None, photo.error, photo.seconds))
                continue
            start = time.perf_counter()
            try:
                regions, note = self.regions(photo.image)
                detected.append((photo, regions, note, None, photo.seconds + time.perf_counter() - start))
            except Exception as error:  # one photo the models choke on must not end a batch
                logger.warning("%s: scoring failed: %s", photo.path, error)
                detected.append((photo, [], None, f"processing error: {error}", photo.seconds))
        start = time.perf_counter()
        objects = iter(self.classify([region for _, regions, _, _, _ in detected for region in regions]))
        share = (time.perf_counter() - start) / max(1, len(photos))  # the shared pass, split evenly
        return [PhotoResult(path=photo.path, objects=tuple(next(objects) for _ in regions), error=error, note=note,
                            seconds=seconds + share, sha256=photo.sha256)
                for photo, regions, note, error, seconds in detected]

    def read(self, item: PhotoSource, skip: Callable[[str, str], bool] | None = None) -> ReadPhoto | None:
        """Read and decode one photo (a path, or (name, bytes)); a failure is a `ReadPhoto` with `error`.

        None when `skip(path, sha256)` says the photo needs no scoring (a resumed job has it).
        """
        from detcrop.data.images import bytes_sha256, decode_image_array, read_image_bytes

        start = time.perf_counter()
        path, payload = (str(item[0]), item[1]) if isinstance(item, tuple) else (str(item), None)
        sha256 = None
        try:
            payload = read_image_bytes(path, self.limits) if payload is None else bytes(payload)
            sha256 = bytes_sha256(payload)
            if skip is not None and skip(path, sha256):
                return None
            image = decode_image_array(payload, self.limits, path)
        except (ImageError, OSError) as error:
            reason = error.reason if isinstance(error, ImageError) else f"cannot read file ({error})"
            if sha256 is None and skip is not None and skip(path, None):
                return None  # unreadable then and now
            return ReadPhoto(path, None, sha256, reason, time.perf_counter() - start)
        return ReadPhoto(path, image, sha256, None, time.perf_counter() - start)

    def score_image(self, image: np.ndarray, path: str = "<array>") -> PhotoResult:
        """Score an already decoded uint8 (H, W, 3) image."""
        return self.score_images([ReadPhoto(path, image, None, None, 0.0)])[0]

    def score(self, path: str | os.PathLike) -> PhotoResult:
        """Read and score one photo; an unreadable photo gives a result with `error`, never an exception."""
        return self.score_images([self.read(path)])[0]

    def score_many(self, photos: Iterable[PhotoSource], batch_size: int = DEFAULT_BATCH_PHOTOS,
                   workers: int = 2, skip: Callable[[str, str | None], bool] | None = None,
                   parallel: int = 1) -> Iterator[PhotoResult]:
        """Score a stream of photos (paths, or (name, bytes) pairs), yielding results in input order.

        Photos are read and decoded ahead on `workers` threads; the crops of `batch_size`
        photos at a time go through the classifier in one pass, and `parallel` such batches
        are scored at once on as many threads (pays with ONNX Runtime models loaded with
        ``threads=1``, see `data.runtime.parallel_split`; the results are the same). Memory stays
        flat however long the stream (a crawl, a generator over a bucket listing). Photos for which
        ``skip(path, sha256)`` is true are read and hashed but not scored, nor yielded.

        >>> for result in Scorer.load("runs/watches").score_many(Path("crawl").rglob("*.jpg")):  # doctest: +SKIP
        ...     print(result.path, result.top_class())
        """
        from detcrop.data.streams import batched, prefetched

        for name, value in (("batch_size", batch_size), ("parallel", parallel)):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        read = prefetched(photos, lambda item: self.read(item, skip), workers, depth=2 * batch_size)
        batches = batched((photo for photo in read if photo is not None), batch_size)
        scored = map(self.score_images, batches) if parallel == 1 else \
            prefetched(batches, self.score_images, parallel, depth=parallel)
        for results in scored:
            yield from results
