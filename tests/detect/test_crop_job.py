"""crop_detections and the crop_photos job: layout, records, resume after a kill, bad files."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detcrop import detect
import detcrop.detect.crop
from detcrop.data.config import load_config_file
from detcrop.data.manifest import MANIFEST_NAME, read_manifest
from detcrop.detect.crop import CropConfig, crop_detections, crop_photos, describe_empty
from detect_helpers import BLUE, GREEN, RED, ColourBoxDetector, save_scene, scene


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes), summary aside (it counts this run's skips)."""
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*"))
            if path.is_file() and path.name != "summary.json"}


# ------------------------------------------------------------------ one image


def test_crop_detections_keeps_targets_above_threshold_best_first():
    image = scene((200, 100), {RED: (10, 10, 50, 60), BLUE: (120, 20, 180, 80), GREEN: (60, 70, 80, 90)})
    detections = ColourBoxDetector().detect(image)
    config = CropConfig(score_threshold=0.5, margin=0.0, square="none", max_crops_per_photo=5)
    crops = crop_detections(image, detections, config)
    assert [crop.score for crop in crops] == pytest.approx([0.9, 0.7])  # green (0.2) is under the threshold
    assert [crop.crop_box for crop in crops] == [(10, 10, 50, 60), (120, 20, 180, 80)]
    assert [crop.index for crop in crops] == [0, 1]
    assert np.all(crops[0].image == RED) and crops[0].image.shape == (50, 40, 3)
    fields = crops[1].record_fields()
    assert fields["class_name"] == "clock" and fields["class_id"] == 85 and fields["box"] == (120, 20, 180, 80)


@pytest.mark.parametrize("config, expected_reason", [
    (CropConfig(targets=("bottle",)), "no bottle detected"),
    (CropConfig(score_threshold=0.95), "no clock with score >= 0.95 (best 0.900)"),
    (CropConfig(min_size=60), "1 clock box(es) passed the score threshold but were rejected: 1 under min_size 60 px"),
])
def test_no_crop_says_why(config, expected_reason):
    image = scene((100, 100), {RED: (10, 10, 40, 40)})
    detections = ColourBoxDetector().detect(image)
    assert crop_detections(image, detections, config) == []
    assert describe_empty(detections, config) == expected_reason


def test_whole_photo_on_empty_crops_the_photo_squared():
    image = scene((100, 60), {})
    crops = crop_detections(image, ColourBoxDetector().detect(image), CropConfig(on_empty="whole-photo", square="pad"))
    assert len(crops) == 1 and crops[0].score is None
    assert crops[0].crop_box == (0, -20, 100, 80) and crops[0].image.shape == (100, 100, 3)


def test_crop_detections_refuses_detections_of_another_image():
    detections = ColourBoxDetector().detect(scene((50, 50), {RED: (1, 1, 20, 20)}))
    with pytest.raises(ValueError, match="detections are for a"):
        crop_detections(scene((60, 50), {}), detections)


@pytest.mark.parametrize("overrides, error", [
    ({"targets": ("clok",)}, "did you mean 'clock'"),
    ({"score_threshold": 1.5}, "score_threshold must be in"),
    ({"square": "round"}, "square must be one of"),
    ({"on_empty": "skip"}, "on_empty must be one of"),
    ({"pad_color": (0, 0)}, "pad_color must be 3 values"),
    ({"max_crops_per_photo": 0}, "max_crops_per_photo must be"),
])
def test_crop_config_rejects_bad_values(overrides, error):
    with pytest.raises(ValueError, match=error):
        CropConfig(**overrides)


# ------------------------------------------------------------------ folders


@pytest.fixture
def brand_folders(tmp_path):
    """Class folders: two photos with two objects, one with none, one in a nested folder."""
    root = tmp_path / "photos"
    save_scene(root / "omega" / "a.png", (120, 90), {RED: (10, 10, 40, 50), BLUE: (70, 20, 110, 60)})
    save_scene(root / "omega" / "b.png", (90, 90), {})
    save_scene(root / "rolex" / "2019" / "c.png", (100, 80), {BLUE: (60, 40, 100, 80)})
    save_scene(root / "rolex" / "d.png", (80, 120), {RED: (0, 0, 30, 100), BLUE: (40, 90, 70, 120)})
    (root / "rolex" / "notes.txt").write_text("not a photo")
    return root


