"""Demo photos: deterministic, decodable, one watch per photo, both styles."""

from __future__ import annotations

import numpy as np
import pytest

from detcrop.data.folders import scan_class_folders
from detcrop.data.images import file_sha256, load_image_array
from detcrop.pipeline.demo_scenes import DEMO_CLASSES, draw_watch, write_demo_photos

pytest.importorskip("skimage")


def test_same_seed_same_photos_and_class_folders(tmp_path):
    first = write_demo_photos(tmp_path / "a", per_class=2, seed=3)
    second = write_demo_photos(tmp_path / "b", per_class=2, seed=3)
    other = write_demo_photos(tmp_path / "c", per_class=2, seed=4)
    assert [file_sha256(path) for path in first] == [file_sha256(path) for path in second]
    assert [file_sha256(path) for path in first] != [file_sha256(path) for path in other]
    dataset = scan_class_folders(tmp_path / "a")
    assert dataset.class_names == DEMO_CLASSES and dataset.counts() == {"classic": 2, "diver": 2}
    assert load_image_array(first[0]).shape == (360, 480, 3)


def test_flat_output_for_scoring(tmp_path):
    paths = write_demo_photos(tmp_path, per_class=1, seed=0, by_class=False)
    assert sorted(path.name.split("_")[0] for path in paths) == sorted(DEMO_CLASSES)
    assert all(path.parent == tmp_path for path in paths)


def test_styles_differ_in_the_dial():
    rng = np.random.default_rng(0)
    classic = np.asarray(draw_watch("classic", 100, 3.0, rng))
    diver = np.asarray(draw_watch("diver", 100, 3.0, rng))
    centre = (slice(classic.shape[0] // 2 - 20, classic.shape[0] // 2 + 20),
              slice(classic.shape[1] // 2 - 20, classic.shape[1] // 2 + 20))
    assert classic[centre][..., :3].mean() > 150 > diver[centre][..., :3].mean()
    with pytest.raises(ValueError, match="style must be"):
        draw_watch("sport", 100, 3.0, rng)
