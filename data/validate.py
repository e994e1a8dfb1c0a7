"""The checks a beginner needs before training on a class-folder dataset.

Errors make a dataset unusable: fewer than `min_classes` classes, or a class with fewer than
`min_images_per_class` readable images. Warnings are reported but do not block training:
unreadable or oversized files (training skips them), byte-identical duplicates (within a
class they weigh twice; across classes they contradict each other), class imbalance, and
files that are not images.
"""

from __future__ import annotations

import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from detcrop.data.errors import DetcropError
from detcrop.data.folders import ClassFolderDataset, scan_class_folders
from detcrop.data.images import ImageError, ImageLimits, file_sha256, load_image

#: Fewer readable images than this in a class make a dataset unusable (`validate`, `train`).
MIN_IMAGES_PER_CLASS = 5


class ShortClassError(DetcropError, ValueError):
    """A class with fewer readable images than training needs; the message names it and its counts."""


@dataclass(frozen=True)
class ValidationConfig:
    """Thresholds of `detcrop validate`."""

    min_classes: int = 2  # fewer classes than this is an error
    min_images_per_class: int = MIN_IMAGES_PER_CLASS  # fewer readable images in a class is an error
    max_imbalance: float = 3.0  # warn when the largest class has more than this times the smallest
    max_bytes: int = ImageLimits.max_bytes  # files larger than this are refused (bytes)
    max_pixels: int = ImageLimits.max_pixels  # images with more pixels are refused as bombs
    workers: int = 4  # decoding threads (Pillow releases the GIL while decoding)


@dataclass(frozen=True)
class Problem:
    """One finding; `paths` are the files it is about (may be empty)."""

    code: str
    message: str
    paths: tuple[str, ...] = ()


