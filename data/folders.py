"""Class-folder datasets: `ROOT/<class>/<image>`.

Rules (also in the README):
- A class is a direct subfolder of ROOT; class names are sorted, so label ids are stable.
- Images in nested subfolders count for the top-level class (`ROOT/rolex/2019/a.jpg` is a
  `rolex` image), so crawls kept in sub-folders need no flattening.
- Image files are recognised by extension (jpg, jpeg, png, bmp, webp, gif; any case).
- Hidden files and folders (name starts with ".") are ignored silently: they are editor,
  OS and half-written files. Everything else that is not used is reported as skipped with
  the reason (a file directly in ROOT, a file without an image extension).
- Scanning reads no image; `data.validate` decodes them.
"""

from __future__ import annotations

import io
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple

from PIL import Image

from detcrop.data.atomic import atomic_write_bytes
from detcrop.data.errors import DetcropError, MissingFileError, NotAFolderError
from detcrop.data.layout import DATASET_ROOT_FILES
from detcrop.data.images import IMAGE_EXTENSIONS, ImageError, ImageLimits, bytes_sha256, is_image_path, load_image
from detcrop.data.outputs import check_output_path



@dataclass(frozen=True)
class Sample:
    """One labelled image."""

    path: Path
    label: str
    label_index: int


class Skipped(NamedTuple):
    """A file a job did not use, and why: the one type every command reports ignored files with.

    A named tuple, so code that unpacks `(path, reason)` pairs keeps working. Commands print
    them with `format_skipped`.
    """

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def not_an_image(path: str | os.PathLike) -> Skipped:
    """The `Skipped` entry of a file left out because its extension is not an image extension."""
    path = Path(path)
    return Skipped(path, f"extension {path.suffix or '(none)'!r} is not an image extension "
                         f"({', '.join(sorted(IMAGE_EXTENSIONS))})")


