"""The `detcrop ui` web app: the JSON API the page uses, the page itself, the thumbnails.

`create_app(project_dir)` builds a FastAPI app with one router per resource (`routers/`):
project (and the model download), classes, images, train, predict. Safety rules:

- Requests must name a local host (`Host`: 127.0.0.1, localhost, ::1 or the address served),
  which keeps DNS-rebinding pages out; requests that change anything (any method but GET and
  HEAD) are refused when their `Origin` is another site's.
- Only the package's static files and the project's thumbnails are served.
- Every error body is `{"error": "..."}`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from detcrop.data.errors import DetcropError
from detcrop.pipeline.ui.find_object import ObjectFinder
from detcrop.pipeline.ui.project import Project, ProjectError, ProjectLimits
from detcrop.pipeline.ui.training_job import TrainingJob

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _host_name(host_header: str) -> str:
    """'127.0.0.1:8765' -> '127.0.0.1'; '[::1]:8765' -> '[::1]'."""
    if host_header.startswith("["):
        return host_header.split("]")[0] + "]"
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def create_app(project_dir: str | os.PathLike, limits: ProjectLimits = ProjectLimits(),
               train_overrides: dict | None = None, detector=None,
               extra_hosts: tuple[str, ...] = ()) -> FastAPI:
    """The app for the project in `project_dir` (created if missing).

    `train_overrides` are TrainConfig values beyond the page's settings (tests use the
    `scratch` backbone at 32 px); `detector` replaces the SSD for "find the object first";
    `extra_hosts` are host names accepted beside the local ones (the address `--host` binds).
    """
    from detcrop.pipeline.ui.routers import classes, images, predict, project as project_router, train

    app = FastAPI(title="detcrop ui", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.project = Project(project_dir, limits)
    app.state.training = TrainingJob(app.state.project, train_overrides)
    app.state.finder = ObjectFinder(detector)
    app.state.scorers = predict.ScorerCache()
    allowed_hosts = LOCAL_HOSTS | {host.lower() for host in extra_hosts}

    @app.middleware("http")
    async def local_and_same_origin_only(request: Request, call_next):
        host = request.headers.get("host", "")
        if _host_name(host).lower() not in allowed_hosts:
            return JSONResponse({"error": f"host {host!r} is not served here; open http://127.0.0.1 instead"},
                                status_code=421)
        origin = request.headers.get("origin")
        if request.method not in _SAFE_METHODS and origin is not None \
                and origin != f"{request.url.scheme}://{host}":
            return JSONResponse({"error": f"requests from another site ({origin}) are refused"}, status_code=403)
        return await call_next(request)

    @app.exception_handler(ProjectError)
    async def project_error(request: Request, error: ProjectError):
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(DetcropError)
    async def expected_error(request: Request, error: DetcropError):
        return JSONResponse({"error": str(error)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
                             for item in error.errors())
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=422)

    for module in (project_router, classes, images, train, predict):
        app.include_router(module.router)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/thumbnails/{class_name}/{file_name}", include_in_schema=False)
    def thumbnail(class_name: str, file_name: str, request: Request):
        if not file_name.endswith(".jpg"):
            raise ProjectError("no such thumbnail", 404)
        return FileResponse(request.app.state.project.thumbnail_path(class_name, file_name[:-4]))

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
