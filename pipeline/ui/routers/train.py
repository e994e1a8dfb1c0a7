"""`/api/train`: start (settings in the body), follow (status, server-sent events), cancel."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict

from detcrop.data.config import config_to_dict
from detcrop.pipeline.ui.project import check_settings

router = APIRouter(tags=["train"])


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    val_ratio: float | None = None


@router.post("/api/train", status_code=202)
def start_training(body: TrainRequest, request: Request) -> dict:
    """202 once the worker started; 409 while one runs; 400 naming short classes or bad settings."""
    project = request.app.state.project
    given = {key: value for key, value in body.model_dump().items() if value is not None}
    settings = check_settings({**project.state["settings"], **given})
    request.app.state.training.start(settings)
    return {"state": "training", "settings": config_to_dict(settings)}


@router.get("/api/train/status")
def training_status(request: Request) -> dict:
    """`{state: idle|training|done|failed|cancelled, phase, error, epochs, history: [{epoch, acc, val_acc, loss, val_loss}]}`"""
    return request.app.state.training.status()


@router.post("/api/train/cancel")
def cancel_training(request: Request) -> dict:
    return {"cancelling": request.app.state.training.cancel()}


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


@router.get("/api/train/events")
async def training_events(request: Request) -> StreamingResponse:
    """Server-sent events: `epoch` (one history row per epoch, earlier ones first) and `state`
    (state and phase changes); the stream ends after the state that ends a training."""
    job = request.app.state.training

    async def stream():
        yield "retry: 2000\n\n"
        sent_rows, sent_state, version = 0, None, -1
        while True:
            status = job.status()
            if status["version"] != version:
                version = status["version"]
                for row in status["history"][sent_rows:]:
                    yield _event("epoch", row)
                sent_rows = len(status["history"])
                state = {key: status[key] for key in ("state", "phase", "error", "epochs")}
                if state != sent_state:
                    sent_state = state
                    yield _event("state", state)
                if status["state"] != "training":
                    return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.2)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
