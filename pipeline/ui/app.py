"""The `detcrop ui` web app: the JSON API the page uses, the page itself, the thumbnails.

`create_app(project_dir)` builds a FastAPI app with one router per resource (`routers/`):
project (and the model download), classes, images, train, predict. Safety rules:

- Requests must name a local host (`Host`: 127.0.0.1, localhost, ::1 or the address served),
  which keeps DNS-rebinding pages out. Requests from another site (a foreign `Origin`, or
  `Sec-Fetch-Site` cross-site or same-site) are refused, GET included, on everything but the
  page and its static files: another site can neither change the project nor make the server
  work (train, export, predict) nor read the model, the thumbnails or the training events.
- The page cannot be framed, and its Content-Security-Policy allows only its own origin.
- A request body over `ProjectLimits.max_request_bytes` is refused (413) from its
  Content-Length, or cut off at the cap when it is streamed, before it is stored.
- Only the package's static files and the project's thumbnails are served.
- Every error body is `{"error": "..."}`, an unexpected failure's too (500).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from detcrop.data.errors import DetcropError
from detcrop.pipeline.ui.find_object import ObjectFinder
from detcrop.pipeline.ui.project import Project, ProjectError, ProjectLimits, megabytes
from detcrop.pipeline.ui.training_job import TrainingJob

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
#: `Sec-Fetch-Site` values of requests another site's page made (a browser sends the header itself).
_OTHER_SITES = frozenset({"cross-site", "same-site"})
#: Sent with every response: no framing (clickjacking), nothing loaded from elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _host_name(host_header: str) -> str:
    """'127.0.0.1:8765' -> '127.0.0.1'; '[::1]:8765' -> '[::1]'."""
    if host_header.startswith("["):
        return host_header.split("]")[0] + "]"
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def _from_another_site(request: Request, host: str) -> str | None:
    """The other site a request comes from (its Origin, or what Sec-Fetch-Site says), else None."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{host}":
        return origin
    site = request.headers.get("sec-fetch-site", "").lower()
    return f"a {site} page" if site in _OTHER_SITES else None


def _open_to_other_sites(request: Request) -> bool:
    """The page itself (a link to it from elsewhere) and its static files: nothing of the project."""
    path = request.url.path
    return request.method in ("GET", "HEAD") and (path == "/" or path.startswith("/static/"))


class RequestSizeLimit:
    """ASGI middleware: a body over `max_bytes` is refused (413) by its Content-Length before it
    is read, or cut off once the bytes streamed in pass `max_bytes`; nothing past the cap is stored."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    def _refusal(self) -> str:
        return f"the request is over the limit of {megabytes(self.max_bytes)}; send fewer or smaller files at a time"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > self.max_bytes):
            response = JSONResponse({"error": self._refusal()}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI passes its HTTPException through body parsing to the error handler.
                    raise HTTPException(413, self._refusal())
            return message

        return await self.app(scope, limited_receive, send)


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
    app.state.export_lock = threading.Lock()  # one model export at a time
    app.state.project.remove_stale()
    allowed_hosts = LOCAL_HOSTS | {host.lower() for host in extra_hosts}

    # Inside the middleware below (added first): its 413 gets the same headers, and its error
    # reaches FastAPI's handler as an HTTPException rather than wrapped in a task group's error.
    app.add_middleware(RequestSizeLimit, max_bytes=limits.max_request_bytes)

    @app.middleware("http")
    async def local_and_same_origin_only(request: Request, call_next):
        host = request.headers.get("host", "")
        if _host_name(host).lower() not in allowed_hosts:
            response = JSONResponse({"error": f"host {host!r} is not served here; open http://127.0.0.1 instead"},
                                    status_code=421)
        elif (other := _from_another_site(request, host)) is not None and not _open_to_other_sites(request):
            response = JSONResponse({"error": f"requests from another site ({other}) are refused"}, status_code=403)
        else:
            try:
                response = await call_next(request)
            except Exception as error:  # a bug: logged with its traceback, answered as JSON all the same
                logger.exception("%s %s failed", request.method, request.url.path)
                response = JSONResponse({"error": f"internal error: {type(error).__name__}: {error}"}, status_code=500)
        response.headers.update(SECURITY_HEADERS)
        return response

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
