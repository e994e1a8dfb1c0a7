"""What every detcrop job on Ray Data shares: importing Ray, starting or joining it, reading files as bytes.

`detect.ray_engine` (the crop job) and `classify.ray_features` (train's feature pass) both
follow the Ray docs' offline batch inference example: files read as bytes with
`read_binary_files`, a callable class holding one model per actor, `map_batches` with an
`ActorPoolStrategy`, and a model file shipped once through the object store. The pieces
they share live here, on the ground floor, so that neither imports the other.

Ray is an optional extra: `pip install 'detcrop[ray]'`.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Iterator

from detcrop.data.errors import DetcropError, UsageError


class RayMissingError(DetcropError, ImportError):
    """Ray is not installed; the message says how to install it."""


@dataclass(frozen=True)
class RaySettings:
    """Where a job's Ray workers run: a cluster at `address`, or a local Ray started for the job."""

    address: str | None = None  # "auto", "ray://HOST:10001"; None = start a local Ray with `workers` + 1 CPUs
    workers: int = 2  # actors in the pool, one model and one CPU each

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UsageError(f"--ray-workers must be >= 1, got {self.workers}")


def import_ray():
    """The `ray` module, or `RayMissingError` saying how to install the extra."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray[data]: pyarrow, pandas)
    except ImportError:
        raise RayMissingError("--engine ray needs Ray Data: pip install 'detcrop[ray]' "
                              "(ray[data] 2.60; or use --engine local)") from None
    return ray


@contextmanager
def ray_session(settings: RaySettings, preserve_order: bool = False) -> Iterator:
    """The `ray` module, connected to `settings.address` or to a local Ray started (and stopped) here.

    `preserve_order`: batches come back in input order (the crop job's manifest needs it).
    """
    ray = import_ray()
    started_here = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
        if settings.address:
            ray.init(address=settings.address, **quiet)
        else:
            # One CPU per actor and one for the read tasks: with only `workers` CPUs the actors
            # would hold them all and the reads that feed them would never be scheduled.
            ray.init(num_cpus=settings.workers + 1, include_dashboard=False, **quiet)
        started_here = True
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = preserve_order
    context.enable_progress_bars = False
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


def read_files(ray, read_paths: list[str], workers: int, filesystem=None):
    """A Ray dataset of {"bytes", "path"} rows, one per file (local paths, or paths in a pyarrow `filesystem`).

    Reads take half a CPU, so they run beside actors that hold one CPU each. A few dozen small
    files would otherwise make one block, which only one actor of the pool could take.
    """
    kwargs = {"filesystem": filesystem} if filesystem is not None else {}
    blocks = max(1, min(len(read_paths), max(200, 4 * workers)))
    return ray.data.read_binary_files(list(read_paths), include_paths=True, num_cpus=0.5,
                                      override_num_blocks=blocks, **kwargs)


def list_uri_images(uri: str):
    """(pyarrow filesystem, root path in it, image files, other files) under a URI pyarrow reads (s3://, gs://, file://).

    Files are paths relative to the root (`PurePosixPath`), sorted; hidden ones are left out.
    """
    import pyarrow.fs

    from detcrop.data.images import is_image_path

    filesystem, root = pyarrow.fs.FileSystem.from_uri(uri)
    root = root.rstrip("/")
    infos = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    files, others = [], []
    for info in infos:
        if info.type != pyarrow.fs.FileType.File:
            continue
        relative = PurePosixPath(info.path).relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        (files if is_image_path(relative.name) else others).append(relative)
    return filesystem, root, sorted(files), sorted(others)


def path_key(path: str | os.PathLike) -> str:
    """A path as given to `read_files`, and as Ray gives it back in the "path" column, made comparable."""
    return os.path.normcase(os.path.normpath(str(path)))


def map_with_actors(ray, dataset, actor_class, settings: RaySettings, batch_size: int, **actor_kwargs):
    """`dataset.map_batches(actor_class)` on a pool of `settings.workers` actors, one CPU each.

    `actor_kwargs` go to each actor's `__init__`; a `bytes` value (a model file) is put in the
    object store once and reaches the actors as an `ObjectRef` that `shared_value` resolves.
    """
    kwargs = {key: ray.put(value) if isinstance(value, bytes) else value for key, value in actor_kwargs.items()}
    # One batch in flight per actor: an actor that is ready first would otherwise queue the
    # batches of a small job and leave the others idle.
    pool = ray.data.ActorPoolStrategy(size=settings.workers, max_tasks_in_flight_per_actor=1)
    return dataset.map_batches(actor_class, fn_constructor_kwargs=kwargs, batch_size=batch_size, compute=pool,
                               num_cpus=1)


def shared_value(value):
    """In an actor's `__init__`: the value behind an `ObjectRef` from `map_with_actors`, else `value`."""
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def single_thread_tensorflow() -> None:
    """One TensorFlow thread per actor: Ray scales by actors, one per CPU."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TensorFlow already runs in this process (an actor called in-process): its threads stay


__all__ = ["RayMissingError", "RaySettings", "import_ray", "list_uri_images", "map_with_actors", "path_key", "ray_session",
           "read_files", "shared_value", "single_thread_tensorflow"]
