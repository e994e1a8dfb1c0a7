"""`crop_photo`, stage one as a pure function, and resume keyed on (content hash, label)."""

import io
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detcrop.data.folders import ClassNameError
from detcrop.data.manifest import MANIFEST_NAME, read_manifest
from detcrop.detect.crop import CropConfig, PhotoOutcome, crop_photo, crop_photos
from detect_helpers import BLUE, RED, ColourBoxDetector, save_scene, scene


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bytes_in_crops_and_records_out_with_no_file_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payload = png_bytes(scene((120, 90), {RED: (10, 10, 40, 50), BLUE: (70, 20, 110, 60)}))
    config = CropConfig(max_crops_per_photo=2, margin=0.0, square="none", min_size=8)
    outcome = crop_photo(payload, config, ColourBoxDetector(), source="in/a.png", label="omega")
    assert outcome.status == "cropped" and outcome.reason is None
    assert [file.path for file in outcome.files] == [record.path for record in outcome.records]
    assert outcome.files[0].path.startswith("omega/a_") and outcome.files[0].path.endswith("_0.jpg")
    assert [record.crop_box for record in outcome.records] == [(10, 10, 40, 50), (70, 20, 110, 60)]
    with Image.open(io.BytesIO(outcome.files[0].jpeg)) as crop:
        assert crop.format == "JPEG" and crop.size == (30, 40)
    assert list(tmp_path.iterdir()) == []  # the stage writes nothing
    # Plain dataclasses: an outcome (and the config) cross process boundaries as they are.
    assert pickle.loads(pickle.dumps(outcome)) == outcome
    assert pickle.loads(pickle.dumps(config)) == config


def test_bytes_and_array_give_the_same_outcome():
    array = scene((64, 64), {RED: (8, 8, 40, 40)})
    payload = png_bytes(array)
    from_bytes = crop_photo(payload, CropConfig(), ColourBoxDetector(), source="x.png")
    from detcrop.data.images import bytes_sha256

    from_array = crop_photo(array, CropConfig(), ColourBoxDetector(), source="x.png",
                            source_sha256=bytes_sha256(payload))
    assert from_bytes == from_array and from_bytes.label == "clock"  # default: the first target's name


@pytest.mark.parametrize("payload, config, status, reason_start", [
    (b"", CropConfig(), "failed", "unreadable: empty file (0 bytes)"),
    (b"\xff\xd8\xff\xe0 not really a jpeg", CropConfig(), "failed", "unreadable: cannot decode image"),
    (b"hello, I am not an image", CropConfig(), "failed", "unreadable: not a recognisable image"),
    (png_bytes(scene((300, 300), {})), CropConfig(max_pixels=200 * 200), "failed", "decompression-bomb: 300x300"),
    (png_bytes(scene((64, 64), {})), CropConfig(max_bytes=100), "failed", "too-large: file is"),
    (png_bytes(scene((64, 64), {})), CropConfig(), "empty", "no clock detected"),
])
def test_bad_or_empty_photos_give_a_reason_not_an_exception(payload, config, status, reason_start):
    outcome = crop_photo(payload, config, ColourBoxDetector(), source="p.jpg")
    assert outcome.status == status and outcome.files == () and len(outcome.records) == 1
    assert outcome.reason.startswith(reason_start), outcome.reason
    assert outcome.source_sha256 is not None


@pytest.mark.parametrize("label", ["../x", "../../x", "/abs/path", ".hidden", "a\\b", ""])
def test_a_label_that_is_not_one_folder_name_is_refused(label):
    with pytest.raises(ClassNameError, match="plain folder name"):
        crop_photo(png_bytes(scene((32, 32), {})), CropConfig(), ColourBoxDetector(), label=label)


def test_a_wrong_photo_type_is_the_callers_mistake():
    with pytest.raises(TypeError, match="bytes or a uint8 RGB array"):
        crop_photo("a.jpg", CropConfig(), ColourBoxDetector())


def test_failed_outcome_is_one_record():
    outcome = PhotoOutcome.failed("a.jpg", None, "clock", "det", "unreadable: file not found")
    assert (outcome.status, outcome.reason, outcome.records[0].label) == ("failed", "unreadable: file not found",
                                                                           "clock")


# ------------------------------------------------------------------ resume on (content hash, label)


@pytest.fixture
def brand_folders(tmp_path):
    root = tmp_path / "photos"
    save_scene(root / "omega" / "a.png", (120, 90), {RED: (10, 10, 40, 50)})
    save_scene(root / "omega" / "b.png", (90, 90), {})
    save_scene(root / "rolex" / "c.png", (100, 80), {BLUE: (60, 40, 100, 80)})
    (root / "rolex" / "broken.jpg").write_bytes(b"\xff\xd8 broken")
    return root


