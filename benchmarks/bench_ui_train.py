"""How long the `detcrop ui` page takes to train a beginner's project with its default settings.

Drives the page's own JSON API (FastAPI TestClient, no browser): make the classes, upload
the photos, POST /api/train with the defaults, wait for the state to leave "training", then
test one photo. Prints upload, training (wall time from the POST to "done", including
building the backbone, computing features, training the head and saving the bundle) and
prediction times, and the time split that `train` recorded.

    .venv/bin/python benchmarks/bench_ui_train.py --classes rolex,seiko,cartier --photos 30
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "watches-brands"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="rolex,seiko", help="watches-brands folders, comma-separated")
    parser.add_argument("--photos", type=int, default=15, help="photos per class")
    parser.add_argument("--data", default=str(SHARED), help="folder of brand folders (default ../shared/data/watches-brands)")
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from detcrop.pipeline.ui.app import create_app

    classes = args.classes.split(",")
    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder) / "project"
        # A fresh feature cache, so features are computed as on a first training.
        app = create_app(project, train_overrides={"cache_dir": str(Path(folder) / "cache")})
        with TestClient(app, base_url="http://127.0.0.1:8765") as client:
            started = time.perf_counter()
            for name in classes:
                client.post("/api/classes", json={"name": name})
                photos = sorted((Path(args.data) / name).glob("*.jpg"))[:args.photos]
                files = [("files", (path.name, path.read_bytes(), "image/jpeg")) for path in photos]
                body = client.post(f"/api/classes/{name}/images", files=files).json()
                assert not body["refused"], body["refused"]
            uploaded = time.perf_counter()
            assert client.post("/api/train", json={}).status_code == 202
            while (status := client.get("/api/train/status").json())["state"] == "training":
                time.sleep(0.1)
            trained = time.perf_counter()
            model = client.get("/api/project").json()["model"]
            test_photo = sorted((Path(args.data) / classes[0]).glob("*.jpg"))[-1]
            timings = []
            for _ in range(3):
                tick = time.perf_counter()
                client.post("/api/predict", files=[("file", (test_photo.name, test_photo.read_bytes(), "image/jpeg"))])
                timings.append(time.perf_counter() - tick)
            recorded = json.loads((Path(model["run_dir"]) / "metrics.json").read_text())["timings_s"]
    images = sum(len(sorted((Path(args.data) / name).glob("*.jpg"))[:args.photos]) for name in classes)
    print(f"{len(classes)} classes x {args.photos} photos ({images} images), state {status['state']}, "
          f"{len(status['history'])} epochs, val accuracy {model['accuracy']:.3f} on {model['val_images']} images")
    print(f"upload {uploaded - started:.1f} s | train (POST -> done) {trained - uploaded:.1f} s "
          f"[inside train(): {', '.join(f'{key} {value:.1f} s' for key, value in recorded.items())}] | "
          f"predict first {timings[0]:.2f} s (loads the model), then {min(timings[1:]):.2f} s")


if __name__ == "__main__":
    main()