def test_class_folders_become_labelled_crops_with_manifest(brand_folders, tmp_path):
    out = tmp_path / "dataset"
    config = CropConfig(max_crops_per_photo=2, margin=0.0, square="none", min_size=8)
    summary = crop_photos(brand_folders, out, config, detector=ColourBoxDetector(), progress=False)
    assert (summary.photos_seen, summary.cropped, summary.empty, summary.failed, summary.crops) == (4, 3, 1, 0, 5)
    assert summary.crops_per_label == {"omega": 2, "rolex": 3} and summary.not_images == 1
    records = read_manifest(out / MANIFEST_NAME)
    assert [(Path(record.source_path).name, record.status, record.index) for record in records] == [
        ("a.png", "cropped", 0), ("a.png", "cropped", 1), ("b.png", "empty", None),
        ("d.png", "cropped", 0), ("d.png", "cropped", 1), ("c.png", "cropped", 0)]  # a folder's files, then subfolders
    first = records[0]
    assert first.path.startswith("omega/a_") and first.path.endswith("_0.jpg")
    assert first.source_sha256[:10] in first.path and first.crop_box == (10, 10, 40, 50)
    assert first.detector == "fake-colour-boxes" and first.score == pytest.approx(0.9)
    with Image.open(out / first.path) as crop:
        assert crop.size == (30, 40)
    assert records[2].reason == "no clock detected"
    assert load_config_file(CropConfig, out / "crop_config.json") == config
    assert json.loads((out / "summary.json").read_text())["crops"] == 5
    files = sorted(str(path.relative_to(out)) for path in out.rglob("*.jpg"))
    assert files == sorted(record.path for record in records if record.path)


def test_flat_folder_is_one_class_named_by_label(tmp_path):
    save_scene(tmp_path / "in" / "x.png", (64, 64), {RED: (8, 8, 40, 40)})
    summary = crop_photos(tmp_path / "in", tmp_path / "out", detector=ColourBoxDetector(), label="watch",
                          progress=False)
    assert summary.crops_per_label == {"watch": 1}
    summary = crop_photos(tmp_path / "in", tmp_path / "out2", detector=ColourBoxDetector(), progress=False)
    assert summary.crops_per_label == {"clock": 1}  # default label: the first target's name


def test_output_inside_input_is_refused(brand_folders):
    with pytest.raises(ValueError, match="inside the input folder"):
        crop_photos(brand_folders, brand_folders / "crops", detector=ColourBoxDetector(), progress=False)


def test_resume_with_other_settings_is_refused(brand_folders, tmp_path):
    crop_photos(brand_folders, tmp_path / "out", CropConfig(), detector=ColourBoxDetector(), progress=False)
    with pytest.raises(ValueError, match=r"margin: 0.1 there, 0.3 now"):
        crop_photos(brand_folders, tmp_path / "out", CropConfig(margin=0.3), detector=ColourBoxDetector(),
                    progress=False)
    # Speed settings may change between runs.
    crop_photos(brand_folders, tmp_path / "out", CropConfig(workers=1), detector=ColourBoxDetector(), progress=False)


class SimulatedKill(BaseException):
    """Stands in for SIGKILL; a BaseException so that nothing on the way catches it."""


