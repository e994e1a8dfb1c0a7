"""`/api/classes/{name}/images`: upload (several at once) and delete a class's images."""

from __future__ import annotations

from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, File, Request, UploadFile

from detcrop.pipeline.ui.find_object import ObjectNotCropped
from detcrop.pipeline.ui.project import ProjectError
from detcrop.pipeline.ui.uploads import UploadRefused, read_image_upload

router = APIRouter(tags=["images"])


@router.post("/api/classes/{class_name}/images")
def add_images(class_name: str, request: Request, files: list[UploadFile] = File(...)) -> dict:
    """Each file is decoded, optionally cropped to the object the detector finds, squared and
    stored. 200 with `added` ids and `refused` files with their reason (a file over 10 MB,
    not an image, or one that would overflow the project)."""
    project = request.app.state.project
    project.image_ids(class_name)  # 404 for a class that does not exist
    find_object = project.state["find_object"]
    added, duplicates, refused = [], [], []
    for upload in files:
        name = upload.filename or "(unnamed)"
        try:
            image = read_image_upload(upload.file, project.limits.max_upload_bytes, name)
        except UploadRefused as error:
            refused.append({"file": name, "reason": error.reason})
            continue
        note = None
        if find_object["enabled"]:
            try:
                found = request.app.state.finder.find(np.asarray(image, dtype=np.uint8), find_object["target"],
                                                      class_name, name)
            except ObjectNotCropped as error:
                refused.append({"file": name, "reason": f"the detector failed: {error.reason}"})
                continue
            image, note = found.image, found.note()
        try:
            image_id, was_new = project.add_image(class_name, image, note)
        except ProjectError as error:
            refused.append({"file": name, "reason": str(error)})
            continue
        entry = {"file": name, "id": image_id, "url": f"/thumbnails/{quote(class_name)}/{image_id}.jpg",
                 **({"detection": note} if note else {})}
        (added if was_new else duplicates).append(entry)
    return {"added": added, "duplicates": duplicates, "refused": refused}


@router.delete("/api/classes/{class_name}/images/{image_id}", status_code=204)
def delete_image(class_name: str, image_id: str, request: Request) -> None:
    request.app.state.project.delete_image(class_name, image_id)
