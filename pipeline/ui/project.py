"""A `detcrop ui` project on disk: classes of squared images, settings, the trained model.

Layout of the project folder (reopened as it was after a restart):

    DIR/project.json              name, train settings, the "find the object first" switch,
                                  notes on images (detector box, whole photo), the current model
    DIR/dataset/<class>/<id>.png  the class-folder dataset (`detcrop add` writes the same files)
    DIR/thumbnails/<class>/<id>.jpg
    DIR/runs/<time>/              one ordinary run folder per training (`detcrop predict RUN` works)

An image id is the first 16 hex digits of the SHA-256 of its PNG, so adding the same image to
a class twice keeps one copy. All changes go through one lock; files are written atomically.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from detcrop.data.atomic import atomic_write_bytes, atomic_write_json
from detcrop.data.config import ConfigError, build_config, config_to_dict, read_json_object
from detcrop.data.errors import DetcropError
from detcrop.data.folders import check_class_name, class_name_key, normalize_class_name, square_image, store_png
from detcrop.data.images import ImageError, ImageLimits, is_image_path, read_image_bytes

logger = logging.getLogger(__name__)

PROJECT_FILE = "project.json"
DATASET_DIR = "dataset"
THUMBNAIL_DIR = "thumbnails"
RUNS_DIR = "runs"
EXPORTS_DIR = "exports"
#: The name `routers.project` stages a download's export under (`data.atomic.StagingFolder`).
EXPORT_STAGING = "download"
#: An image id: the first 16 hex digits of the SHA-256 of the stored PNG.
IMAGE_ID = re.compile(r"^[0-9a-f]{16}$")


class ProjectError(DetcropError):
    """A request the project cannot do; `status` is the HTTP status the page gets."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ProjectLimits:
    """Limits of one project (the page shows them)."""

    max_upload_bytes: int = 10 * 1024 * 1024  # one uploaded file, before decoding
    max_request_bytes: int = 64 * 1024 * 1024  # one request body, all its files together (the page splits bigger uploads)
    max_project_bytes: int = 500 * 1024 * 1024  # stored images and thumbnails of all classes together
    image_size: int = 224  # side of the stored squared images (pixels)
    thumbnail_size: int = 128  # side of the thumbnails the page shows (pixels)
    min_images_per_class: int = 5  # training needs this many images in every class
    min_classes: int = 2  # and this many classes


@dataclass(frozen=True)
class TrainSettings:
    """The training settings the page shows; each maps to the `TrainConfig` field of the same name.

    The defaults train a beginner's project (2-5 classes of 5-30 photos) in well under a
    minute on 2 cores: the frozen EfficientNet-Lite0 features are computed once, then only
    the small head trains, and early stopping ends it when validation loss stops improving.
    """

    epochs: int = 30  # most passes over the training images (early stopping may end sooner)
    batch_size: int = 16  # images the model looks at before each update
    learning_rate: float = 0.001  # size of each update; lower is slower but steadier
    val_ratio: float = 0.2  # share of each class kept aside to measure accuracy on unseen images


#: One line per setting, shown next to its field on the page.
SETTING_HELP = {
    "epochs": "How many times training goes over all images (it may stop earlier when it stops improving).",
    "batch_size": "How many images the model looks at before each small update.",
    "learning_rate": "How big each update is: lower is slower but steadier.",
    "val_ratio": "Share of each class kept aside to check the model on images it did not train on.",
}
#: Inclusive ranges the page and the API accept for the settings.
SETTING_RANGES = {"epochs": (1, 500), "batch_size": (1, 256), "learning_rate": (1e-6, 1.0),
                  "val_ratio": (0.05, 0.5)}


def check_settings(values: dict) -> TrainSettings:
    """`TrainSettings` from `values` (missing keys keep their defaults); unknown keys and
    values outside `SETTING_RANGES` raise `ConfigError`."""
    settings = build_config(TrainSettings, values)
    for key, (low, high) in SETTING_RANGES.items():
        value = getattr(settings, key)
        if not low <= value <= high:
            raise ConfigError(f"{key} must be between {low:g} and {high:g}, got {value!r}")
    return settings


@dataclass(frozen=True)
class FindObject:
    """The optional "find the object first" step (stage one on every added photo)."""

    enabled: bool = False
    target: str = "clock"  # COCO class to find ("clock" is what COCO detectors call watches)


def megabytes(size: int) -> str:
    """Sizes as the limits are written (powers of two): 500 MB is 500 * 2**20 bytes."""
    return f"{size / 2**20:.1f}".removesuffix(".0") + " MB"


