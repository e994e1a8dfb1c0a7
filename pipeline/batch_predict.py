"""`detcrop predict RUN PHOTOS --out PRED_DIR`: scoring a crawl as a resumable batch job.

The job is a driver over `Scorer.score_images` (the local engine, `Scorer.score_many`; Ray
Data, `pipeline.ray_predict`). It writes, in PRED_DIR:

- ``predictions.jsonl``: one record per photo, in input order, objects nested; each line is on
  disk before the next photo's (`data.streams.JsonLinesWriter`);
- ``predict_config.json``: the run and the scoring settings the records were made with;
- on completion, ``predictions.parquet`` (one row per object; a photo without one has one row
  with an empty object) and ``summary.json`` (counts per top class, unknown, no object, failed;
  this run's throughput).

Rerunning the same command after a kill scores only the photos not yet recorded (keyed by path
and content hash, as the crop job resumes) and ends with the same ``predictions.jsonl`` and
``predictions.parquet`` as an uninterrupted run: records carry no timings, and the default
classifier runtime (ONNX Runtime) gives each crop the same probabilities whatever batch it
shares. Another run folder or other scoring settings into the same PRED_DIR are refused, naming
the setting; one job at a time holds the folder (`data.locks.folder_lock`).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from detcrop.data.atomic import atomic_open, atomic_write_json
from detcrop.data.errors import DetcropError
from detcrop.data.images import file_sha256
from detcrop.data.layout import MODEL_NAME
from detcrop.data.locks import folder_lock
from detcrop.data.streams import JsonLinesWriter
from detcrop.pipeline.scoring import UNKNOWN, PhotoResult, Scorer

PREDICTIONS_JSONL = "predictions.jsonl"
PREDICTIONS_PARQUET = "predictions.parquet"
PREDICT_SUMMARY = "summary.json"
PREDICT_CONFIG = "predict_config.json"
#: Files the job writes; the folder may hold nothing else.
JOB_FILES = frozenset({PREDICTIONS_JSONL, PREDICTIONS_PARQUET, PREDICT_SUMMARY, PREDICT_CONFIG})
#: Bumped when a record's layout changes meaning.
RECORD_VERSION = 1
#: Objects per parquet row group: memory stays flat while it is written.
PARQUET_ROWS_PER_GROUP = 20_000


class PredictFolderError(DetcropError, ValueError):
    """PRED_DIR holds another job's predictions (another run, other settings) or files the job did not write."""


def record_of(result: PhotoResult) -> dict:
    """The ``predictions.jsonl`` record of a photo: its result without timings (resumed runs equal whole ones)."""
    return {"path": result.path, "sha256": result.sha256, "error": result.error, "note": result.note,
            "top_class": result.top_class(), "objects": [item.to_dict() for item in result.objects]}


def job_settings(scorer: Scorer, run_dir: str | os.PathLike, engine_independent: dict) -> dict:
    """What the records depend on: the run (its folder and model digest) and every scoring setting."""
    crop = scorer.crop_config
    return {
        "record_version": RECORD_VERSION,
        "run": os.path.abspath(run_dir),
        "model_sha256": file_sha256(Path(run_dir) / MODEL_NAME),
        "class_names": list(scorer.class_names),
        "unknown_threshold": scorer.unknown_threshold,
        "detect": scorer.detector is not None,
        "detector": crop.detector if scorer.detector is not None else None,
        "precision": crop.precision if scorer.detector is not None else None,  # the detector's: float32 or int8
        "targets": list(crop.targets),
        "score_threshold": crop.score_threshold,
        "max_objects": crop.max_crops_per_photo,
        "on_empty": crop.on_empty,
        "tta_flip": scorer.tta_flip if scorer.tta_flip is not None else scorer.bundle.metadata.tta_flip,
    } | engine_independent


def _claim_folder(out_dir: Path, settings: dict) -> None:
    """Check PRED_DIR holds this job's files only and was written with `settings`; then record them."""
    if out_dir.exists():
        strangers = sorted(path.name for path in out_dir.iterdir()
                           if path.name not in JOB_FILES and not path.name.startswith("."))
        if strangers:
            raise PredictFolderError(f"{out_dir}: holds files a predict job did not write ({', '.join(strangers[:3])}); "
                                     "choose an empty or new --out")
        saved_path = out_dir / PREDICT_CONFIG
        if saved_path.is_file():
            try:
                saved = json.loads(saved_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as error:
                raise PredictFolderError(f"{saved_path}: unreadable ({error}); choose a new --out") from None
            for key, value in settings.items():
                if saved.get(key) != value:
                    raise PredictFolderError(
                        f"{out_dir}: its predictions were made with {key}={saved.get(key)!r}, this job has {value!r}; "
                        "rerun with the same settings to resume, or choose another --out")
    atomic_write_json(out_dir / PREDICT_CONFIG, settings)


def recorded_keys(path: Path) -> set[tuple[str, str | None]]:
    """(path, sha256) of every complete record in ``predictions.jsonl`` (a half-written last line is not one)."""
    keys = set()
    if not path.is_file():
        return keys
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line)
                keys.add((record["path"], record["sha256"]))
            except (ValueError, KeyError, TypeError):
                raise PredictFolderError(f"{path}: a line is not a predictions record; choose a new --out") from None
    return keys


