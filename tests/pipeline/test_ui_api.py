"""`detcrop ui` JSON API: the beginner's flow with real photos, and every refusal the page relies on."""

from __future__ import annotations

import io
import json
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the ui extra is not installed (pip install 'detcrop[ui]')")
from fastapi.testclient import TestClient  # noqa: E402

from detcrop.pipeline.ui.app import create_app  # noqa: E402
from detcrop.pipeline.ui.project import ProjectLimits  # noqa: E402
from ui_helpers import BASE_URL, BRANDS, RedSquareDetector, brand_photos, fast_training, files_field, png_bytes  # noqa: E402

pytestmark = pytest.mark.shared


def make_client(project_dir, tmp_path, **kwargs) -> TestClient:
    kwargs.setdefault("train_overrides", fast_training(tmp_path / "cache"))
    return TestClient(create_app(project_dir, **kwargs), base_url=BASE_URL)


@pytest.fixture()
def client(tmp_path):
    with make_client(tmp_path / "project", tmp_path) as test_client:
        yield test_client


def fill_project(client, shared_data, per_class: int = 6) -> None:
    for index, brand in enumerate(BRANDS):
        assert client.post("/api/classes", json={"name": brand}).status_code == 201
        response = client.post(f"/api/classes/{brand}/images",
                               files=files_field(brand_photos(shared_data, brand, per_class)))
        assert response.status_code == 200 and len(response.json()["added"]) == per_class


