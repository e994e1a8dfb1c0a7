"""`detcrop ui` as a hostile or careless user would try it (issue 25): each test is one row of the
issue's table and fails on the code before it. Offline: generated images, fake exports and tiny bundles."""

from __future__ import annotations

import json
import threading
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the ui extra is not installed (pip install 'detcrop[ui]')")
from fastapi.testclient import TestClient  # noqa: E402

from detcrop.data.atomic import StagingFolder  # noqa: E402
from detcrop.data.locks import folder_lock  # noqa: E402
from detcrop.pipeline.cli import main  # noqa: E402
from detcrop.pipeline.ui.app import create_app  # noqa: E402
from detcrop.pipeline.ui.project import ProjectLimits  # noqa: E402
from ui_helpers import BASE_URL, fast_training, png_bytes  # noqa: E402


def make_client(tmp_path, **kwargs) -> TestClient:
    kwargs.setdefault("train_overrides", fast_training(tmp_path / "cache"))
    return TestClient(create_app(tmp_path / "project", **kwargs), base_url=BASE_URL)


@pytest.fixture()
def client(tmp_path):
    with make_client(tmp_path) as test_client:
        yield test_client


def image_files(count: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [("files", (f"{index}.png", png_bytes(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)), "image/png"))
            for index in range(count)]


def with_model(client, run_dir: Path, run: str = "20250101-000000-000000") -> None:
    client.app.state.project.set_model({"run_dir": str(run_dir), "run": run, "class_names": ["a", "b"]})


# ---------------------------------------------------------------- row 1: other sites, and exports made once
CROSS_SITE = [{"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"},
              {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}, {"Origin": "http://evil.example"}]


@pytest.mark.parametrize("headers", CROSS_SITE)
@pytest.mark.parametrize("method, url", [
    ("get", "/api/model/download?format=tflite"),
    ("get", "/api/model/download?format=savedmodel"),
    ("get", "/api/train/events"),
    ("get", "/api/train/status"),
    ("get", "/api/project"),
    ("get", "/thumbnails/a/0123456789abcdef.jpg"),
    ("post", "/api/predict"),
])
def test_requests_from_another_site_are_refused_get_included(client, tmp_path, headers, method, url):
    with_model(client, tmp_path / "run")
    response = getattr(client, method)(url, headers=headers)
    assert response.status_code == 403 and "another site" in response.json()["error"]


@pytest.mark.parametrize("url", ["/", "/static/app.js"])
def test_the_page_itself_may_be_linked_from_another_site(client, url):
    assert client.get(url, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


@pytest.fixture()
def fake_exports(monkeypatch):
    """`export_bundle` replaced by a slow fake that records each export and how many ran at once."""
    import detcrop.classify.export

    made, running, most = [], [0], [0]
    lock = threading.Lock()

    def export_bundle(run_dir, out, format):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.3)
        Path(out).mkdir(parents=True)
        (Path(out) / "labels.txt").write_text("a\nb\n")
        made.append(format)
        with lock:
            running[0] -= 1

    monkeypatch.setattr(detcrop.classify.export, "export_bundle", export_bundle)
    return made, most


def test_an_export_is_made_once_per_model_and_format(client, tmp_path, fake_exports):
    made, _ = fake_exports
    with_model(client, tmp_path / "run")
    for format in ("tflite", "savedmodel", "tflite", "savedmodel"):
        response = client.get(f"/api/model/download?format={format}")
        assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    assert made == ["tflite", "savedmodel"]
    with_model(client, tmp_path / "run", run="20250202-000000-000000")  # a new model: its own exports
    assert client.get("/api/model/download?format=tflite").status_code == 200
    assert made == ["tflite", "savedmodel", "tflite"]
    assert sorted(path.name for path in (tmp_path / "project" / "exports").iterdir()) == \
        ["20250202-000000-000000-tflite.zip"]


def test_one_export_runs_at_a_time(client, tmp_path, fake_exports):
    made, most = fake_exports
    with_model(client, tmp_path / "run")
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(client.get("/api/model/download").status_code))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200, 200, 200] and made == ["tflite"] and most[0] == 1