@pytest.mark.parametrize("kill_after_appends", [1, 2, 4, 5])
def test_resume_after_kill_matches_an_uninterrupted_run(brand_folders, tmp_path, monkeypatch, kill_after_appends):
    (brand_folders / "rolex" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    config = CropConfig(max_crops_per_photo=2, min_size=8, workers=2, prefetch=2)
    crop_photos(brand_folders, tmp_path / "reference", config, detector=ColourBoxDetector(), progress=False)

    resumed = tmp_path / "resumed"
    real_append = detect.crop.ManifestWriter.append
    appended = []

    def append_then_die(writer, record):
        if len(appended) == kill_after_appends:
            raise SimulatedKill()
        appended.append(record)
        real_append(writer, record)

    monkeypatch.setattr(detect.crop.ManifestWriter, "append", append_then_die)
    with pytest.raises(SimulatedKill):
        crop_photos(brand_folders, resumed, config, detector=ColourBoxDetector(), progress=False)
    monkeypatch.setattr(detect.crop.ManifestWriter, "append", real_append)
    assert len(read_manifest(resumed / MANIFEST_NAME)) == kill_after_appends
    # What a real kill can leave besides: a half-written crop and a half-written record.
    (resumed / "omega" / ".a_0123456789_0.jpg.x1y2.part").write_bytes(b"\xff\xd8half")
    with open(resumed / MANIFEST_NAME, "a", encoding="utf-8") as manifest:
        manifest.write('{"source_path": "/half/writ')

    detector = ColourBoxDetector()
    summary = crop_photos(brand_folders, resumed, config, detector=detector, progress=False)
    assert tree(resumed) == tree(tmp_path / "reference")
    assert read_manifest(resumed / MANIFEST_NAME) == read_manifest(tmp_path / "reference" / MANIFEST_NAME)
    assert not list(resumed.rglob("*.part"))
    done_before = len({record.source_path for record in appended})
    # Photos recorded before the kill are skipped, except the last one, which is redone.
    assert summary.skipped_done == done_before - 1
    assert (summary.cropped, summary.empty, summary.failed) == (3, 1, 1)


def test_bad_files_are_recorded_and_never_fatal(tmp_path):
    folder = tmp_path / "bad"
    good = save_scene(folder / "good.png", (64, 64), {RED: (10, 10, 50, 50)})
    Image.fromarray(scene((64, 64), {RED: (1, 1, 60, 60)})).save(folder / "real.jpg", quality=90)
    payload = (folder / "real.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(payload[: len(payload) // 2])
    (folder / "corrupt.jpg").write_bytes(bytes(range(256)) * 8)
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("hello, I am not an image\n")
    Image.fromarray(scene((300, 300), {})).save(folder / "huge.png")  # over the pixel limit below
    (folder / "notes.txt").write_text("skipped by extension, not a failed photo")
    (folder / "real.jpg").unlink()
    config = CropConfig(max_pixels=200 * 200)
    summary = crop_photos(folder, tmp_path / "out", config, detector=ColourBoxDetector(), label="clock",
                          progress=False)
    assert (summary.photos_seen, summary.cropped, summary.failed, summary.not_images) == (6, 1, 5, 1)
    by_name = {Path(record.source_path).name: record for record in read_manifest(tmp_path / "out" / MANIFEST_NAME)}
    assert by_name["good.png"].status == "cropped" and by_name["good.png"].source_path == str(good)
    expected_kinds = {"truncated.jpg": "unreadable", "corrupt.jpg": "unreadable", "empty.png": "unreadable",
                      "text.png": "unreadable", "huge.png": "decompression-bomb"}
    for name, kind in expected_kinds.items():
        record = by_name[name]
        assert record.status == "failed" and record.reason.startswith(kind + ":"), (name, record.reason)
        assert record.source_sha256 is not None  # the bytes are hashed even when they do not decode
    assert "empty file" in by_name["empty.png"].reason


def test_a_box_without_area_is_rejected_not_fatal():
    from detcrop.detect.detections import Detections

    image = scene((100, 100), {RED: (10, 10, 40, 40)})
    detections = Detections(np.array([[100, 10, 100, 50], [10, 10, 40, 40]], np.float32),
                            np.array([0.95, 0.8], np.float32), np.array([85, 85]), ("clock", "clock"), (100, 100))
    config = CropConfig(margin=0.0, square="none", min_size=8)
    (crop,) = crop_detections(image, detections, config)
    assert crop.crop_box == (10, 10, 40, 40) and crop.score == pytest.approx(0.8)
    only_flat = detections.select(np.array([True, False]))
    assert crop_detections(image, only_flat, config) == []
    assert describe_empty(only_flat, config) == "1 clock box(es) passed the score threshold but were rejected: 1 with no area"


class ChokesOnBlue(ColourBoxDetector):
    """Raises on photos with blue in them, as a detector might on one odd input."""

    def detect(self, image):
        if np.all(image == np.array(BLUE, np.uint8), axis=2).any():
            raise RuntimeError("graph execution failed")
        return super().detect(image)


def test_a_photo_the_detector_fails_on_is_a_failed_record(tmp_path):
    folder = tmp_path / "in"
    save_scene(folder / "a.png", (64, 64), {RED: (10, 10, 50, 50)})
    save_scene(folder / "b.png", (64, 64), {BLUE: (10, 10, 50, 50)})
    save_scene(folder / "c.png", (64, 64), {RED: (5, 5, 40, 40)})
    summary = crop_photos(folder, tmp_path / "out", CropConfig(), detector=ChokesOnBlue(), label="clock",
                          progress=False)
    assert (summary.cropped, summary.failed) == (2, 1)
    (failed,) = [record for record in read_manifest(tmp_path / "out" / MANIFEST_NAME) if record.status == "failed"]
    assert Path(failed.source_path).name == "b.png" and "graph execution failed" in failed.reason


def test_rerun_warns_about_photos_moved_or_removed_from_the_input(brand_folders, tmp_path, caplog):
    out = tmp_path / "out"
    crop_photos(brand_folders, out, CropConfig(), detector=ColourBoxDetector(), progress=False)
    moved = next((brand_folders / "omega").iterdir())
    moved.rename(brand_folders / "rolex" / moved.name)
    with caplog.at_level("WARNING"):
        crop_photos(brand_folders, out, CropConfig(), detector=ColourBoxDetector(), progress=False)
    assert "1 manifest record(s) are of photos no longer in the input or now under another label" in caplog.text


def test_a_failed_write_stops_the_job_and_nothing_after_it_is_written(brand_folders, tmp_path, monkeypatch):
    """Crops are written on a thread beside the detector; its first error ends the job, in input order."""
    real_write = detect.crop.write_outcome
    calls, written = [], []

    def write_then_fail(dataset, outcome, writer):  # the second write fails, later ones would succeed
        calls.append(outcome.source_path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        written.append(outcome.source_path)
        real_write(dataset, outcome, writer)

    monkeypatch.setattr(detect.crop, "write_outcome", write_then_fail)
    with pytest.raises(OSError, match="No space left"):
        crop_photos(brand_folders, tmp_path / "out", CropConfig(min_size=8), detector=ColourBoxDetector(),
                    progress=False)
    assert {Path(record.source_path).name for record in read_manifest(tmp_path / "out" / MANIFEST_NAME)} == \
        {"a.png"} and len(written) == 1


class ConcurrentColourBoxes(ColourBoxDetector):
    """The fake detector, declared safe to call from several threads (as ONNX Runtime's is)."""

    concurrent = True

    def __init__(self):
        super().__init__()
        self.threads = set()

    def detect(self, image):
        import threading

        self.threads.add(threading.current_thread().name)
        return super().detect(image)


def test_photos_detected_at_once_give_the_same_dataset_as_one_at_a_time(brand_folders, tmp_path, monkeypatch):
    import shutil

    from detcrop.detect import base

    (brand_folders / "rolex" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    shutil.copy(brand_folders / "omega" / "a.png", brand_folders / "omega" / "a-copy.png")  # a duplicate
    for index in range(12):
        save_scene(brand_folders / "rolex" / f"e{index:02d}.png", (90, 70), {RED: (index, 5, 40 + index, 50)})
    config = CropConfig(max_crops_per_photo=2, min_size=8)
    reference = crop_photos(brand_folders, tmp_path / "reference", config, detector=ColourBoxDetector(),
                            progress=False)
    detector = ConcurrentColourBoxes()
    monkeypatch.setattr(base, "load_detector", lambda name, **kwargs: detector)
    monkeypatch.setattr("detcrop.data.runtime.parallel_split", lambda cores=None: (3, 1))
    summary = crop_photos(brand_folders, tmp_path / "parallel", config, progress=False)
    assert len(detector.threads) > 1  # photos were detected on several threads
    assert tree(tmp_path / "parallel") == tree(tmp_path / "reference")
    assert (summary.cropped, summary.empty, summary.failed, summary.duplicates) == \
        (reference.cropped, reference.empty, reference.failed, reference.duplicates) == (15, 1, 1, 1)
