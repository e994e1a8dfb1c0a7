"""Stage three end to end on generated scenes: a fake detector, a tiny real bundle, the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from detcrop.classify.bundle import save_bundle
from detcrop.data.config import config_to_dict
from detcrop.detect.crop import CropConfig
from detcrop.detect.detections import Detections
from detcrop.pipeline.cli import main
from detcrop.pipeline.scoring import UNKNOWN, Scorer
from tiny_models import tiny_model

CLASSES = ("dark", "light")


class SquareFinder:
    """A fake detector: the bounding box of pixels brighter than 250 or darker than 5, as COCO clock."""

    name = "square-finder"

    def detect(self, image: np.ndarray) -> Detections:
        height, width = image.shape[:2]
        mask = (image.min(axis=2) > 250) | (image.max(axis=2) < 5)
        if not mask.any():
            return Detections.empty((width, height))
        ys, xs = np.nonzero(mask)
        return Detections(boxes_xyxy=np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32),
                          scores=np.array([0.9], np.float32), class_ids=np.array([85]), class_names=("clock",),
                          image_size=(width, height))


def scene(value: int | None, seed: int, size=(96, 72)) -> np.ndarray:
    """Mid-grey noise with a dark (value 0) or light (255) square, or none."""
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 190, size=(size[1], size[0], 3), dtype=np.uint8)
    if value is not None:
        x, y = int(rng.integers(0, size[0] - 30)), int(rng.integers(0, size[1] - 30))
        image[y:y + 24, x:x + 24] = value
    return image


def make_run(run, on_empty: str = "record"):
    """A tiny bundle whose model says 'light' for bright crops and 'dark' for dark ones."""
    model = tiny_model()
    # Mean brightness m in [0, 1]: logits (-8m + 4, 8m - 4) put 'light' above 0.5 when m > 0.5.
    model.layers[-1].set_weights([np.array([[-8 / 3, 8 / 3]] * 3, np.float32), np.array([4, -4], np.float32)])
    crop_config = config_to_dict(CropConfig(margin=0.0, square="none", min_size=8, on_empty=on_empty))
    save_bundle(run, model, {
        "class_names": list(CLASSES), "input_size": 16, "backbone": "test", "weights_source": "fixed",
        "metrics": {}, "config": {}, "crop_config": crop_config, "unknown_threshold": 0.6,
    })
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Trained on crops made with on_empty=record: a photo with no detection has no answer."""
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def whole_photo_run(tmp_path_factory):
    """Trained on crops made with on_empty=whole-photo: a photo with no detection is scored whole."""
    return make_run(tmp_path_factory.mktemp("run-whole"), on_empty="whole-photo")


@pytest.fixture()
def fake_detector(monkeypatch):
    from detcrop import detect
    import detcrop.detect.base

    monkeypatch.setattr(detect.base, "load_detector", lambda name, **kwargs: SquareFinder())


@pytest.fixture()
def photos(tmp_path):
    paths = {}
    for name, value in (("dark", 0), ("light", 255), ("empty", None)):
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(scene(value, seed=len(name))).save(paths[name])
    paths["broken"] = tmp_path / "broken.jpg"
    paths["broken"].write_bytes(b"\xff\xd8 not really a jpeg")
    return paths


@pytest.fixture()
def scorer(run_dir, monkeypatch):
    from detcrop import detect
    import detcrop.detect.base

    monkeypatch.setattr(detect.base, "load_detector", lambda name, **kwargs: SquareFinder())
    return Scorer.load(run_dir)