# ---------------------------------------------------------------- row 2: one server per project
def test_a_second_server_on_one_project_exits_2_naming_the_first(tmp_path, capsys, monkeypatch):
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(kwargs))
    project = tmp_path / "project"
    with folder_lock(project, "ui", port=8765):
        code = main(["ui", "--project-dir", str(project), "--port", "8766"])
    err = capsys.readouterr().err
    assert code == 2 and not served and len(err.strip().splitlines()) == 1
    assert "in use by `ui`" in err and "port 8765" in err and "pid" in err and "started" in err
    assert main(["ui", "--project-dir", str(project), "--port", "8766"]) == 0 and len(served) == 1


# ---------------------------------------------------------------- row 3: folders made by hand
@pytest.mark.parametrize("folder, reason", [
    ("tag heuer ", "no leading or trailing spaces"),
    ("a:b", "characters ':'"),
    ("x" * 70, "at most 64 characters"),
])
def test_a_hand_made_folder_with_a_refused_name_is_shown_as_not_a_class(client, folder, reason):
    assert client.post("/api/classes", json={"name": "kept"}).status_code == 201
    (client.app.state.project.dataset_dir / folder).mkdir()
    response = client.get("/api/project")
    assert response.status_code == 200
    body = response.json()
    assert [cls["name"] for cls in body["classes"]] == ["kept"]
    (entry,) = body["not_classes"]
    assert entry["folder"] == folder and reason in entry["reason"] and "rename the folder" in entry["fix"]
    assert client.patch("/api/classes/kept", json={"name": "renamed"}).status_code == 200
    assert client.delete("/api/classes/renamed").status_code == 204
    snapshot = client.app.state.project.snapshot_dataset(client.app.state.project.root / "snap")
    assert not (snapshot / folder).exists()


# ---------------------------------------------------------------- row 4: unreadable images on the page
def test_the_page_counts_readable_images_and_names_the_others(client):
    for name in ("good", "bad"):
        client.post("/api/classes", json={"name": name})
    assert len(client.post("/api/classes/good/images", files=image_files(5)).json()["added"]) == 5
    good_ids = [image["id"] for image in client.get("/api/project").json()["classes"][1]["images"]]
    rng = np.random.default_rng(1)
    folder = client.app.state.project.dataset_dir / "bad"
    for index in range(5):  # garbage named as the page names images
        (folder / f"{index:016x}.png").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    body = client.get("/api/project").json()
    bad, good = body["classes"]
    assert (bad["readable"], len(bad["images"])) == (0, 5) and good["readable"] == 5
    assert all(image["unreadable"] for image in bad["images"]) and not any(i["unreadable"] for i in good["images"])
    assert body["short_classes"] == {"bad": 0}
    response = client.post("/api/train", json={"epochs": 1})
    assert response.status_code == 400 and "bad (0)" in response.json()["error"]
    assert [image["id"] for image in good["images"]] == good_ids


# ---------------------------------------------------------------- row 9: every failure is JSON
@pytest.fixture()
def broken_run(tmp_path):
    from test_trust_boundaries import make_run

    run = make_run(tmp_path / "run", detector=None)
    (run / "model.keras").write_bytes((run / "model.keras").read_bytes()[:500])
    return run


def test_predict_and_download_with_a_model_that_cannot_load_answer_json(client, broken_run):
    with_model(client, broken_run)
    predict = client.post("/api/predict", files={"file": image_files(1)[0][1]})
    assert predict.headers["content-type"] == "application/json" and predict.status_code >= 400
    assert "cannot be loaded safely" in predict.json()["error"]
    download = client.get("/api/model/download")
    assert download.headers["content-type"] == "application/json" and download.status_code >= 400
    assert "cannot be loaded safely" in download.json()["error"]