def run_predict_job(out_dir: str | os.PathLike, settings: dict, score: Callable[[set], Iterable[PhotoResult]],
                    total: int, class_names: Sequence[str], progress: bool = True,
                    on_result: Callable[[PhotoResult], None] | None = None) -> dict:
    """The folder job around an engine: lock, check, resume, append records, then parquet and summary.

    `score(done)` yields the results of the photos not in `done` ((path, sha256) keys), in input
    order; `total` counts every photo of the job, recorded or not. `on_result` sees each new
    result (plots, the terminal table). Returns the summary.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(out_dir, "predict"):
        _claim_folder(out_dir, settings)
        jsonl = out_dir / PREDICTIONS_JSONL
        with JsonLinesWriter(jsonl) as writer:  # cuts a half-written last line first
            done = recorded_keys(jsonl)
            started, scored = time.perf_counter(), 0
            figures = Counter({"classified": 0, "no_object": 0, "failed": 0})
            bar = tqdm(total=total, initial=min(len(done), total), desc="predict", unit="photo", disable=not progress)
            for result in score(done):
                writer.write_line(json.dumps(record_of(result), ensure_ascii=False))
                scored += 1
                figures["failed" if result.error else "classified" if result.objects else "no_object"] += 1
                if on_result is not None:
                    on_result(result)
                bar.set_postfix(figures, refresh=False)
                bar.update(1)
            bar.close()
        seconds = time.perf_counter() - started
        write_parquet(jsonl, out_dir / PREDICTIONS_PARQUET, class_names)
        summary = summarise(read_records(jsonl), class_names) | {
            "scored_this_run": scored, "recorded_before": len(done), "seconds_this_run": round(seconds, 2),
            "photos_per_second": round(scored / seconds, 2) if seconds > 0 else None}
        atomic_write_json(out_dir / PREDICT_SUMMARY, summary)
        return summary


def read_records(path: Path) -> Iterator[dict]:
    """The records of ``predictions.jsonl``, one at a time."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


def summarise(records: Iterable[dict], class_names: Sequence[str]) -> dict:
    """Counts over every record: photos, per top class, unknown, no object, failed."""
    per_class = Counter({name: 0 for name in class_names})
    counts = Counter({"photos": 0, "unknown": 0, "no_object": 0, "failed": 0})
    for record in records:
        counts["photos"] += 1
        if record["error"]:
            counts["failed"] += 1
        elif not record["objects"]:
            counts["no_object"] += 1
        elif record["top_class"] == UNKNOWN:
            counts["unknown"] += 1
        else:
            per_class[record["top_class"]] += 1
    return dict(counts) | {"per_class": dict(per_class)}


def _object_rows(record: dict, class_names: Sequence[str]) -> Iterator[dict]:
    """Parquet rows of one record: one per object, or one with empty object columns."""
    base = {"path": record["path"], "sha256": record["sha256"], "error": record["error"], "note": record["note"],
            "photo_top_class": record["top_class"]}
    empty = {"object": None, "label": None, "top_class": None, "top_probability": None, "detector_score": None,
             "region": None, **{key: None for key in ("x_min", "y_min", "x_max", "y_max")},
             **{f"p_{name}": None for name in class_names}}
    if not record["objects"]:
        yield base | empty
    for index, item in enumerate(record["objects"]):
        box = item["box"] or item["crop_box"]
        yield base | {"object": index, "label": item["label"], "top_class": item["top_class"],
                      "top_probability": item["top_probability"], "detector_score": item["detector_score"],
                      "region": item["region"], **dict(zip(("x_min", "y_min", "x_max", "y_max"), map(float, box))),
                      **{f"p_{name}": item["probabilities"][name] for name in class_names}}


def write_parquet(jsonl: Path, target: Path, class_names: Sequence[str]) -> None:
    """``predictions.parquet`` from ``predictions.jsonl``, in row groups (flat memory), written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text, number = pa.string(), pa.float64()
    schema = pa.schema([("path", text), ("sha256", text), ("error", text), ("note", text), ("photo_top_class", text),
                        ("object", pa.int32()), ("label", text), ("top_class", text), ("top_probability", number),
                        ("detector_score", number), ("region", text),
                        *[(name, number) for name in ("x_min", "y_min", "x_max", "y_max")],
                        *[(f"p_{name}", number) for name in class_names]])
    with atomic_open(target, "wb") as handle, pq.ParquetWriter(handle, schema) as writer:
        rows: list[dict] = []
        for record in read_records(jsonl):
            rows.extend(_object_rows(record, class_names))
            if len(rows) >= PARQUET_ROWS_PER_GROUP:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                rows = []
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
