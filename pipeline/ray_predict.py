"""`detcrop predict ... --out PRED_DIR --engine ray`: the batch job's scoring on Ray Data.

The Ray docs' offline batch inference: photos are read as bytes (`data.ray_runtime.read_files`:
local paths or any filesystem pyarrow reads), an actor pool holds one `Scorer` per worker
(built once, in `__init__`), and each batch goes through `Scorer.score_images`, the local
engine's own step. Results come back in input order, so the folder job
(`pipeline.batch_predict.run_predict_job`) writes the same records as the local engine and
resumes the same way: photos already recorded are read and hashed by the actors, not scored.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Iterator

from detcrop.data.ray_runtime import (RaySettings, list_uri_images, map_with_actors, path_key, ray_session, read_files,
                                      single_thread_tensorflow)
from detcrop.pipeline.scoring import PhotoResult, Scorer

#: Photos per actor call: their crops share one classifier pass.
RAY_BATCH_PHOTOS = 16


@dataclass(frozen=True)
class RayPhoto:
    """One photo of the job: where Ray reads it and the path its record names."""

    read_path: str  # as given to read_binary_files (a local absolute path, or a path in the filesystem)
    path: str  # the local engine's path as given; the URI for remote files


def list_ray_photos(inputs: list[str]) -> tuple[list[RayPhoto], list, object | None]:
    """(photos, skipped, pyarrow filesystem or None): local files and folders, or one URI pyarrow reads."""
    from detcrop.data.errors import UsageError
    from detcrop.data.folders import find_image_paths, not_an_image

    remote = [item for item in inputs if "://" in item]
    if not remote:
        paths, skipped = find_image_paths(inputs)
        return [RayPhoto(os.path.abspath(path), str(path)) for path in paths], skipped, None
    if len(inputs) != 1:
        raise UsageError("--engine ray reads one URI (s3://, gs://, file://) or local files and folders, not both")
    filesystem, root, files, others = list_uri_images(inputs[0])
    prefix = inputs[0].rstrip("/")
    photos = [RayPhoto(f"{root}/{relative.as_posix()}", f"{prefix}/{relative.as_posix()}") for relative in files]
    return photos, [not_an_image(f"{prefix}/{relative.as_posix()}") for relative in others], filesystem


class ScoreActor:
    """One `Scorer` per Ray worker; `__call__` scores a batch of photo bytes."""

    def __init__(self, run_dir: str, load_kwargs: dict, sources: dict, done: frozenset):
        single_thread_tensorflow()
        self.scorer = Scorer.load(run_dir, **load_kwargs)
        self.sources, self.done = sources, done

    def __call__(self, batch: dict) -> dict:
        skip = lambda path, sha256: (path, sha256) in self.done  # noqa: E731
        photos = [self.scorer.read((self.sources[path_key(read_path)], bytes(payload)), skip)
                  for payload, read_path in zip(batch["bytes"], batch["path"])]
        results = iter(self.scorer.score_images([photo for photo in photos if photo is not None]))
        # One entry per input row (None for a recorded photo), so the driver keeps the input order.
        return {"result": [pickle.dumps(None if photo is None else next(results)) for photo in photos]}


def score_on_ray(run_dir: str, load_kwargs: dict, photos: list[RayPhoto], filesystem, settings: RaySettings,
                 done: set, batch_size: int = RAY_BATCH_PHOTOS) -> Iterator[PhotoResult]:
    """The results of the photos not in `done`, in input order, scored by `settings.workers` actors."""
    sources = {path_key(photo.read_path): photo.path for photo in photos}
    with ray_session(settings, preserve_order=True) as ray:
        data = read_files(ray, [photo.read_path for photo in photos], settings.workers, filesystem)
        scored = map_with_actors(ray, data, ScoreActor, settings, batch_size, run_dir=os.path.abspath(run_dir),
                                 load_kwargs=load_kwargs, sources=sources, done=frozenset(done))
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            for blob in batch["result"]:
                result = pickle.loads(bytes(blob))  # made by this job's own actors
                if result is not None:
                    yield result