def format_skipped(skipped: Iterable[Skipped], limit: int = 10) -> list[str]:
    """The lines every command prints about the files it did not use ([] when none).

    >>> format_skipped([Skipped(Path("in/notes.txt"), "not an image")])
    ['skipped 1 file(s):', '  in/notes.txt: not an image']
    """
    skipped = list(skipped)
    if not skipped:
        return []
    lines = [f"skipped {len(skipped)} file(s):"] + [f"  {item}" for item in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more")
    return lines


@dataclass(frozen=True)
class ClassFolderDataset:
    """The result of `scan_class_folders`."""

    root: Path
    class_names: tuple[str, ...]
    samples: tuple[Sample, ...]
    skipped: tuple[Skipped, ...] = field(default=())

    def counts(self) -> dict[str, int]:
        """Images per class, including classes with none, in class order."""
        counts = {name: 0 for name in self.class_names}
        for sample in self.samples:
            counts[sample.label] += 1
        return counts

    @property
    def paths(self) -> list[Path]:
        return [sample.path for sample in self.samples]

    @property
    def labels(self) -> list[int]:
        return [sample.label_index for sample in self.samples]


#: Longest class name accepted (it is a folder name and the answer a model gives).
MAX_CLASS_NAME_LENGTH = 64
#: Longest class name in UTF-8 bytes (a folder name holds 255 bytes on common file systems).
MAX_CLASS_NAME_BYTES = 255
#: Characters refused in class names: path separators and what Windows forbids in file names.
_FORBIDDEN_NAME_CHARACTERS = frozenset('/\\<>:"|?*')
#: Unicode categories refused: controls (newline, tab, NUL), format characters (bidi
#: overrides that make a name print misleadingly), surrogates, private use, line separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
#: Format characters that emoji sequences need (zero-width non-joiner and joiner).
_ALLOWED_FORMAT_CHARACTERS = frozenset({"\u200c", "\u200d"})


class ClassNameError(DetcropError, ValueError):
    """A class name that cannot be a class folder."""


def check_class_name(name: str) -> str:
    """Return `name` when it can be a class folder, else raise `ClassNameError` saying why.

    The one rule for class names that become folders (`add`'s class, `crop --label`, the
    page's classes); a class name is also the answer the model gives. One plain folder
    name: not empty or blank, at most 64 characters (and 255 bytes in UTF-8), no path
    separator ('/', '\\') or other character Windows refuses in file names, no control or
    format character (newline, tab, NUL, bidi overrides), not hidden (leading "."; so never
    '.' or '..') and no '..' at all, no leading or trailing spaces, and not the name of a
    file detcrop keeps in a dataset root. A name can never write outside its dataset.
    Folders already on disk are read as they are; this rule is for new names.

    >>> check_class_name("rolex")
    'rolex'
    """
    if not isinstance(name, str) or not name:
        raise ClassNameError(f"class name must be a plain folder name, got {name!r}: must not be empty")
    shown = repr(name) if len(name) <= 40 else f"{name[:40]!r}... ({len(name)} characters)"
    if not name.strip():
        raise ClassNameError(f"class name must be a plain folder name, got {shown}: must not be blank")
    problems = []
    if len(name) > MAX_CLASS_NAME_LENGTH:
        problems.append(f"at most {MAX_CLASS_NAME_LENGTH} characters (got {len(name)})")
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_CLASS_NAME_BYTES:
        problems.append(f"at most {MAX_CLASS_NAME_BYTES} bytes in UTF-8")
    if name.startswith("."):
        problems.append("must not start with '.' (hidden folders are ignored, '..' is the parent folder)")
    elif ".." in name:
        problems.append("no '..'")
    if name != name.strip():
        problems.append("no leading or trailing spaces")
    bad = sorted({character for character in name if _refused_character(character)})
    if bad:
        problems.append("no path separators, control characters or characters "
                        + " ".join(ascii(character) for character in bad))
    if name in DATASET_ROOT_FILES:
        problems.append(f"{name} is a file detcrop keeps in the dataset root")
    if problems:
        raise ClassNameError(f"class name must be a plain folder name, got {shown}: " + "; ".join(problems))
    return name


def normalize_class_name(name: str) -> str:
    """`name` in Unicode NFC, the form new class names are checked and stored in: "a" followed by a
    combining acute accent and the single character "á" look the same and become one class."""
    return unicodedata.normalize("NFC", name) if isinstance(name, str) else name


def class_name_key(name: str) -> str:
    """What two class names share when they would be the same folder on a case-insensitive or
    normalising file system (macOS, Windows): NFC, case-folded."""
    return unicodedata.normalize("NFC", normalize_class_name(name).casefold())


def _refused_character(character: str) -> bool:
    if character in _FORBIDDEN_NAME_CHARACTERS:
        return True
    return unicodedata.category(character) in _FORBIDDEN_CATEGORIES and character not in _ALLOWED_FORMAT_CHARACTERS


def _visible(name: str) -> bool:
    return not name.startswith(".")


def find_images(folder: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """(image files, other files) under `folder`, recursively, sorted, hidden files and folders left out."""
    images, others = [], []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = sorted(name for name in subdirectories if _visible(name))
        for name in sorted(files):
            if _visible(name):
                path = Path(directory) / name
                (images if is_image_path(path) else others).append(path)
    return images, others


def find_image_paths(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Skipped]]:
    """(images, skipped): files as given (a missing one stays, for the caller to report), folders
    expanded by `find_images`, and the non-image files found in those folders."""
    paths: list[Path] = []
    skipped: list[Skipped] = []
    for item in map(Path, inputs):
        if item.is_dir():
            images, others = find_images(item)
            paths.extend(sorted(images))
            skipped.extend(map(not_an_image, others))
        else:
            paths.append(item)
    return paths, skipped


def expand_image_paths(inputs: list[str | os.PathLike]) -> list[Path]:
    """`find_image_paths` without the skipped files."""
    return find_image_paths(inputs)[0]


def _walk_images(folder: Path, skipped: list[Skipped]) -> list[Path]:
    images, others = find_images(folder)
    skipped.extend(map(not_an_image, others))
    return images


def scan_class_folders(root: str | os.PathLike) -> ClassFolderDataset:
    """List the labelled images under `root` without decoding them.

    Raises `NotADirectoryError` / `FileNotFoundError` naming `root` when it is not a folder.
    Empty class folders are kept as classes with zero images so that checks can name them.
    """
    root = Path(root)
    if not root.exists():
        raise MissingFileError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise NotAFolderError(f"{root}: expected a folder of class folders, got a file")
    skipped: list[Skipped] = []
    class_names = []
    samples: list[Sample] = []
    entries = sorted(root.iterdir(), key=lambda entry: entry.name)
    for entry in entries:
        if not _visible(entry.name):
            continue
        if entry.is_dir():
            class_names.append(entry.name)
        elif entry.name not in DATASET_ROOT_FILES:
            skipped.append(Skipped(entry, "file directly in the dataset root; put images in ROOT/<class>/"))
    for label_index, name in enumerate(class_names):
        for path in _walk_images(root / name, skipped):
            samples.append(Sample(path=path, label=name, label_index=label_index))
    return ClassFolderDataset(
        root=root, class_names=tuple(class_names), samples=tuple(samples), skipped=tuple(skipped)
    )


@dataclass
class AddReport:
    """What `add_images` did with each file it was given."""

    added: list[Path] = field(default_factory=list)  # files written into the class folder
    duplicates: list[Path] = field(default_factory=list)  # inputs whose image is already in the class
    failed: list[Skipped] = field(default_factory=list)  # (input, reason) of images that could not be read


def square_image(image: Image.Image, size: int | None = None) -> Image.Image:
    """The centre square of `image` (as beginner tools crop uploads), resized to `size` if given."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    if size is not None and side != size:
        square = square.resize((size, size), Image.Resampling.LANCZOS)
    return square


def add_image(root: str | os.PathLike, class_name: str, image: Image.Image, square: bool = True,
              size: int | None = 224) -> tuple[Path, bool]:
    """Write one decoded image into `root/<class_name>/` as `add_images` does; (path, was_new).

    The file is `<sha256 of the PNG>[:16].png`, so the same image added twice is kept once.
    """
    if square:
        image = square_image(image, size)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return store_png(root, class_name, buffer.getvalue())


def store_png(root: str | os.PathLike, class_name: str, payload: bytes) -> tuple[Path, bool]:
    """Write encoded PNG `payload` as `root/<class_name>/<sha256[:16]>.png` unless it is there; (path, was_new)."""
    check_class_name(class_name)
    target = Path(root) / class_name / f"{bytes_sha256(payload)[:16]}.png"
    if target.exists():
        return target, False
    atomic_write_bytes(target, payload)
    return target, True


def add_images(
    root: str | os.PathLike,
    class_name: str,
    paths: list[str | os.PathLike],
    square: bool = True,
    size: int | None = 224,
    limits: ImageLimits = ImageLimits(),
) -> AddReport:
    """Copy images into `root/<class_name>/` as the beginner's flow does: decoded, upright, squared.

    Each image is decoded with `load_image` (bad files are reported, not copied), cut to
    its centre square and resized to `size` (when `square`), and written atomically as
    PNG named by the content hash of the result, so adding the same image twice is a no-op.
    The class name must pass `check_class_name`.

    >>> add_images("dataset", "rolex", ["a.jpg", "b.png"]).added  # doctest: +SKIP
    """
    check_class_name(class_name)
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise NotAFolderError(f"{root}: expected a dataset folder, got a file")
    folder = root / class_name
    check_output_path(folder, "DATASET/CLASS", inputs=[("the image", path) for path in paths])
    if folder.exists() and not folder.is_dir():
        raise NotAFolderError(f"{folder}: expected a class folder, got a file")
    # The dataset and the class are created up front (as `add --help` says), so a class
    # whose every image failed still exists to add to and names itself in the counts.
    folder.mkdir(parents=True, exist_ok=True)
    report = AddReport()
    for path in map(Path, paths):
        try:
            image = load_image(path, limits)
        except ImageError as error:
            report.failed.append(Skipped(path, error.reason))
            continue
        target, was_new = add_image(root, class_name, image, square, size)
        if was_new:
            report.added.append(target)
        else:
            report.duplicates.append(path)
    return report