def test_moving_and_renaming_the_input_folder_redoes_nothing(brand_folders, tmp_path):
    out = tmp_path / "dataset"
    detector = ColourBoxDetector()
    crop_photos(brand_folders, out, detector=detector, progress=False)
    records = read_manifest(out / MANIFEST_NAME)
    files = sorted(path.relative_to(out) for path in out.rglob("*.jpg"))
    calls = detector.calls

    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(brand_folders, moved)
    summary = crop_photos(moved, out, detector=detector, progress=False)
    assert detector.calls == calls  # no photo redone
    assert read_manifest(out / MANIFEST_NAME) == records  # no record added
    assert sorted(path.relative_to(out) for path in out.rglob("*.jpg")) == files
    assert (summary.photos_seen, summary.skipped_done) == (4, 4)
    assert (summary.cropped, summary.empty, summary.failed) == (2, 1, 1)


def test_a_renamed_photo_is_not_redone_but_a_relabelled_one_is(brand_folders, tmp_path):
    out = tmp_path / "dataset"
    crop_photos(brand_folders, out, detector=ColourBoxDetector(), progress=False)
    before = len(read_manifest(out / MANIFEST_NAME))
    (brand_folders / "omega" / "a.png").rename(brand_folders / "omega" / "a-renamed.png")
    crop_photos(brand_folders, out, detector=ColourBoxDetector(), progress=False)
    assert len(read_manifest(out / MANIFEST_NAME)) == before
    (brand_folders / "omega" / "a-renamed.png").rename(brand_folders / "rolex" / "a.png")
    crop_photos(brand_folders, out, detector=ColourBoxDetector(), progress=False)
    added = read_manifest(out / MANIFEST_NAME)[before:]
    assert [(record.label, Path(record.source_path).name) for record in added] == [("rolex", "a.png")]


def test_a_byte_identical_copy_under_one_label_is_cropped_once(tmp_path):
    folder = tmp_path / "in"
    save_scene(folder / "a.png", (64, 64), {RED: (8, 8, 40, 40)})
    shutil.copy(folder / "a.png", folder / "copy.png")
    summary = crop_photos(folder, tmp_path / "out", detector=ColourBoxDetector(), label="clock", progress=False)
    assert (summary.photos_seen, summary.cropped, summary.crops, summary.duplicates) == (2, 1, 1, 1)


# ------------------------------------------------------------------ label maps and the registry


class OwnNumbering(ColourBoxDetector):
    """A detector whose label map numbers its classes its own way: 1 is a clock, 85 a dog."""

    name = "own-numbering"
    label_map = {1: "clock", 85: "dog"}

    def detect(self, image):
        detections = super().detect(image)
        from detcrop.detect.detections import Detections

        ids = np.ones(len(detections), np.int64)
        return Detections(detections.boxes_xyxy, detections.scores, ids, ("clock",) * len(detections),
                          detections.image_size)


@pytest.mark.parametrize("targets", [("clock",), ("1",)])
def test_targets_are_matched_by_name_through_the_detectors_label_map(targets):
    payload = png_bytes(scene((64, 64), {RED: (8, 8, 40, 40)}))
    outcome = crop_photo(payload, CropConfig(targets=targets), OwnNumbering(), source="a.png", label="clock")
    assert outcome.status == "cropped" and outcome.records[0].class_name == "clock"
    assert outcome.records[0].class_id == 1
    # COCO's 85 is this detector's dog: asking for it finds nothing, and says so by its name here.
    empty = crop_photo(payload, CropConfig(targets=("85",)), OwnNumbering(), source="a.png", label="clock")
    assert empty.status == "empty" and empty.reason == "no dog detected"


def test_registered_detectors_load_by_name_and_crop_uses_them(tmp_path, monkeypatch):
    from detcrop.detect import base

    monkeypatch.setattr(base, "DETECTORS", dict(base.DETECTORS))
    entry = base.register_detector("fake-colour", ColourBoxDetector, "colour boxes, for tests")
    assert base.is_registered_detector("fake-colour") and not base.is_registered_detector("/tmp/model.pb")
    assert isinstance(base.load_detector("fake-colour"), ColourBoxDetector) and entry.name == "fake-colour"
    save_scene(tmp_path / "in" / "a.png", (64, 64), {RED: (8, 8, 40, 40)})
    summary = crop_photos(tmp_path / "in", tmp_path / "out", CropConfig(detector="fake-colour"), progress=False)
    assert summary.crops == 1
    assert {"ssd-mobilenet-v2", "faster-rcnn-resnet50-1024"} <= set(base.DETECTORS)
    with pytest.raises(ValueError, match="must not look like a path"):
        base.register_detector("models/x.pb", ColourBoxDetector, "a path")