def wait_for_training(client, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get("/api/train/status").json()
        if status["state"] != "training":
            return status
        time.sleep(0.2)
    raise AssertionError("training did not end in time")


# ---------------------------------------------------------------- classes
def test_classes_add_rename_delete(client):
    assert client.get("/api/project").json()["classes"] == []
    response = client.post("/api/classes", json={"name": "Grand Seiko"})
    assert response.status_code == 201 and response.json() == {"name": "Grand Seiko", "images": []}
    assert client.post("/api/classes", json={"name": "grand seiko"}).status_code == 409  # same folder on macOS/Windows
    assert client.patch("/api/classes/Grand Seiko", json={"name": "seiko"}).status_code == 200
    assert [cls["name"] for cls in client.get("/api/project").json()["classes"]] == ["seiko"]
    assert client.delete("/api/classes/seiko").status_code == 204
    assert client.get("/api/project").json()["classes"] == []
    assert client.delete("/api/classes/seiko").json() == {"error": "no class named 'seiko'"}


@pytest.mark.parametrize("name, reason", [
    ("", "empty"),
    ("..", "start with '.'"),
    (".hidden", "start with '.'"),
    ("a/b", "separators"),
    ("a\\b", "separators"),
    (" padded", "spaces"),
    ("x" * 65, "at most 64"),
])
def test_bad_class_names_are_refused(client, name, reason):
    response = client.post("/api/classes", json={"name": name})
    assert response.status_code == 400 and reason in response.json()["error"]
    client.post("/api/classes", json={"name": "ok"})
    renamed = client.patch("/api/classes/ok", json={"name": name})
    assert renamed.status_code == 400 and reason in renamed.json()["error"]
    assert [cls["name"] for cls in client.get("/api/project").json()["classes"]] == ["ok"]


def test_malformed_bodies_get_an_error_object(client):
    response = client.post("/api/classes", json={"nam": "typo"})
    assert response.status_code == 422 and "name" in response.json()["error"]
    response = client.post("/api/train", json={"epoch": 3})
    assert response.status_code == 422 and "epoch" in response.json()["error"]


# ---------------------------------------------------------------- images
def test_upload_squares_thumbnails_dedupes_and_deletes(client, shared_data, tmp_path):
    client.post("/api/classes", json={"name": "rolex"})
    photos = brand_photos(shared_data, "rolex", 3)
    response = client.post("/api/classes/rolex/images", files=files_field(photos + photos[:1]))
    body = response.json()
    assert response.status_code == 200 and len(body["added"]) == 3 and len(body["duplicates"]) == 1
    assert body["refused"] == []
    images = client.get("/api/project").json()["classes"][0]["images"]
    assert sorted(image["id"] for image in images) == sorted(entry["id"] for entry in body["added"])
    thumbnail = client.get(images[0]["url"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    from PIL import Image

    stored = Image.open(tmp_path / "project" / "dataset" / "rolex" / f"{images[0]['id']}.png")
    assert stored.size == (224, 224)  # centre square, as `detcrop add` stores it
    assert client.delete(f"/api/classes/rolex/images/{images[0]['id']}").status_code == 204
    assert len(client.get("/api/project").json()["classes"][0]["images"]) == 2
    assert client.get(images[0]["url"]).status_code == 404
    assert client.delete(f"/api/classes/rolex/images/{images[0]['id']}").status_code == 404


def test_non_images_and_large_files_are_refused_with_reasons(client, shared_data):
    client.post("/api/classes", json={"name": "rolex"})
    photo = brand_photos(shared_data, "rolex", 1)[0]
    big = b"\xff\xd8\xff" + b"0" * (10 * 1024 * 1024)  # 10 MB + 3 bytes
    response = client.post("/api/classes/rolex/images", files=[
        ("files", ("notes.jpg", b"this is text named like a photo", "image/jpeg")),
        ("files", ("empty.png", b"", "image/png")),
        ("files", ("truncated.jpg", photo.read_bytes()[:400], "image/jpeg")),
        ("files", ("huge.jpg", big, "image/jpeg")),
        ("files", ("page.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "application/pdf")),
        ("files", (photo.name, photo.read_bytes(), "image/jpeg")),
    ])
    body = response.json()
    assert response.status_code == 200 and [entry["file"] for entry in body["added"]] == [photo.name]
    reasons = {entry["file"]: entry["reason"] for entry in body["refused"]}
    assert set(reasons) == {"notes.jpg", "empty.png", "truncated.jpg", "huge.jpg", "page.pdf"}
    assert "not a recognisable image" in reasons["notes.jpg"]
    assert "empty" in reasons["empty.png"]
    assert "over the limit of 10 MB" in reasons["huge.jpg"]
    assert "decode" in reasons["truncated.jpg"] or "recognisable" in reasons["truncated.jpg"]


def test_project_size_cap(tmp_path, shared_data):
    limits = ProjectLimits(max_project_bytes=250_000)  # room for about two 224 px PNGs and thumbnails
    with make_client(tmp_path / "project", tmp_path, limits=limits) as client:
        client.post("/api/classes", json={"name": "rolex"})
        body = client.post("/api/classes/rolex/images",
                           files=files_field(brand_photos(shared_data, "rolex", 6))).json()
        assert 1 <= len(body["added"]) < 6
        assert body["refused"] and all("the project is full" in entry["reason"] for entry in body["refused"])
        assert client.get("/api/project").json()["size_bytes"] <= limits.max_project_bytes


def test_upload_to_a_missing_class_is_404(client, shared_data):
    response = client.post("/api/classes/nope/images", files=files_field(brand_photos(shared_data, "rolex", 1)))
    assert response.status_code == 404 and "nope" in response.json()["error"]


# ---------------------------------------------------------------- safety
@pytest.mark.parametrize("method, url, kwargs", [
    ("post", "/api/classes", {"json": {"name": "evil"}}),
    ("patch", "/api/project", {"json": {"name": "evil"}}),
    ("post", "/api/train", {"json": {}}),
    ("post", "/api/train/cancel", {}),
    ("delete", "/api/classes/kept", {}),
])
def test_requests_from_another_origin_are_refused(client, method, url, kwargs):
    client.post("/api/classes", json={"name": "kept"})
    response = getattr(client, method)(url, headers={"Origin": "http://evil.example"}, **kwargs)
    assert response.status_code == 403 and "another site" in response.json()["error"]
    project = client.get("/api/project").json()
    assert [cls["name"] for cls in project["classes"]] == ["kept"] and project["name"] == "project"
    same_site = client.post("/api/classes", json={"name": "mine"}, headers={"Origin": BASE_URL})
    assert same_site.status_code == 201


def test_only_local_host_names_are_served(client):
    response = client.get("/api/project", headers={"Host": "attacker.example:8765"})  # DNS rebinding
    assert response.status_code == 421
    assert client.get("/api/project", headers={"Host": "localhost:8765"}).status_code == 200


@pytest.mark.parametrize("url", [
    "/static/../pyproject.toml",
    "/static/%2e%2e/project.py",
    "/static/..%2fproject.py",
    "/project.json",
    "/dataset/kept/x.png",
    "/thumbnails/kept/..%2f..%2fproject.json",
    "/thumbnails/..%2fdataset/x.jpg",
    "/thumbnails/kept/0123456789abcdef.png",
    "/thumbnails/kept/not-an-id.jpg",
    "/runs/",
])
def test_nothing_outside_static_files_and_thumbnails_is_served(client, url):
    client.post("/api/classes", json={"name": "kept"})
    response = client.get(url)
    assert response.status_code == 404, response.text
    assert "kept" not in response.text and "{\n" not in response.text


def test_the_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "<title>detcrop</title>" in page.text
    for name in ("app.js", "chart.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    # No file of the page reaches out to another host.
    for name in ("index.html", "app.js", "chart.js", "style.css"):
        text = client.get("/" if name == "index.html" else f"/static/{name}").text
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text


# ---------------------------------------------------------------- training and testing
def test_train_refuses_short_classes_and_bad_settings(client, shared_data):
    response = client.post("/api/train", json={})
    assert response.status_code == 400 and "at least 2 classes" in response.json()["error"]
    client.post("/api/classes", json={"name": "rolex"})
    client.post("/api/classes", json={"name": "seiko"})
    client.post("/api/classes/rolex/images", files=files_field(brand_photos(shared_data, "rolex", 5)))
    client.post("/api/classes/seiko/images", files=files_field(brand_photos(shared_data, "seiko", 3)))
    response = client.post("/api/train", json={})
    assert response.status_code == 400 and "short: seiko (3)" in response.json()["error"]
    client.post("/api/classes/seiko/images", files=files_field(brand_photos(shared_data, "seiko", 2, start=3)))
    for settings, message in (({"epochs": 0}, "epochs"), ({"val_ratio": 0.9}, "val_ratio"),
                              ({"learning_rate": -1}, "learning_rate")):
        response = client.post("/api/train", json=settings)
        assert response.status_code == 400 and message in response.json()["error"]
    assert client.get("/api/train/status").json()["state"] == "idle"
    response = client.post("/api/predict", files=files_field(brand_photos(shared_data, "rolex", 1), "file"))
    assert response.status_code == 409 and "train" in response.json()["error"]


def test_train_follow_predict_download_and_reopen(tmp_path, shared_data):
    from detcrop.classify.bundle import load_bundle
    from detcrop.pipeline.cli import main

    project_dir = tmp_path / "project"
    with make_client(project_dir, tmp_path) as client:
        fill_project(client, shared_data)
        response = client.post("/api/train", json={"epochs": 3, "batch_size": 4, "learning_rate": 0.01,
                                                   "val_ratio": 0.34})
        assert response.status_code == 202
        assert client.post("/api/train", json={}).status_code in (202, 409)  # 409 unless it already finished
        with client.stream("GET", "/api/train/events") as stream:
            lines = [line for line in stream.iter_lines() if line.startswith(("event:", "data:"))]
        epochs = [json.loads(data[5:]) for name, data in zip(lines, lines[1:]) if name == "event: epoch"]
        states = [json.loads(data[5:])["state"] for name, data in zip(lines, lines[1:]) if name == "event: state"]
        assert [row["epoch"] for row in epochs] == [1, 2, 3]
        assert states[-1] == "done"
        assert all(0 <= row["acc"] <= 1 and 0 <= row["val_acc"] <= 1 and row["loss"] > 0 for row in epochs)
        status = wait_for_training(client)
        assert status["state"] == "done" and status["history"] == epochs
        model = client.get("/api/project").json()["model"]
        assert model["class_names"] == list(BRANDS) and model["stale"] is False
        assert client.get("/api/project").json()["settings"]["epochs"] == 3

        photo = brand_photos(shared_data, "rolex", 1, start=50)
        prediction = client.post("/api/predict", files=files_field(photo, "file")).json()
        assert set(prediction["confidences"]) == set(BRANDS)
        assert sum(prediction["confidences"].values()) == pytest.approx(1, abs=1e-4)
        assert prediction["top_class"] == max(prediction["confidences"], key=prediction["confidences"].get)
        assert prediction["is_class"] == {name: name == prediction["top_class"] for name in BRANDS}
        bad = client.post("/api/predict", files=[("file", ("x.jpg", b"not an image", "image/jpeg"))])
        assert bad.status_code == 400 and "x.jpg" in bad.json()["error"]

        for export_format, model_file in (("savedmodel", "saved_model/saved_model.pb"), ("tflite", "model.tflite")):
            download = client.get(f"/api/model/download?format={export_format}")
            assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
            with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
                assert {model_file, "labels.txt", "export.json"} <= set(archive.namelist())
                assert archive.read("labels.txt").decode().split() == list(BRANDS)
        assert client.get("/api/model/download?format=onnx").status_code == 422

    # An ordinary run folder: the command line works on it.
    run_dir = model["run_dir"]
    assert load_bundle(run_dir).class_names == BRANDS
    assert main(["predict", run_dir, str(photo[0]), "--no-detect"]) == 0
    assert main(["evaluate", run_dir, str(Path(run_dir) / "dataset")]) == 0
    # Reopened as it was.
    with make_client(project_dir, tmp_path) as client:
        project = client.get("/api/project").json()
        assert [len(cls["images"]) for cls in project["classes"]] == [6, 6]
        assert project["model"]["run_dir"] == run_dir
        assert client.get("/api/train/status").json()["history"] == status["history"]
        # A run folder removed by hand: a clear refusal, not a crash.
        shutil.rmtree(run_dir)
        response = client.post("/api/predict", files=files_field(photo, "file"))
        assert response.status_code == 409 and "is gone" in response.json()["error"]


def test_cancel_keeps_the_previous_state(tmp_path, shared_data):
    overrides = fast_training(tmp_path / "cache") | {"patience": 500}
    with make_client(tmp_path / "project", tmp_path, train_overrides=overrides) as client:
        fill_project(client, shared_data, per_class=5)
        assert client.post("/api/train/cancel").json() == {"cancelling": False}
        assert client.post("/api/train", json={"epochs": 500, "batch_size": 1}).status_code == 202
        deadline = time.monotonic() + 120
        while not client.get("/api/train/status").json()["history"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.post("/api/train/cancel").json() == {"cancelling": True}
        status = wait_for_training(client)
        assert status["state"] == "cancelled" and 1 <= len(status["history"]) < 500
        assert client.get("/api/project").json()["model"] is None
        assert not any((tmp_path / "project" / "runs").iterdir())


def test_find_the_object_first_crops_or_marks_whole_photos(tmp_path):
    with make_client(tmp_path / "project", tmp_path, detector=RedSquareDetector()) as client:
        client.post("/api/classes", json={"name": "red"})
        assert client.patch("/api/project", json={"find_object": {"enabled": True, "target": "no-such-class"}}) \
            .status_code == 400
        assert client.patch("/api/project", json={"find_object": {"enabled": True, "target": "clock"}}) \
            .status_code == 200
        with_square = np.full((120, 200, 3), 90, np.uint8)
        with_square[30:90, 100:160] = (255, 0, 0)
        plain = np.full((120, 200, 3), 90, np.uint8)
        body = client.post("/api/classes/red/images", files=[
            ("files", ("square.png", png_bytes(with_square), "image/png")),
            ("files", ("plain.png", png_bytes(plain), "image/png")),
        ]).json()
        found, whole = body["added"]
        assert found["detection"]["box"] == [100, 30, 160, 90] and found["detection"]["whole_photo"] is False
        assert whole["detection"] == {"whole_photo": True, "box": None, "score": None, "photo_size": [200, 120]}
        images = {image["id"]: image for image in client.get("/api/project").json()["classes"][0]["images"]}
        assert images[whole["id"]]["whole_photo"] is True and images[found["id"]]["whole_photo"] is False
        from PIL import Image

        crop = np.asarray(Image.open(tmp_path / "project" / "dataset" / "red" / f"{found['id']}.png"))
        red = (crop[..., 0] > 200) & (crop[..., 1] < 60) & (crop[..., 2] < 60)  # JPEG-encoded, as `crop` writes
        assert red.mean() > 0.5  # the crop is the object (60x60 of the 200x120 photo), not the photo


def test_ui_command_warns_when_binding_beyond_localhost(monkeypatch, tmp_path, capsys):
    import uvicorn

    from detcrop.pipeline.cli import main

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kwargs: served.update(host=host, port=port))
    assert main(["ui", "--project-dir", str(tmp_path / "p"), "--port", "9000"]) == 0
    assert served == {"host": "127.0.0.1", "port": 9000} and "WARNING" not in capsys.readouterr().out
    assert main(["ui", "--project-dir", str(tmp_path / "p"), "--host", "0.0.0.0"]) == 0
    assert served["host"] == "0.0.0.0" and "WARNING: binding 0.0.0.0" in capsys.readouterr().out


def test_find_the_object_first_with_the_offline_ssd_end_to_end(tmp_path, shared_data):
    """The real detector crops the uploads; the model trained on them finds the object in new photos too."""
    from detcrop.classify.bundle import read_bundle_metadata

    watches = sorted((shared_data / "caltech-watch" / "watch").glob("*.jpg"))
    scenes = sorted((shared_data / "caltech-watch" / "background").glob("*.jpg"))
    with make_client(tmp_path / "project", tmp_path) as client:
        assert client.patch("/api/project", json={"find_object": {"enabled": True}}).status_code == 200
        client.post("/api/classes", json={"name": "watch"})
        client.post("/api/classes", json={"name": "scene"})
        # image_0019 is a watch the SSD calls a clock (0.996); background image_0016 has none.
        body = client.post("/api/classes/watch/images", files=files_field([watches[9]])).json()
        assert body["added"][0]["detection"]["whole_photo"] is False
        x1, y1, x2, y2 = body["added"][0]["detection"]["box"]
        assert 0 <= x1 < x2 <= 300 and 0 <= y1 < y2 <= 191
        body = client.post("/api/classes/scene/images", files=files_field([scenes[0]])).json()
        assert body["added"][0]["detection"]["whole_photo"] is True
        client.post("/api/classes/watch/images", files=files_field(watches[:5]))
        client.post("/api/classes/scene/images", files=files_field(scenes[1:6]))
        assert client.post("/api/train", json={"epochs": 2, "val_ratio": 0.3}).status_code == 202
        assert wait_for_training(client)["state"] == "done"
        model = client.get("/api/project").json()["model"]
        assert model["find_object"] is True
        assert read_bundle_metadata(model["run_dir"]).crop_config["targets"] == ["clock"]
        found = client.post("/api/predict", files=files_field([watches[9]], "file")).json()
        assert found["whole_photo"] is False and found["box"] is not None
        whole = client.post("/api/predict", files=files_field([scenes[0]], "file")).json()
        assert whole["whole_photo"] is True and set(whole["confidences"]) == {"scene", "watch"}
