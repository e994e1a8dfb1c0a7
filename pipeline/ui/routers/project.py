"""`/api/project`: the whole project as the page draws it; its name and the find-object switch;
`/api/model/download`: the trained model exported for use elsewhere."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict

from detcrop.pipeline.ui.project import EXPORT_STAGING, EXPORTS_DIR, ProjectError

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
    """A zip of `detcrop export RUN --format FORMAT`: the model, labels.txt and export.json.

    Each model's export in each format is made once and kept until another model replaces it;
    one export runs at a time (a request that finds one running waits for it, then reuses it).
    """
    project = request.app.state.project
    model = project.state.get("model")
    if not model:
        raise ProjectError("there is no trained model yet; train one first", 409)
    exports = project.root / EXPORTS_DIR
    archive = exports / f"{model['run']}-{format}.zip"
    with request.app.state.export_lock:
        if not archive.is_file():
            _export_archive(model, format, archive)
    safe_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in project.state["name"]) or "model"
    return FileResponse(archive, media_type="application/zip", filename=f"{safe_name}-{format}.zip")


def _export_archive(model: dict, format: str, archive: Path) -> None:
    from detcrop.classify.export import export_bundle
    from detcrop.data.atomic import StagingFolder

    exports = archive.parent
    # A locked, recognisable staging folder: a server killed mid-export leaves one that the
    # next start removes (`Project.remove_stale`).
    with StagingFolder(exports / EXPORT_STAGING, "export") as staging:
        try:
            export_bundle(model["run_dir"], staging.path / "model", format)
            built = shutil.make_archive(str(staging.path / "archive"), "zip", staging.path / "model")
            Path(built).replace(archive)
        finally:
            shutil.rmtree(staging.path, ignore_errors=True)
    for old in exports.glob("*.zip"):  # earlier models' exports; this model's other format stays
        if not old.name.startswith(f"{model['run']}-"):
            old.unlink(missing_ok=True)
