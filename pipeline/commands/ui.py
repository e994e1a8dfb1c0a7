"""`detcrop ui`: the beginner's flow (classes, photos or camera shots, train, test) as a local web page."""

from __future__ import annotations

import argparse
import logging
import threading

from detcrop.data.errors import UsageError

logger = logging.getLogger(__name__)

LOCAL_ADDRESSES = ("127.0.0.1", "localhost", "::1")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ui",
        help="open the beginner's page: make classes, add photos or camera shots, train, test, download",
        description="Serves a local web page (and the JSON API it uses) for one project folder. "
        "Binds 127.0.0.1 by default, so only this computer can open it. Needs `pip install detcrop[ui]`.",
    )
    parser.add_argument("--project-dir", default="detcrop-project",
                        help="project folder, created if missing and reopened as it was (default ./detcrop-project)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; anything else lets other computers in)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from detcrop.data.errors import DetcropError
    from detcrop.data.locks import folder_lock

    try:
        import uvicorn

        from detcrop.pipeline.ui.app import create_app
    except ImportError as error:
        raise DetcropError(f"the page needs the ui extra ({error.name} is missing): pip install 'detcrop[ui]'") from None
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be 1-65535, got {args.port}")
    if args.host not in LOCAL_ADDRESSES:
        bar = "!" * 78
        print(f"{bar}\nWARNING: binding {args.host}: any computer that can reach this one can open the page, "
              f"add or delete\nimages and train. There is no password. Use the default 127.0.0.1 unless you "
              f"mean it.\n{bar}", flush=True)
    # Two servers on one project would each keep their own idea of it (the model, the runs it
    # may delete); the second one exits naming the first.
    with folder_lock(args.project_dir, "ui", port=args.port):
        app = create_app(args.project_dir, extra_hosts=(args.host,) if args.host not in LOCAL_ADDRESSES else ())
        shown = f"[{args.host}]" if ":" in args.host else args.host
        print(f"detcrop ui: project {app.state.project.root}\nopen http://{shown}:{args.port}/ (Ctrl+C stops)",
              flush=True)
        # Importing TensorFlow takes seconds; do it while the user makes classes and adds photos,
        # not when they press Train.
        threading.Thread(target=_import_tensorflow, name="detcrop-ui-warm-up", daemon=True).start()
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
    return 0


def _import_tensorflow() -> None:
    import keras  # noqa: F401
