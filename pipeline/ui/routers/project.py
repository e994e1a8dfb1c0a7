"""`/api/project`: the whole project as the page draws it; its name and the find-object switch;
`/api/model/download`: the trained model exported for use elsewhere."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict

from detcrop.pipeline.ui.project import ProjectError

router = APIRouter(tags=["project"])


class ProjectUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    find_object: dict | None = None  # {"enabled": bool, "target": COCO class name}


@router.get("/api/project")
def get_project(request: Request) -> dict:
    """`{name, classes: [{name, images: [{id, url}]}], settings, model, ...}`"""
    return request.app.state.project.describe()


@router.patch("/api/project")
def update_project(update: ProjectUpdate, request: Request) -> dict:
    request.app.state.project.update(name=update.name, find_object=update.find_object)
    return request.app.state.project.describe()


@router.get("/api/model/download")
def download_model(request: Request, format: str = Query("tflite", pattern="^(tflite|savedmodel)$")):
    """A zip of `detcrop export RUN --format FORMAT`: the model, labels.txt and export.json."""
    from detcrop.classify.export import export_bundle

    project = request.app.state.project
    model = project.state.get("model")
    if not model:
        raise ProjectError("there is no trained model yet; train one first", 409)
    exports = project.root / "exports"
    archive = exports / f"{model['run']}-{format}.zip"
    if not archive.is_file():
        exports.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=exports) as staging:
            export_bundle(model["run_dir"], Path(staging) / "model", format)
            built = shutil.make_archive(str(Path(staging) / "archive"), "zip", Path(staging) / "model")
            for old in exports.glob("*.zip"):  # earlier models' exports
                old.unlink()
            Path(built).replace(archive)
    safe_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in project.state["name"]) or "model"
    return FileResponse(archive, media_type="application/zip", filename=f"{safe_name}-{format}.zip")