def test_an_unexpected_failure_is_json_too(client, tmp_path, monkeypatch):
    def broken_describe(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(type(client.app.state.project), "describe", broken_describe)
    response = client.get("/api/project")
    assert response.status_code == 500 and response.json() == {"error": "internal error: RuntimeError: a bug"}


# ---------------------------------------------------------------- row 10: request bodies over the cap
def test_a_body_over_the_cap_is_refused_from_its_content_length(tmp_path):
    limits = ProjectLimits(max_request_bytes=200_000)
    with make_client(tmp_path, limits=limits) as client:
        client.post("/api/classes", json={"name": "omega"})
        big = [("files", ("h.jpg", b"\0" * 300_000, "image/jpeg"))]
        response = client.post("/api/classes/omega/images", files=big)
        assert response.status_code == 413 and "over the limit" in response.json()["error"]
        assert len(client.post("/api/classes/omega/images", files=image_files(2)).json()["added"]) == 2


def test_a_streamed_body_is_cut_off_at_the_cap(tmp_path):
    limits = ProjectLimits(max_request_bytes=200_000)
    with make_client(tmp_path, limits=limits) as client:
        client.post("/api/classes", json={"name": "omega"})
        sent = []

        def chunks():
            yield b'--x\r\nContent-Disposition: form-data; name="files"; filename="h.jpg"\r\n' \
                  b"Content-Type: image/jpeg\r\n\r\n"
            for _ in range(100):  # 6.4 MB if it were all read
                sent.append(1)
                yield b"\0" * 65536

        response = client.post("/api/classes/omega/images", content=chunks(),
                               headers={"Content-Type": "multipart/form-data; boundary=x"})
        assert response.status_code == 413 and "over the limit" in response.json()["error"]
        assert client.get("/api/project").json()["classes"][0]["images"] == []


# ---------------------------------------------------------------- row 11: what a killed server left
def test_stale_runs_and_export_staging_are_removed_at_start(tmp_path):
    project = tmp_path / "project"
    runs = project / "runs"
    model_run, killed_run, running = runs / "20250101-000000-000000", runs / "20250102-000000-000000", runs / "now"
    for run in (model_run, killed_run, running):
        run.mkdir(parents=True)
    (killed_run / "INCOMPLETE").write_text("")
    (project / "project.json").write_text(json.dumps({"model": {"run_dir": str(model_run), "run": model_run.name,
                                                                "class_names": ["a", "b"]}}))
    exports = project / "exports"
    exports.mkdir()
    killed_export = StagingFolder(exports / "download", "export")
    killed_export.close()  # what a kill -9 leaves: the folder, no lock
    (exports / "tmpab12cd").mkdir()  # an earlier version's staging folder
    with folder_lock(running, "train"):  # a training still writing is left alone
        with make_client(tmp_path):
            pass
    assert sorted(path.name for path in runs.iterdir()) == [model_run.name, "now"]
    assert list(exports.iterdir()) == []


# ---------------------------------------------------------------- row 12: framing and CSP
@pytest.mark.parametrize("url", ["/", "/api/project", "/static/app.js", "/nope"])
def test_the_page_cannot_be_framed_and_loads_only_its_own_origin(client, url):
    headers = client.get(url).headers
    assert headers["x-frame-options"] == "DENY"
    policy = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy
    assert "*" not in policy and "http" not in policy


# ---------------------------------------------------------------- row 13: one visible name, one class
@pytest.mark.parametrize("first, second", [("\u00e1", "a\u0301"), ("a\u0301", "\u00e1"), ("\u00e1", "\u00c1"),
                                           ("Ame\u0301lie", "am\u00e9lie")])
def test_class_names_are_nfc_normalised_before_checked_and_stored(client, first, second):
    created = client.post("/api/classes", json={"name": first})
    assert created.status_code == 201 and created.json()["name"] == unicodedata.normalize("NFC", first)
    again = client.post("/api/classes", json={"name": second})
    assert again.status_code == 409 and "already exists" in again.json()["error"]
    client.post("/api/classes", json={"name": "other"})
    renamed = client.patch("/api/classes/other", json={"name": second})
    assert renamed.status_code == 409
    names = [entry.name for entry in client.app.state.project.dataset_dir.iterdir()]
    assert sorted(names) == sorted([unicodedata.normalize("NFC", first), "other"])


# ---------------------------------------------------------------- the size cap says what the README says
def test_the_project_size_cap_is_reported_as_500_mb(client, monkeypatch):
    project = client.app.state.project
    client.post("/api/classes", json={"name": "omega"})
    monkeypatch.setattr(type(project), "size_bytes", lambda self: project.limits.max_project_bytes - 10)
    refused = client.post("/api/classes/omega/images", files=image_files(1)).json()["refused"]
    assert len(refused) == 1 and "the limit is 500 MB" in refused[0]["reason"]
