"""Training for the page: `classify.training.train` in a worker thread, followed epoch by epoch.

The worker listens the way any Keras user would: a `keras.callbacks.Callback` whose
`on_epoch_end(epoch, logs)` appends a history row (and wakes the server-sent-event streams),
and whose batch hooks set `model.stop_training = True` once a cancel was asked for. TensorFlow
releases the GIL while it computes, so the web server stays responsive in the main thread.

Each training writes a fresh run folder under `PROJECT/runs/`; it becomes the project's model
only when it finishes. A failed or cancelled run's folder is removed, the previous model stays.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from detcrop.data.atomic import atomic_write_json
from detcrop.data.config import config_to_dict
from detcrop.pipeline.ui.project import Project, ProjectError, TrainSettings

logger = logging.getLogger(__name__)

#: The TrainConfig preset the page trains with (its four settings override it): `classify.config.PRESETS`.
PAGE_PRESET = "page"

STATES = ("idle", "training", "done", "failed", "cancelled")


def _rounded(value) -> float | None:
    return None if value is None else round(float(value), 6)


def _metric(logs: dict, *names: str) -> float | None:
    """The first of `names` present in a Keras logs dict, rounded as the page shows it."""
    for name in names:
        if logs.get(name) is not None:
            return _rounded(logs[name])
    return None


class TrainingJob:
    """One training at a time for one project; `status()` is what `GET /api/train/status` returns."""

    def __init__(self, project: Project, train_overrides: dict | None = None):
        self.project = project
        self.train_overrides = dict(train_overrides or {})
        self.changed = threading.Condition()
        self.state = "idle"
        self.phase = ""  # what the worker is doing: preparing images, training, saving
        self.error: str | None = None
        self.history: list[dict] = []
        self.epochs = 0
        self.version = 0  # bumped on every change; event streams compare it
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._load_last_history()

    def _load_last_history(self) -> None:
        """After a restart the page shows the chart of the model it has."""
        model = self.project.state.get("model")
        if not model:
            return
        path = Path(model["run_dir"]) / "history.json"
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            # history.json names the metrics as Keras does (accuracy); older runs wrote acc.
            columns = {key: saved.get(name, saved.get(old)) for key, name, old in (
                ("acc", "accuracy", "acc"), ("val_acc", "val_accuracy", "val_acc"),
                ("loss", "loss", "loss"), ("val_loss", "val_loss", "val_loss"))}
            self.history = [{"epoch": index + 1, **{key: _rounded(values[index]) for key, values in columns.items()}}
                            for index in range(len(columns["acc"]))]
            self.state, self.epochs = "done", len(self.history)
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            logger.warning("%s: no readable training history for the saved model", path)

    # ------------------------------------------------------------------ reading
    def status(self) -> dict:
        with self.changed:
            return {"state": self.state, "phase": self.phase, "error": self.error, "epochs": self.epochs,
                    "history": list(self.history), "version": self.version}

    def _update(self, **fields) -> None:
        with self.changed:
            for key, value in fields.items():
                setattr(self, key, value)
            self.version += 1
            self.changed.notify_all()

    # ------------------------------------------------------------------ control
    def start(self, settings: TrainSettings) -> None:
        """Start training with `settings`; `ProjectError` 409 while a training runs, 400 when a
        class is short of images."""
        from detcrop.classify.training import make_train_config

        with self.changed:
            if self.state == "training":
                raise ProjectError("a training is already running; wait for it or cancel it", 409)
            self.project.check_trainable()
            config = make_train_config({**self.train_overrides, **config_to_dict(settings)}, preset=PAGE_PRESET)
            self.project.save_settings(settings)
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
            run_dir = self.project.runs_dir / stamp
            dataset_dir = self.project.snapshot_dataset(run_dir / "dataset")
            find_object = self.project.state["find_object"]
            if find_object["enabled"]:
                from detcrop.pipeline.ui.find_object import crop_config_for

                # The bundle carries this, so `detcrop predict RUN` finds and crops the object too.
                atomic_write_json(dataset_dir / "crop_config.json", config_to_dict(crop_config_for(find_object["target"])))
            self._cancel.clear()
            self._update(state="training", phase="preparing images", error=None, history=[], epochs=config.epochs)
        self._thread = threading.Thread(target=self._work, args=(dataset_dir, run_dir, config),
                                        name="detcrop-ui-training", daemon=True)
        self._thread.start()

    def cancel(self) -> bool:
        """Ask the running training to stop; False when none runs."""
        with self.changed:
            if self.state != "training":
                return False
            self._cancel.set()
            self._update(phase="cancelling")
            return True

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ worker
    def _callback(self):
        import keras

        job = self

        class PageProgress(keras.callbacks.Callback):
            def _check_cancel(self):
                if job._cancel.is_set():
                    self.model.stop_training = True

            def on_train_begin(self, logs=None):
                job._update(phase="training")
                self._check_cancel()

            def on_train_batch_end(self, batch, logs=None):
                self._check_cancel()

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                row = {"epoch": len(job.history) + 1,
                       "acc": _metric(logs, "acc", "accuracy"), "val_acc": _metric(logs, "val_acc", "val_accuracy"),
                       "loss": _metric(logs, "loss"), "val_loss": _metric(logs, "val_loss")}
                job._update(history=[*job.history, row])
                self._check_cancel()

            def on_train_end(self, logs=None):
                if not job._cancel.is_set():
                    job._update(phase="saving the model")

        return PageProgress()

    def _work(self, dataset_dir: Path, run_dir: Path, config) -> None:
        from detcrop.classify.training import train

        started = time.perf_counter()
        try:
            result = train(dataset_dir, run_dir, config, progress=False, callbacks=[self._callback()])
        except Exception as error:  # shown on the page; the traceback goes to the log
            shutil.rmtree(run_dir, ignore_errors=True)
            if self._cancel.is_set():  # stopped before the first epoch ended: nothing to keep
                self._update(state="cancelled", phase="")
                return
            logger.exception("training failed")
            self._update(state="failed", phase="", error=str(error) or type(error).__name__)
            return
        if self._cancel.is_set():
            shutil.rmtree(run_dir, ignore_errors=True)
            self._update(state="cancelled", phase="")
            return
        metrics = result.metrics
        previous = self.project.state.get("model")
        self.project.set_model({
            "run_dir": str(run_dir), "run": run_dir.name,
            "class_names": sorted(p.name for p in dataset_dir.iterdir() if p.is_dir()),
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "accuracy": metrics.get("accuracy"), "macro_f1": metrics.get("macro_f1"),
            "train_images": metrics.get("train_images"), "val_images": metrics.get("val_images"),
            "epochs_run": len(self.history), "seconds": round(time.perf_counter() - started, 1),
            "find_object": bool((dataset_dir / "crop_config.json").is_file()),
        })
        if previous and Path(previous["run_dir"]).parent == self.project.runs_dir:
            # The project keeps its latest model only; each run folder holds a whole model.
            shutil.rmtree(previous["run_dir"], ignore_errors=True)
        self._update(state="done", phase="")
