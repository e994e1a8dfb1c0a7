"""`/api/predict`: test one image with the project's model (the block tools' three answers)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
from fastapi import APIRouter, File, Request, UploadFile

from detcrop.pipeline.ui.project import ProjectError
from detcrop.pipeline.ui.uploads import UploadRefused, read_image_upload

router = APIRouter(tags=["predict"])


class ScorerCache:
    """The latest model's `pipeline.scoring.Scorer`, loaded once per run folder."""

    def __init__(self):
        self._lock = threading.Lock()
        self._key = None
        self._scorer = None

    def get(self, run_dir: str, find_object: bool, finder):
        """The run's scorer: it detects (with `finder`'s detector, loaded once for the page) when
        the model was trained on crops. Such a run's crop settings say on_empty whole-photo, so a
        photo with nothing found is scored whole, as in training. The bundle is loaded once."""
        from detcrop.pipeline.scoring import Scorer

        with self._lock:
            if self._key != (run_dir, find_object):
                scorer = Scorer.load(run_dir, detect=False, max_objects=1)
                if find_object:
                    scorer = dataclasses.replace(scorer, detector=finder.detector())
                self._key, self._scorer = (run_dir, find_object), scorer
            return self._scorer


@router.post("/api/predict")
def predict(request: Request, file: UploadFile = File(...)) -> dict:
    """`{top_class, confidences: {class: p}, is_class: {class: bool}, box, whole_photo, seconds}`"""
    project = request.app.state.project
    model = project.state.get("model")
    if not model:
        raise ProjectError("there is no trained model yet; train one first", 409)
    try:
        decoded = read_image_upload(file.file, project.limits.max_upload_bytes, file.filename or "upload")
        image = np.asarray(decoded, dtype=np.uint8)
    except UploadRefused as error:
        raise ProjectError(f"{file.filename or 'the file'}: {error.reason}", 400) from None
    from detcrop.classify.bundle import BUNDLE_NAME

    if not (Path(model["run_dir"]) / BUNDLE_NAME).is_file():
        raise ProjectError(f"the model's run folder {model['run_dir']} is gone; train again", 409)
    scorer = request.app.state.scorers.get(model["run_dir"], bool(model.get("find_object")), request.app.state.finder)
    result = scorer.score_image(image, file.filename or "upload")
    best = max(result.objects, key=lambda item: item.top_probability)
    return {
        "top_class": best.top_class,
        "confidences": best.probabilities,
        "is_class": {name: name == best.top_class for name in best.probabilities},
        "unsure": best.label != best.top_class,  # top probability under the model's unknown threshold
        "box": None if best.box is None else list(best.box),
        "whole_photo": best.box is None,
        "seconds": round(result.seconds, 3),
    }
