"""What `detcrop predict` writes: a terminal table, JSON, CSV and one PNG per photo."""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

from detcrop.data.atomic import atomic_write_bytes, atomic_write_text
from detcrop.pipeline.scoring import DEFAULT_BATCH_PHOTOS, REGION_WHOLE_IMAGE, REGION_WHOLE_PHOTO, PhotoResult, Scorer

#: Bumped when the JSON layout changes meaning.
PREDICTIONS_SCHEMA_VERSION = 1


def predictions_document(results: Sequence[PhotoResult], class_names: Sequence[str], unknown_threshold: float,
                         run_dir: str) -> dict:
    """The JSON document: schema version, run, classes, threshold, then one entry per photo."""
    return {
        "schema_version": PREDICTIONS_SCHEMA_VERSION,
        "run": str(run_dir),
        "class_names": list(class_names),
        "unknown_threshold": unknown_threshold,
        "photos": [result.to_dict() for result in results],
    }


def write_json(path: str | os.PathLike, document: dict) -> None:
    atomic_write_text(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def write_csv(path: str | os.PathLike, results: Sequence[PhotoResult], class_names: Sequence[str]) -> None:
    """One row per object (and one per photo without any), a probability column per class."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "object", "label", "top_class", "top_probability", "detector_score", "region",
                     "x_min", "y_min", "x_max", "y_max", *[f"p_{name}" for name in class_names], "note"])
    for result in results:
        if not result.objects:
            writer.writerow([result.path, "", "", "", "", "", "", "", "", "", "", *[""] * len(class_names),
                             result.error or result.note or "no object"])
        for index, item in enumerate(result.objects):
            box = item.box or item.crop_box
            writer.writerow([result.path, index, item.label, item.top_class, f"{item.top_probability:.4f}",
                             "" if item.detector_score is None else f"{item.detector_score:.4f}", item.region,
                             *[f"{value:g}" for value in box],
                             *[f"{item.probabilities[name]:.4f}" for name in class_names], result.note or ""])
    atomic_write_text(path, buffer.getvalue())


def format_table(results: Sequence[PhotoResult], max_width: int = 40) -> str:
    """A terminal table: photo, object, label, probability, detector score, box."""
    rows = [("photo", "#", "label", "prob", "det", "box")]
    for result in results:
        name = Path(result.path).name
        if len(name) > max_width:
            name = "..." + name[-(max_width - 3):]
        if not result.objects:
            rows.append((name, "-", "ERROR" if result.error else "no object", "", "",
                         (result.error or result.note or "")[:60]))
        for index, item in enumerate(result.objects):
            box = {REGION_WHOLE_PHOTO: "whole photo (nothing detected)", REGION_WHOLE_IMAGE: "whole photo"}.get(
                item.region) or ",".join(f"{value:.0f}" for value in item.box)
            rows.append((name, str(index), item.label if item.label == item.top_class
                         else f"{item.label} ({item.top_class}?)", f"{item.top_probability:.3f}",
                         "" if item.detector_score is None else f"{item.detector_score:.2f}", box))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


class PhotoPlotter:
    """Writes `plot_photo` PNGs into a folder, one per readable photo of `paths`.

    Photos from different folders may share a name: those are numbered by their position in
    `paths` (``x_0000.png``, ``x_0001.png``), counted once up front, so no plot is overwritten.
    """

    def __init__(self, plot_dir: str | os.PathLike, class_names: Sequence[str], paths: Sequence):
        self.plot_dir, self.class_names = Path(plot_dir), class_names
        stems = Counter(Path(str(path)).stem for path in paths)
        self.names = {str(path): Path(str(path)).stem if stems[Path(str(path)).stem] == 1
                      else f"{Path(str(path)).stem}_{index:04d}" for index, path in enumerate(paths)}

    def plot(self, result: PhotoResult) -> None:
        from detcrop.data.images import load_image_array

        if result.error is None:
            name = self.names.get(result.path, Path(result.path).stem)
            plot_photo(self.plot_dir / f"{name}.png", load_image_array(result.path), result, self.class_names)


def score_photos(scorer: Scorer, paths: Sequence[Path], plot_dir: str | os.PathLike | None = None,
                 json_path: str | os.PathLike | None = None, csv_path: str | os.PathLike | None = None,
                 run_dir: str = "", progress: bool = True, batch_size: int = DEFAULT_BATCH_PHOTOS) -> list[PhotoResult]:
    """Score `paths` (`Scorer.score_many`) and write what `detcrop predict` writes for a handful of photos: a PNG
    per readable photo in `plot_dir`, the JSON document and the CSV, each only when its destination is given."""
    from tqdm import tqdm

    results = []
    figures = {"classified": 0, "no_object": 0, "unreadable": 0}
    plotter = PhotoPlotter(plot_dir, scorer.class_names, paths) if plot_dir is not None else None
    bar = tqdm(total=len(paths), desc="predict", unit="photo", disable=not progress or len(paths) < 2)
    for result in scorer.score_many(paths, batch_size):
        results.append(result)
        figures["unreadable" if result.error else "classified" if result.objects else "no_object"] += 1
        bar.set_postfix(figures, refresh=False)
        bar.update(1)
        if plotter is not None:
            plotter.plot(result)
    bar.close()
    if json_path is not None:
        write_json(json_path, predictions_document(results, scorer.class_names, scorer.unknown_threshold, run_dir))
    if csv_path is not None:
        write_csv(csv_path, results, scorer.class_names)
    return results


def plot_photo(path: str | os.PathLike, image, result: PhotoResult, class_names: Sequence[str]) -> None:
    """A PNG: the photo with numbered boxes, and one bar chart of class probabilities per object."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    objects = list(result.objects)
    columns = 1 + max(1, len(objects))
    figure, axes = plt.subplots(1, columns, figsize=(4.5 * columns, 4.2),
                                gridspec_kw={"width_ratios": [1.4] + [1] * (columns - 1)})
    photo_axis = axes[0]
    photo_axis.imshow(image)
    photo_axis.set_axis_off()
    photo_axis.set_title(Path(result.path).name[:40], fontsize=9)
    if any(item.region == REGION_WHOLE_PHOTO for item in objects):
        photo_axis.set_xlabel(f"whole photo scored: {result.note}"[:70], fontsize=8)
        photo_axis.set_axis_on()
        photo_axis.set_xticks([])
        photo_axis.set_yticks([])
    for index, item in enumerate(objects):
        if item.box is not None:
            x0, y0, x1, y1 = item.box
            photo_axis.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime", linewidth=2))
            photo_axis.text(x0, y0, f"{index}: {item.label}", color="black", backgroundcolor="lime", fontsize=8,
                            va="bottom")
    if not objects:
        axes[1].text(0.5, 0.5, result.error or result.note or "no object found", ha="center", va="center",
                     wrap=True, fontsize=9)
        axes[1].set_axis_off()
    for index, item in enumerate(objects):
        axis = axes[1 + index]
        values = [item.probabilities[name] for name in class_names]
        colours = ["tab:green" if name == item.top_class else "tab:gray" for name in class_names]
        axis.barh(range(len(class_names)), values, color=colours)
        axis.set_yticks(range(len(class_names)), labels=class_names, fontsize=8)
        axis.invert_yaxis()
        axis.set_xlim(0, 1)
        where = " - whole photo, nothing detected" if item.region == REGION_WHOLE_PHOTO else ""
        axis.set_title(f"object {index}: {item.label} ({item.top_probability:.2f}){where}", fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