def _unreadable_reason(path: Path) -> str | None:
    """Why training could not read the stored image at `path`, else None (checked without
    decoding its pixels: the page stores only images it decoded, so this finds files put or
    damaged there by hand)."""
    try:
        payload = read_image_bytes(path, ImageLimits())
        with Image.open(io.BytesIO(payload)) as image:
            image.verify()
    except (ImageError, OSError, SyntaxError, ValueError) as error:
        return getattr(error, "reason", None) or f"not a readable image ({error})"
    return None


def _folder_bytes(folder: Path) -> int:
    total = 0
    for directory, _, files in os.walk(folder):
        for name in files:
            try:
                total += (Path(directory) / name).stat().st_size
            except OSError:
                continue
    return total


class Project:
    """The project folder; see the module doc. Safe to use from several threads."""

    def __init__(self, root: str | os.PathLike, limits: ProjectLimits = ProjectLimits()):
        self.root = Path(root).resolve()
        self.limits = limits
        self.lock = threading.RLock()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / DATASET_DIR).mkdir(exist_ok=True)
        (self.root / THUMBNAIL_DIR).mkdir(exist_ok=True)
        self.state = self._read_state()
        self._readable: dict[Path, tuple[tuple[int, int], str | None]] = {}  # path -> ((size, mtime), reason)

    # ------------------------------------------------------------------ state file
    def _read_state(self) -> dict:
        path = self.root / PROJECT_FILE
        state = {"name": self.root.name, "settings": config_to_dict(TrainSettings()),
                 "find_object": config_to_dict(FindObject()), "image_notes": {}, "model": None}
        if path.is_file():
            saved = read_json_object(path, "project state")
            state.update({key: value for key, value in saved.items() if key in state})
            try:  # settings from an older version or edited by hand: keep what is valid
                state["settings"] = config_to_dict(check_settings(state["settings"]))
            except ConfigError as error:
                logger.warning("%s: %s; using the default training settings", path, error)
                state["settings"] = config_to_dict(TrainSettings())
        return state

    def _save(self) -> None:
        atomic_write_json(self.root / PROJECT_FILE, self.state)

    @property
    def dataset_dir(self) -> Path:
        return self.root / DATASET_DIR

    @property
    def runs_dir(self) -> Path:
        return self.root / RUNS_DIR

    # ------------------------------------------------------------------ reading
    def _class_folders(self) -> list[Path]:
        return sorted((entry for entry in self.dataset_dir.iterdir() if entry.is_dir() and not entry.name.startswith(".")),
                      key=lambda entry: entry.name)

    def class_names(self) -> list[str]:
        """Class names, sorted (the order the model's outputs have): folders whose names the page
        accepts (`not_classes` lists the others, made by hand)."""
        return [entry.name for entry in self._class_folders() if self._name_problem(entry.name) is None]

    @staticmethod
    def _name_problem(name: str) -> str | None:
        try:
            check_class_name(name)
        except DetcropError as error:
            return str(error)
        return None

    def not_classes(self) -> list[dict]:
        """Folders in the dataset whose names cannot be classes: shown with the reason, left out of training."""
        found = []
        for entry in self._class_folders():
            problem = self._name_problem(entry.name)
            if problem is not None:
                found.append({"folder": entry.name, "reason": problem,
                              "fix": f"rename the folder {entry} on disk to a plain name, then reload the page"})
        return found

    def unreadable_images(self, class_name: str) -> dict[str, str]:
        """Images of a class that training could not read: image id -> reason."""
        found = {}
        for image_id in self.image_ids(class_name):
            path = self.dataset_dir / class_name / f"{image_id}.png"
            try:
                stat = path.stat()
            except OSError:
                continue
            signature = (stat.st_size, stat.st_mtime_ns)
            known = self._readable.get(path)
            if known is None or known[0] != signature:
                known = self._readable[path] = (signature, _unreadable_reason(path))
            if known[1] is not None:
                found[image_id] = known[1]
        return found

    def image_ids(self, class_name: str) -> list[str]:
        folder = self._class_dir(class_name)
        return sorted(path.stem for path in folder.iterdir() if path.suffix == ".png" and IMAGE_ID.match(path.stem))

    def _class_dir(self, class_name: str) -> Path:
        check_class_name(class_name)
        folder = self.dataset_dir / class_name
        if not folder.is_dir():
            raise ProjectError(f"no class named {class_name!r}", 404)
        return folder

    def thumbnail_path(self, class_name: str, image_id: str) -> Path:
        """The thumbnail file of an image; `ProjectError` (404) for anything that is not one."""
        try:
            check_class_name(class_name)
        except DetcropError:
            raise ProjectError("no such thumbnail", 404) from None
        if not IMAGE_ID.match(image_id):
            raise ProjectError("no such thumbnail", 404)
        path = self.root / THUMBNAIL_DIR / class_name / f"{image_id}.jpg"
        if not path.is_file():
            raise ProjectError("no such thumbnail", 404)
        return path

    def short_classes(self, counts: dict[str, int] | None = None) -> dict[str, int]:
        """Classes with fewer readable images than training needs, and their counts (`counts`:
        readable images per class when the caller has counted them already)."""
        need = self.limits.min_images_per_class
        if counts is None:
            counts = {name: len(self.image_ids(name)) - len(self.unreadable_images(name)) for name in self.class_names()}
        return {name: count for name, count in counts.items() if count < need}

    def size_bytes(self) -> int:
        return _folder_bytes(self.dataset_dir) + _folder_bytes(self.root / THUMBNAIL_DIR)

    def describe(self) -> dict:
        """What `GET /api/project` returns."""
        with self.lock:
            names = self.class_names()
            classes = []
            for name in names:
                images = []
                unreadable = self.unreadable_images(name)
                for image_id in self.image_ids(name):
                    note = self.state["image_notes"].get(f"{name}/{image_id}", {})
                    images.append({"id": image_id, "url": f"/thumbnails/{quote(name)}/{image_id}.jpg",
                                   "whole_photo": bool(note.get("whole_photo", False)),
                                   "box": note.get("box"), "unreadable": unreadable.get(image_id)})
                classes.append({"name": name, "images": images, "readable": len(images) - len(unreadable)})
            model = self.state["model"]
            if model is not None:
                model = dict(model, stale=model["class_names"] != names)
            return {
                "name": self.state["name"], "classes": classes, "settings": self.state["settings"],
                "find_object": self.state["find_object"], "model": model,
                "limits": config_to_dict(self.limits), "size_bytes": self.size_bytes(),
                "short_classes": self.short_classes({entry["name"]: entry["readable"] for entry in classes}),
                "not_classes": self.not_classes(),
                "setting_help": SETTING_HELP, "setting_ranges": SETTING_RANGES,
            }

    # ------------------------------------------------------------------ changing
    def update(self, name: str | None = None, find_object: dict | None = None) -> None:
        with self.lock:
            if name is not None:
                name = name.strip()
                if not name or len(name) > 100:
                    raise ProjectError("project name must be 1 to 100 characters")
                self.state["name"] = name
            if find_object is not None:
                merged = build_config(FindObject, {**self.state["find_object"], **find_object})
                if merged.enabled:
                    from detcrop.detect.labels import resolve_class_ids

                    try:
                        resolve_class_ids((merged.target,))
                    except (KeyError, ValueError) as error:
                        raise ProjectError(f"target {merged.target!r} is not a COCO class ({error})") from None
                self.state["find_object"] = config_to_dict(merged)
            self._save()

    def save_settings(self, settings: TrainSettings) -> None:
        with self.lock:
            self.state["settings"] = config_to_dict(settings)
            self._save()

    def add_class(self, class_name: str) -> str:
        """Make a class; returns its name as stored (Unicode NFC: two spellings of one visible name are one class)."""
        with self.lock:
            class_name = check_class_name(normalize_class_name(class_name))
            self._check_free(class_name)
            (self.dataset_dir / class_name).mkdir()
            return class_name

    def _check_free(self, class_name: str, renaming: str | None = None) -> None:
        """`ProjectError` 409 when a folder (a class or not) already has a name that is the same folder on
        macOS or Windows, or looks the same."""
        key = class_name_key(class_name)
        for entry in self._class_folders():
            if entry.name != renaming and class_name_key(entry.name) == key:
                raise ProjectError(f"a class named {entry.name!r} already exists", 409)

    def rename_class(self, class_name: str, new_name: str) -> str:
        """Rename a class; returns the new name as stored (NFC, as `add_class`)."""
        with self.lock:
            folder = self._class_dir(class_name)
            new_name = check_class_name(normalize_class_name(new_name))
            if new_name == class_name:
                return new_name
            self._check_free(new_name, renaming=class_name)
            folder.rename(self.dataset_dir / new_name)
            thumbnails = self.root / THUMBNAIL_DIR / class_name
            if thumbnails.is_dir():
                thumbnails.rename(self.root / THUMBNAIL_DIR / new_name)
            notes = self.state["image_notes"]
            for key in [key for key in notes if key.startswith(f"{class_name}/")]:
                notes[f"{new_name}/{key.split('/', 1)[1]}"] = notes.pop(key)
            self._save()
            return new_name

    def delete_class(self, class_name: str) -> None:
        with self.lock:
            folder = self._class_dir(class_name)
            shutil.rmtree(folder)
            shutil.rmtree(self.root / THUMBNAIL_DIR / class_name, ignore_errors=True)
            notes = self.state["image_notes"]
            for key in [key for key in notes if key.startswith(f"{class_name}/")]:
                del notes[key]
            self._save()

    def add_image(self, class_name: str, image: Image.Image, note: dict | None = None) -> tuple[str, bool]:
        """Square, store and thumbnail one decoded image; (image id, was_new).

        Raises `ProjectError` (413) when the project would grow over `max_project_bytes`.
        """
        with self.lock:
            self._class_dir(class_name)
            squared = square_image(image, self.limits.image_size)
            buffer = io.BytesIO()
            squared.save(buffer, format="PNG")
            payload = buffer.getvalue()
            used = self.size_bytes()
            if used + len(payload) > self.limits.max_project_bytes:
                raise ProjectError(
                    f"the project is full: {megabytes(used)} stored, the limit is "
                    f"{megabytes(self.limits.max_project_bytes)}; delete images or start another project", 413)
            path, was_new = store_png(self.dataset_dir, class_name, payload)
            image_id = path.stem
            thumbnail = squared.resize((self.limits.thumbnail_size,) * 2, Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            thumbnail.save(buffer, format="JPEG", quality=85)
            atomic_write_bytes(self.root / THUMBNAIL_DIR / class_name / f"{image_id}.jpg", buffer.getvalue())
            if note:
                self.state["image_notes"][f"{class_name}/{image_id}"] = note
                self._save()
            return image_id, was_new

    def delete_image(self, class_name: str, image_id: str) -> None:
        with self.lock:
            folder = self._class_dir(class_name)
            if not IMAGE_ID.match(image_id) or not (folder / f"{image_id}.png").is_file():
                raise ProjectError(f"class {class_name!r} has no image {image_id!r}", 404)
            (folder / f"{image_id}.png").unlink()
            (self.root / THUMBNAIL_DIR / class_name / f"{image_id}.jpg").unlink(missing_ok=True)
            if self.state["image_notes"].pop(f"{class_name}/{image_id}", None) is not None:
                self._save()

    def check_trainable(self) -> None:
        """Raise `ProjectError` (400) naming what is missing before training can start."""
        names = self.class_names()
        if len(names) < self.limits.min_classes:
            raise ProjectError(f"training needs at least {self.limits.min_classes} classes, the project has "
                               f"{len(names)}")
        short = self.short_classes()
        if short:
            listed = ", ".join(f"{name} ({count})" for name, count in short.items())
            raise ProjectError(f"every class needs at least {self.limits.min_images_per_class} readable images; "
                               f"short: {listed}")

    def snapshot_dataset(self, target: Path) -> Path:
        """Hard-link (or copy) the dataset into `target`, so that training and the run folder keep
        the images they used while the page goes on changing the classes."""
        with self.lock:
            for name in self.class_names():
                (target / name).mkdir(parents=True, exist_ok=True)
                unreadable = self.unreadable_images(name)
                for image_id in self.image_ids(name):
                    if image_id in unreadable:
                        continue
                    source = self.dataset_dir / name / f"{image_id}.png"
                    try:
                        os.link(source, target / name / source.name)
                    except OSError:
                        shutil.copy2(source, target / name / source.name)
            for extra in self.dataset_dir.iterdir():
                if extra.is_file() and not is_image_path(extra):
                    shutil.copy2(extra, target / extra.name)  # crop_config.json when the detector is on
        return target

    def set_model(self, model: dict | None) -> None:
        with self.lock:
            self.state["model"] = model
            self._save()


    def remove_stale(self) -> list[Path]:
        """Remove what a killed server left (called at start): run folders that are not the
        project's model and that no training holds (an interrupted training's, `INCOMPLETE`), and
        export staging folders no export holds. Returns what was removed."""
        from detcrop.data.atomic import remove_stale_staging
        from detcrop.data.locks import FolderLockedError, folder_lock

        removed = []
        with self.lock:
            model = self.state.get("model") or {}
            keep = Path(model["run_dir"]).resolve() if model.get("run_dir") else None
            if self.runs_dir.is_dir():
                for run in sorted(self.runs_dir.iterdir()):
                    if run.is_symlink() or not run.is_dir() or run.resolve() == keep:
                        continue
                    try:
                        with folder_lock(run, "ui clean-up"):  # a training still writing holds it
                            shutil.rmtree(run)
                    except FolderLockedError:
                        continue
                    except OSError as error:
                        logger.warning("%s: could not remove an interrupted run (%s)", run, error)
                        continue
                    removed.append(run)
            exports = self.root / EXPORTS_DIR
            removed += remove_stale_staging(exports / EXPORT_STAGING, "export")
            if exports.is_dir():  # earlier versions staged downloads in unlocked tempfile folders
                for legacy in sorted(exports.glob("tmp*")):
                    if legacy.is_dir() and not legacy.is_symlink():
                        shutil.rmtree(legacy, ignore_errors=True)
                        removed.append(legacy)
        for path in removed:
            logger.info("removed %s, left by an interrupted %s", path,
                        "training" if path.parent == self.runs_dir else "download")
        return removed
