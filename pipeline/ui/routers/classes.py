"""`/api/classes`: add, rename, delete classes (the class name is the answer the model gives)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

router = APIRouter(tags=["classes"])


class ClassName(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


@router.post("/api/classes", status_code=201)
def add_class(body: ClassName, request: Request) -> dict:
    return {"name": request.app.state.project.add_class(body.name), "images": []}


@router.patch("/api/classes/{class_name}")
def rename_class(class_name: str, body: ClassName, request: Request) -> dict:
    return {"name": request.app.state.project.rename_class(class_name, body.name)}


@router.delete("/api/classes/{class_name}", status_code=204)
def delete_class(class_name: str, request: Request) -> None:
    request.app.state.project.delete_class(class_name)