def test_objects_are_found_cropped_and_classified(scorer, photos):
    assert scorer.crop_config.margin == 0.0 and scorer.crop_config.max_crops_per_photo == 10
    dark, light = scorer.score(photos["dark"]), scorer.score(photos["light"])
    assert dark.top_class() == "dark" and light.top_class() == "light"
    (item,) = light.objects
    x0, y0, x1, y1 = item.box
    assert (x1 - x0, y1 - y0) == (24, 24)
    assert item.crop_box == tuple(int(value) for value in item.box)  # margin 0, no squaring, from the bundle
    assert sum(item.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert item.probabilities["light"] > 0.9 and item.detector_score == pytest.approx(0.9)
    assert light.confidence("light") == item.probabilities["light"]
    assert light.is_class("light") and not light.is_class("dark")


def test_no_object_and_unreadable_photo(scorer, photos):
    empty = scorer.score(photos["empty"])
    assert empty.objects == () and empty.top_class() is None and "no clock" in empty.note
    assert empty.confidence("light") == 0.0 and not empty.is_class("light")
    broken = scorer.score(photos["broken"])
    assert broken.error and broken.objects == () and broken.top_class() is None


def test_unknown_under_threshold(run_dir, photos, monkeypatch):
    from detcrop import detect
    import detcrop.detect.base

    monkeypatch.setattr(detect.base, "load_detector", lambda name, **kwargs: SquareFinder())
    strict = Scorer.load(run_dir, unknown_threshold=1.0)
    (item,) = strict.score(photos["light"]).objects
    assert item.label == UNKNOWN and item.top_class == "light"
    with pytest.raises(ValueError, match="unknown threshold"):
        Scorer.load(run_dir, unknown_threshold=1.5)


def test_predict_cli_json_csv_plot_and_questions(run_dir, photos, tmp_path, monkeypatch, capsys):
    from detcrop import detect
    import detcrop.detect.base

    monkeypatch.setattr(detect.base, "load_detector", lambda name, **kwargs: SquareFinder())
    out_json, out_csv, plots = tmp_path / "p.json", tmp_path / "p.csv", tmp_path / "plots"
    code = main(["predict", str(run_dir), *(str(photos[name]) for name in ("dark", "light", "empty", "broken")),
                 "--json", str(out_json), "--csv", str(out_csv), "--plot", str(plots), "-q",
                 "--which-class", "--confidence-of", "light", "--is-class", "dark"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "no object" in printed and "ERROR" in printed
    assert f"{photos['dark']}: class=dark  confidence(light)=0.0" in printed
    assert f"{photos['empty']}: class=nothing found  confidence(light)=0.000  is dark=false" in printed

    document = json.loads(out_json.read_text())
    assert document["schema_version"] == 1 and document["class_names"] == list(CLASSES)
    assert document["unknown_threshold"] == 0.6
    by_name = {entry["path"].split("/")[-1]: entry for entry in document["photos"]}
    assert set(by_name["light.png"]) == {"path", "error", "note", "seconds", "top_class", "objects"}
    assert set(by_name["light.png"]["objects"][0]) == {
        "box", "crop_box", "detector_score", "probabilities", "label", "top_class", "top_probability", "region"}
    assert by_name["light.png"]["objects"][0]["region"] == "detection"
    assert by_name["broken.jpg"]["error"] and by_name["empty.png"]["objects"] == []

    rows = list(csv.DictReader(out_csv.open()))
    assert [row["label"] for row in rows] == ["dark", "light", "", ""]
    assert [row["region"] for row in rows] == ["detection", "detection", "", ""]
    assert float(rows[1]["p_light"]) > 0.9
    assert sorted(path.name for path in plots.iterdir()) == ["dark.png", "empty.png", "light.png"]
    assert all(path.stat().st_size > 5000 for path in plots.iterdir())


def test_no_detect_classifies_whole_images(run_dir, tmp_path, capsys):
    bright = tmp_path / "bright.png"
    Image.fromarray(np.full((20, 30, 3), 240, np.uint8)).save(bright)
    assert main(["predict", str(run_dir), str(bright), "--no-detect", "--json", str(tmp_path / "o.json"), "-q"]) == 0
    (entry,) = json.loads((tmp_path / "o.json").read_text())["photos"]
    (item,) = entry["objects"]
    assert item["box"] is None and item["crop_box"] == [0, 0, 30, 20] and item["top_class"] == "light"
    assert item["region"] == "whole-image"


@pytest.mark.parametrize("trained, override, scored_whole", [
    ("whole-photo", None, True),  # the training crop policy is honoured
    ("record", None, False),
    ("whole-photo", "record", False),  # the flag overrides it either way
    ("record", "whole-photo", True),
])
def test_photo_without_detection_follows_the_training_crop_policy(tmp_path, photos, fake_detector, trained,
                                                                  override, scored_whole):
    scorer = Scorer.load(make_run(tmp_path / "run", on_empty=trained), on_empty=override)
    empty = scorer.score(photos["empty"])
    assert "no clock detected" in empty.note
    if not scored_whole:
        assert empty.objects == () and empty.top_class() is None
        return
    (item,) = empty.objects
    assert item.region == "whole-photo" and item.box is None and item.detector_score is None
    assert item.crop_box == (0, 0, 96, 72)  # square="none" in the bundle's crop config: the photo as it is
    assert empty.top_class() is not None and item.top_class in CLASSES and "scored the whole photo" in empty.note
    # A photo with a detection is unaffected by the policy.
    (detected,) = scorer.score(photos["light"]).objects
    assert detected.region == "detection" and detected.detector_score == pytest.approx(0.9)


def test_whole_photo_fallback_is_marked_in_every_output(whole_photo_run, photos, tmp_path, fake_detector, capsys):
    out_json, out_csv, plots = tmp_path / "p.json", tmp_path / "p.csv", tmp_path / "plots"
    assert main(["predict", str(whole_photo_run), str(photos["empty"]), str(photos["light"]), "--json", str(out_json),
                 "--csv", str(out_csv), "--plot", str(plots), "-q", "--which-class"]) == 0
    printed = capsys.readouterr().out
    assert "whole photo (nothing detected)" in printed and "class=nothing found" not in printed
    entry = json.loads(out_json.read_text())["photos"][0]
    assert entry["objects"][0]["region"] == "whole-photo" and "scored the whole photo" in entry["note"]
    rows = list(csv.DictReader(out_csv.open()))
    assert [row["region"] for row in rows] == ["whole-photo", "detection"]
    assert "scored the whole photo" in rows[0]["note"] and rows[1]["note"] == ""
    assert sorted(path.name for path in plots.iterdir()) == ["empty.png", "light.png"]
    # --on-empty record: the same photo is left without an answer, as before.
    assert main(["predict", str(whole_photo_run), str(photos["empty"]), "--csv", str(out_csv), "-q",
                 "--on-empty", "record"]) == 0
    (row,) = csv.DictReader(out_csv.open())
    assert row["label"] == "" and "no clock detected" in row["note"]


@pytest.mark.parametrize("argv, message", [
    (["--confidence-of", "purple"], "unknown class 'purple'"),
    (["--max-objects", "0"], "--max-objects"),
])
def test_predict_cli_refuses_bad_options(run_dir, photos, capsys, argv, message):
    assert main(["predict", str(run_dir), str(photos["light"]), "--no-detect", *argv]) == 2
    assert message in capsys.readouterr().err


def test_missing_run_is_a_clear_error(tmp_path, photos, capsys):
    assert main(["predict", str(tmp_path / "no-run"), str(photos["light"])]) == 2
    assert "run folder not found" in capsys.readouterr().err


def test_a_photo_the_models_fail_on_is_an_error_result(run_dir, photos, monkeypatch):
    from detcrop import detect
    import detcrop.detect.base

    class Broken(SquareFinder):
        def detect(self, image):
            raise RuntimeError("graph execution failed")

    monkeypatch.setattr(detect.base, "load_detector", lambda name, **kwargs: Broken())
    result = Scorer.load(run_dir).score(photos["light"])
    assert result.objects == () and "graph execution failed" in result.error


def test_plots_of_photos_with_the_same_name_are_all_kept(run_dir, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((20, 30, 3), 240, np.uint8)).save(tmp_path / folder / "x.png")
    assert main(["predict", str(run_dir), str(tmp_path / "a"), str(tmp_path / "b"), "--no-detect",
                 "--plot", str(tmp_path / "plots"), "-q"]) == 0
    assert sorted(path.name for path in (tmp_path / "plots").iterdir()) == ["x_0000.png", "x_0001.png"]


def test_onnx_classifier_gives_the_bundles_probabilities(run_dir, photos, monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    from detcrop import detect
    import detcrop.detect.base

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(detect.base, "load_detector", lambda name, **kwargs: SquareFinder())
    expected = Scorer.load(run_dir).score(photos["light"])
    onnx = Scorer.load(run_dir, classifier_runtime="onnx")
    assert type(onnx.bundle.model).__name__ == "OnnxClassifier"
    received = onnx.score(photos["light"])
    assert list(tmp_path.joinpath("cache", "detcrop", "onnx").glob("classifier-*.onnx"))  # converted once, cached
    (want,), (got,) = expected.objects, received.objects
    assert got.top_class == want.top_class
    for name, probability in want.probabilities.items():
        assert got.probabilities[name] == pytest.approx(probability, abs=1e-4)