@dataclass
class ValidationReport:
    root: str
    class_names: tuple[str, ...]
    counts: dict[str, int]  # readable images per class
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    bad_files: list[dict] = field(default_factory=list)  # {path, label, kind, reason}
    duplicate_groups: list[list[str]] = field(default_factory=list)
    sha256: dict[str, str] = field(default_factory=dict)  # path -> content hash, readable files

    @property
    def usable(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        """A JSON-ready summary (without the per-file hashes)."""
        return {
            "root": self.root,
            "usable": self.usable,
            "class_names": list(self.class_names),
            "counts": self.counts,
            "errors": [problem.__dict__ | {"paths": list(problem.paths)} for problem in self.errors],
            "warnings": [problem.__dict__ | {"paths": list(problem.paths)} for problem in self.warnings],
            "bad_files": self.bad_files,
            "duplicate_groups": self.duplicate_groups,
        }

    def format_text(self, max_paths: int = 5) -> str:
        """A terminal summary: counts per class, then errors and warnings with a few paths each."""
        lines = [f"Dataset {self.root}: {len(self.class_names)} classes, {sum(self.counts.values())} readable images"]
        width = max((len(name) for name in self.class_names), default=5)
        for name in self.class_names:
            lines.append(f"  {name:<{width}}  {self.counts[name]:>6}")
        for title, problems in (("ERROR", self.errors), ("warning", self.warnings)):
            for problem in problems:
                lines.append(f"{title}: {problem.message}")
                for path in problem.paths[:max_paths]:
                    lines.append(f"    {path}")
                if len(problem.paths) > max_paths:
                    lines.append(f"    ... and {len(problem.paths) - max_paths} more (use --json for all)")
        lines.append("usable: yes" if self.usable else "usable: NO")
        return "\n".join(lines)


def short_classes_message(short: dict[str, str], minimum: int) -> str:
    """'2 class(es) have fewer than 5 readable images: a (3), b (0 of 6 files)': `short` maps each
    class to how its count is shown."""
    listed = ", ".join(f"{name} ({count})" for name, count in short.items())
    return f"{len(short)} class(es) have fewer than {minimum} readable images: {listed}"


def require_readable_images(dataset: ClassFolderDataset, minimum: int = MIN_IMAGES_PER_CLASS,
                            limits: ImageLimits = ImageLimits()) -> None:
    """Raise `ShortClassError` when a class of `dataset` has fewer than `minimum` images that decode.

    The check `validate` makes, stopped early: a class's images are decoded only until `minimum`
    of them have, so a large class costs `minimum` decodes.
    """
    short = {}
    for name in dataset.class_names:
        paths = [sample.path for sample in dataset.samples if sample.label == name]
        readable = 0
        for path in paths:
            if readable >= minimum:
                break
            readable += _check_file(path, limits)[1] is None
        if readable < minimum:
            short[name] = f"{readable} of {len(paths)} files"
    if short:
        raise ShortClassError(f"{dataset.root}: {short_classes_message(short, minimum)}; add images that open, "
                              f"or remove the class (`detcrop validate {dataset.root}` lists the unreadable files)")


def _check_file(path: Path, limits: ImageLimits) -> tuple[str | None, ImageError | None]:
    try:
        load_image(path, limits)
    except ImageError as error:
        return None, error
    return file_sha256(path), None


def validate_dataset(
    root: str | os.PathLike,
    config: ValidationConfig = ValidationConfig(),
    progress: bool = True,
) -> ValidationReport:
    """Decode and hash every image under `root` and check the dataset; see the module doc."""
    dataset: ClassFolderDataset = scan_class_folders(root)
    limits = ImageLimits(max_bytes=config.max_bytes, max_pixels=config.max_pixels)
    report = ValidationReport(
        root=str(dataset.root), class_names=dataset.class_names, counts={name: 0 for name in dataset.class_names}
    )
    with ThreadPoolExecutor(max_workers=max(1, config.workers)) as pool:
        results = pool.map(lambda sample: _check_file(sample.path, limits), dataset.samples)
        for sample, (digest, error) in tqdm(
            zip(dataset.samples, results), total=len(dataset.samples), desc="validate", unit="img",
            disable=not progress,
        ):
            if error is not None:
                report.bad_files.append(
                    {"path": str(sample.path), "label": sample.label, "kind": error.kind, "reason": error.reason}
                )
                continue
            report.counts[sample.label] += 1
            report.sha256[str(sample.path)] = digest

    if len(dataset.class_names) < config.min_classes:
        report.errors.append(Problem(
            "too-few-classes",
            f"found {len(dataset.class_names)} class folder(s) {list(dataset.class_names)}, need at least "
            f"{config.min_classes}: put images in {dataset.root}/<class>/",
        ))
    short = {name: count for name, count in report.counts.items() if count < config.min_images_per_class}
    if short:
        report.errors.append(Problem(
            "too-few-images",
            short_classes_message(short, config.min_images_per_class),
            tuple(str(dataset.root / name) for name in short),
        ))
    if report.bad_files:
        report.warnings.append(Problem(
            "bad-files",
            f"{len(report.bad_files)} file(s) cannot be used and will be skipped: "
            + "; ".join(sorted({f"{bad['kind']}" for bad in report.bad_files})),
            tuple(f"{bad['path']}: {bad['reason']}" for bad in report.bad_files),
        ))

    paths_by_hash: dict[str, list[str]] = defaultdict(list)
    for path, digest in report.sha256.items():
        paths_by_hash[digest].append(path)
    label_of = {str(sample.path): sample.label for sample in dataset.samples}
    within, across = [], []
    for paths in paths_by_hash.values():
        if len(paths) > 1:
            report.duplicate_groups.append(sorted(paths))
            (across if len({label_of[path] for path in paths}) > 1 else within).append(sorted(paths))
    if within:
        report.warnings.append(Problem(
            "duplicates-within-class",
            f"{len(within)} group(s) of byte-identical images inside one class (they count twice in training)",
            tuple(" = ".join(group) for group in within),
        ))
    if across:
        report.warnings.append(Problem(
            "duplicates-across-classes",
            f"{len(across)} group(s) of byte-identical images in different classes (contradictory labels)",
            tuple(" = ".join(group) for group in across),
        ))

    nonzero = [count for count in report.counts.values() if count > 0]
    if len(nonzero) >= 2 and max(nonzero) > config.max_imbalance * min(nonzero):
        largest = max(report.counts, key=report.counts.get)
        smallest = min((name for name in report.counts if report.counts[name] > 0), key=report.counts.get)
        report.warnings.append(Problem(
            "class-imbalance",
            f"class imbalance: {largest} has {report.counts[largest]} images, {smallest} has "
            f"{report.counts[smallest]} (more than {config.max_imbalance:g}x); training uses class weights",
        ))
    if dataset.skipped:
        report.warnings.append(Problem(
            "skipped-files",
            f"{len(dataset.skipped)} file(s) are not part of the dataset",
            tuple(str(item) for item in dataset.skipped),
        ))
    return report
