"""`detcrop`: one subcommand per job. Only this layer prints and chooses exit codes."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Iterable, Sequence

from detcrop.data.errors import DetcropError, describe_os_error

#: Subcommand modules under `pipeline.commands`; each has `register(subparsers)` that sets
#: `handler(args) -> int` on its parser. Heavy imports (TensorFlow) happen inside handlers.
COMMAND_MODULES = (
    "add",
    "validate",
    "crop",
    "predict",
    "train",
    "evaluate",
    "export",
    "baseline",
    "demo",
    "ui",
)

#: Exit codes.
EXIT_OK = 0
EXIT_FAILED = 1  # the job ran and its answer is "no" (e.g. dataset not usable)
EXIT_USAGE = 2  # bad arguments or input the job cannot start with


def print_skipped(skipped: Iterable) -> None:
    """Report the files a command did not use, the same way in every command (on stderr, so that
    `--json` output stays clean). `skipped`: `detcrop.data.folders.Skipped` items."""
    from detcrop.data.folders import format_skipped

    for line in format_skipped(skipped):
        print(line, file=sys.stderr)


def add_engine_arguments(parser: argparse.ArgumentParser, ray_help: str, model: str) -> None:
    """--engine local|ray, --ray-address and --ray-workers for a command with a job that Ray Data can run."""
    engine = parser.add_argument_group("engine (where the job runs)")
    engine.add_argument("--engine", choices=("local", "ray"), default="local",
                        help=f"local: this process (default); ray: {ray_help}, one {model} per worker")
    engine.add_argument("--ray-address", help="Ray cluster to join (auto, or ray://HOST:10001); default: start a "
                        "local Ray with --ray-workers CPUs")
    engine.add_argument("--ray-workers", type=int, default=2, help=f"{model} actors (one CPU each; default 2)")


def ray_settings(args: argparse.Namespace):
    """`RaySettings` of --ray-address / --ray-workers with --engine ray, else None (local)."""
    from detcrop.data.errors import UsageError
    from detcrop.data.ray_runtime import RaySettings, import_ray

    if args.engine != "ray":
        if args.ray_address:
            raise UsageError("--ray-address needs --engine ray")
        return None
    import_ray()  # before any work: without the extra, say how to install it
    return RaySettings(args.ray_address, args.ray_workers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detcrop",
        description="Detect and crop objects in photos, train a classifier on the crops, score new photos.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"detcrop.pipeline.commands.{name}").register(subparsers)
    for subparser in subparsers.choices.values():
        subparser.add_argument("-v", "--verbose", action="count", default=0,
                               help="show detcrop's INFO lines and third-party logs; -vv adds DEBUG lines")
        subparser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    return parser


def verbosity(args: argparse.Namespace) -> int:
    """The `pipeline.console` verbosity of -q / -v / -vv (-q wins)."""
    from detcrop.pipeline.console import DEFAULT, QUIET

    return QUIET if args.quiet else DEFAULT + args.verbose


def main(argv: Sequence[str] | None = None) -> int:
    from detcrop.pipeline.console import configure_console

    # TensorFlow reads this once, at its first import; TF_ENABLE_ONEDNN_OPTS=0 turns oneDNN off.
    # chosen by measurement: benchmarks/RESULTS.md#onednn
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_console(verbosity(args))
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume where it stopped", file=sys.stderr)
        return 130
    except DetcropError as error:
        # Expected failures say what was expected and what was received: one line, no traceback.
        print(f"detcrop {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        if error.errno is None:
            raise
        # The system refused a file (read-only, full, no such folder): its answer, not a bug.
        print(f"detcrop {args.command}: error: {describe_os_error(error)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
