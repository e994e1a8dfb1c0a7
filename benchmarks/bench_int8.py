"""INT8 detector against float32: raw speed, crop job speed, and parity on real photos.

    .venv/bin/python benchmarks/bench_int8.py [--brands-per 5] [--rounds 2] [--job-photos 149]

Prints, in one run: the host's CPU flags and load average; the raw SSD forward (ONNX Runtime,
pre-decoded photos, float32 and int8 interleaved photo by photo); the `crop` job's photos/s
with each (a ratio, same run); and the parity of int8 against float32 for two calibration
sets: (a) scikit-image's photos (the product's default, `detect.int8.calibration_images`) and
(b) the first N photos of the job's own input. Parity: the crop decision (best clock box
>= 0.5, the same at IoU >= 0.9), the IoU of the best boxes, new clock boxes on background photos,
and the largest change of the best clock score. Photos: ../shared/data (clock-scenes,
caltech-watch/watch, caltech-watch/background, the first --brands-per photos of each brand of
watches-brands). Results: benchmarks/RESULTS.md#int8-detector.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photos import cpu_flags, load_photos  # noqa: E402

from detcrop.detect.base import onnx_model_path  # noqa: E402
from detcrop.detect.crop import CropConfig, crop_photos  # noqa: E402
from detcrop.detect.int8 import (  # noqa: E402
    best_box, box_iou, calibration_images, quantized_ssd_path, same_crop_decision,
)
from detcrop.detect.onnx_detectors import OnnxDetector  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def raw_speed(detectors: dict, images: list[np.ndarray], rounds: int) -> dict[str, tuple[float, float]]:
    """{name: (photos/s, CPU ms/photo)}, every photo run by each detector in turn (interleaved)."""
    wall = dict.fromkeys(detectors, 0.0)
    cpu = dict.fromkeys(detectors, 0.0)
    for detector in detectors.values():
        detector.detect(images[0])  # warm-up
    for _ in range(rounds):
        for image in images:
            for name, detector in detectors.items():
                started, started_cpu = time.perf_counter(), time.process_time()
                detector.detect(image)
                wall[name] += time.perf_counter() - started
                cpu[name] += time.process_time() - started_cpu
    count = rounds * len(images)
    return {name: (count / wall[name], 1000 * cpu[name] / count) for name in detectors}


def link_photos(sources: tuple[Path, ...], folder: Path) -> None:
    """Symlink every file under `sources` into `folder/<source name>/...` (the shared photos are never copied)."""
    for source in sources:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                link = folder / source.name / path.relative_to(source)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(path.resolve())


def job_speed(precisions: list[str], folder: Path, rounds: int) -> dict[str, float]:
    """{precision: photos/s of `crop_photos` on `folder`}, the detector loaded by the job as `detcrop crop` does
    (from the warm cache); runs alternate."""
    photos = sum(1 for path in folder.rglob("*") if path.is_file())
    seconds = dict.fromkeys(precisions, 0.0)
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as scratch:
        for round_index in range(rounds):
            for name in precisions:
                config = CropConfig(runtime="onnx", precision=name)
                out = Path(scratch, f"{name}-{round_index}")
                started = time.perf_counter()
                crop_photos(folder, out, config, label="clock", progress=False)
                seconds[name] += time.perf_counter() - started
                shutil.rmtree(out)
    return {name: rounds * photos / seconds[name] for name in precisions}


def parity(reference: list, candidate: list, groups: list[str]) -> dict:
    """The parity figures of `candidate` detections against `reference` ones (one per photo)."""
    objects = [index for index, group in enumerate(groups) if group != "background"]
    backgrounds = [index for index, group in enumerate(groups) if group == "background"]
    agree = sum(same_crop_decision(reference[index], candidate[index]) for index in objects)
    ious = []
    for index in objects:
        (box, score), (other, other_score) = best_box(reference[index]), best_box(candidate[index])
        if score >= 0.5 and other_score >= 0.5:
            ious.append(box_iou(box, other))
    new_boxes = sum(best_box(candidate[index])[1] >= 0.5 > best_box(reference[index])[1] for index in backgrounds)
    lost_boxes = sum(best_box(reference[index])[1] >= 0.5 > best_box(candidate[index])[1] for index in backgrounds)
    score_change = max(abs(best_box(reference[index])[1] - best_box(candidate[index])[1])
                       for index in range(len(reference)))
    ious = np.asarray(ious)
    return {"agree": agree, "objects": len(objects), "new_on_backgrounds": new_boxes,
            "lost_on_backgrounds": lost_boxes, "backgrounds": len(backgrounds),
            "background_float_boxes": sum(best_box(reference[index])[1] >= 0.5 for index in backgrounds),
            "iou": ious, "max_score_change": score_change}


def print_parity(name: str, figures: dict) -> None:
    ious = figures["iou"]
    print(f"  {name}: crop decision the same at IoU >= 0.9 on {figures['agree']}/{figures['objects']} photos; "
          f"new clock boxes on backgrounds {figures['new_on_backgrounds']}/{figures['backgrounds']} "
          f"(lost {figures['lost_on_backgrounds']}; float32 has {figures['background_float_boxes']}); "
          f"max best-clock score change {figures['max_score_change']:.3f}")
    if len(ious):
        print(f"    best-box IoU where both crop ({len(ious)}): min {ious.min():.3f}, p5 {np.percentile(ious, 5):.3f}, "
              f"median {np.median(ious):.3f}, < 0.9: {int((ious < 0.9).sum())}")


def parity_photos(brands_per: int) -> tuple[list[str], list[np.ndarray]]:
    """The parity photos: clock-scenes, caltech watch and background, the first `brands_per` of each brand."""
    groups, images = [], []
    for group, folders in (("clock-scenes", [SHARED / "clock-scenes"]), ("watch", [SHARED / "caltech-watch/watch"]),
                           ("background", [SHARED / "caltech-watch/background"]),
                           ("brands", [path for brand in sorted((SHARED / "watches-brands").iterdir())
                                       for path in sorted(brand.glob("*"))[:brands_per]])):
        _, arrays = load_photos(folders)
        groups += [group] * len(arrays)
        images += arrays
    return groups, images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brands-per", type=int, default=5, help="photos per watches-brands brand (first, sorted)")
    parser.add_argument("--calibration-photos", type=int, default=50, help="N for calibration (b)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the speed measures")
    parser.add_argument("--speed-photos", type=int, default=100, help="photos in the raw speed measure")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"{SHARED} not found: the benchmark needs the shared photos", file=sys.stderr)
        return 2
    print(f"CPU flags: {cpu_flags()}; {os.cpu_count()} cores; load average at start {load_average()}")
    groups, images = parity_photos(args.brands_per)
    counts = {group: groups.count(group) for group in dict.fromkeys(groups)}
    print(f"photos: {len(images)} ({', '.join(f'{group} {count}' for group, count in counts.items())})")

    float_path = onnx_model_path("ssd-mobilenet-v2", "onnx")
    started = time.perf_counter()
    skimage_path = quantized_ssd_path(float_path)
    print(f"(a) scikit-image calibration ({len(calibration_images())} images): {skimage_path.name} "
          f"ready in {time.perf_counter() - started:.1f} s (cached after the first run)")
    job_input = images[:args.calibration_photos]
    with tempfile.TemporaryDirectory(prefix="bench-int8-cache-") as cache:
        started = time.perf_counter()
        job_path = quantized_ssd_path(float_path, job_input, cache_root=cache)
        print(f"(b) first {len(job_input)} photos of the job's input: quantized in "
              f"{time.perf_counter() - started:.1f} s")
        detectors = {"float32": OnnxDetector(float_path, "ssd-mobilenet-v2"),
                     "int8": OnnxDetector(skimage_path, "ssd-mobilenet-v2"),
                     "int8-job": OnnxDetector(job_path, "ssd-mobilenet-v2")}

    print(f"\nparity against float32 on {len(images)} real photos (best clock box >= 0.5):")
    outputs = {name: [detector.detect(image) for image in images] for name, detector in detectors.items()}
    print_parity("(a) int8, scikit-image calibration", parity(outputs["float32"], outputs["int8"], groups))
    print_parity(f"(b) int8, first {len(job_input)} photos", parity(outputs["float32"], outputs["int8-job"], groups))
    rest = slice(len(job_input), None)
    print_parity(f"(b) on the {len(images) - len(job_input)} photos after them",
                 parity(outputs["float32"][rest], outputs["int8-job"][rest], groups[rest]))

    speed_images = images[:args.speed_photos]
    print(f"\nraw SSD forward (ONNX Runtime, {len(speed_images)} pre-decoded photos x {args.rounds}, interleaved); "
          f"load {load_average()}")
    raw = raw_speed({name: detectors[name] for name in ("float32", "int8")}, speed_images, args.rounds)
    for name, (photos_per_second, cpu_ms) in raw.items():
        print(f"  {name:8s} {photos_per_second:6.1f} photos/s  {cpu_ms:6.1f} CPU ms/photo")
    print(f"  int8 / float32: {raw['int8'][0] / raw['float32'][0]:.2f}x")

    with tempfile.TemporaryDirectory(prefix="bench-int8-photos-") as scratch:
        folder = Path(scratch, "photos")
        link_photos((SHARED / "clock-scenes", SHARED / "caltech-watch" / "watch"), folder)
        count = sum(1 for path in folder.rglob("*") if path.is_file())
        print(f"\ncrop job (local engine, {count} photos: clock-scenes + caltech watch, x {args.rounds}, "
              f"alternating); load {load_average()}")
        jobs = job_speed(["float32", "int8"], folder, args.rounds)
    for name, photos_per_second in jobs.items():
        print(f"  {name:8s} {photos_per_second:6.1f} photos/s  (job / raw {photos_per_second / raw[name][0]:.2f})")
    print(f"  int8 / float32: {jobs['int8'] / jobs['float32']:.2f}x")
    print(f"\nload average at end {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
