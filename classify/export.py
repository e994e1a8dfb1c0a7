"""Exporting a bundle for use outside detcrop: TF SavedModel or TFLite, with the labels beside it.

- `savedmodel`: a TF SavedModel written by Keras' `ExportArchive`, with a `serve` endpoint
  (also the `serving_default` signature). Input: float32 `[batch, height, width, 3]` raw RGB pixel
  values 0..255 of ANY size; resizing and normalisation are inside, as in the bundle.
- `tflite`: the same model for TFLite with a fixed float32 `[1, S, S, 3]` input of raw
  0..255 pixels, S = the bundle's input size. TFLite has no builtin for the antialiased
  resize the bundle uses (`ScaleAndTranslate`), so the exported graph starts after the
  resize layer and the caller resizes to S x S first (antialiased bilinear, as
  `classify.bundle.resize_images` does); `--quantize` applies dynamic-range quantization
  (int8 weights, float activations; a smaller file).
- `onnx`: the same post-resize model as TFLite (float32 `[batch, S, S, 3]` raw 0..255 pixels,
  resized by the caller), converted by tf2onnx for ONNX Runtime; probabilities out.

Beside the model: `labels.txt` (one class name per line, in output order) and
`export.json` (format, input spec, class names, the bundle's metadata, the files written).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from detcrop.data.atomic import (
    StagingFolder, atomic_write_bytes, atomic_write_json, atomic_write_text, remove_stale_staging,
)
from detcrop.data.config import read_json_object
from detcrop.data.errors import DetcropError, MissingFileError
from detcrop.data.layout import EXPORT_META_NAME, LABELS_NAME, TFLITE_NAME
from detcrop.data.outputs import OutputPathError, check_output_path

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("savedmodel", "tflite", "onnx")
ONNX_NAME = "model.onnx"
#: ONNX opset of exported classifiers (ONNX Runtime 1.17+ runs it).
ONNX_OPSET = 17
SAVEDMODEL_DIR = "saved_model"
#: Every name an export writes into its folder; an earlier export is replaced only when its
#: folder holds nothing else (its export.json lists what it wrote).
EXPORT_FILE_NAMES = frozenset({EXPORT_META_NAME, LABELS_NAME, TFLITE_NAME, ONNX_NAME, SAVEDMODEL_DIR})
#: Staging folders of an export are named ``.<out>.detcrop-export-<random>.part``.
STAGING_TAG = "export"


def _tflite_source_model(bundle):
    """The bundle model from just after its resize layer: fixed S x S raw-pixel input."""
    import keras

    from detcrop.classify.bundle import RESIZE_LAYER_NAME

    resize = bundle.model.get_layer(RESIZE_LAYER_NAME)
    return keras.Model(resize.output, bundle.model.output, name="detcrop_tflite")


def onnx_classifier_bytes(bundle) -> bytes:
    """The bundle's classifier after its resize layer as a serialized ONNX model (tf2onnx).

    Input `pixels`: float32 `[batch, S, S, 3]`, raw 0..255 RGB already resized to the bundle's
    input size (`classify.bundle.resize_images`); output: probabilities `[batch, classes]`.
    """
    return keras_to_onnx_bytes(_tflite_source_model(bundle), bundle.input_size)


def keras_to_onnx_bytes(model, size: int) -> bytes:
    """`model` called in inference mode on float32 `pixels` `[batch, size, size, 3]`, as serialized ONNX."""
    import tensorflow as tf

    try:
        import tf2onnx
    except ImportError:
        raise ImportError("ONNX export needs tf2onnx and onnxruntime: pip install 'detcrop[export]'") from None
    logger.info("converting %s to ONNX (tf2onnx, opset %d)", model.name, ONNX_OPSET)
    signature = [tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")]
    # A tf.function with training=False (BatchNormalization in inference mode; see _write_saved_model).
    function = tf.function(lambda pixels: model(pixels, training=False), input_signature=signature)
    onnx_model, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=ONNX_OPSET)
    return onnx_model.SerializeToString()


def _write_saved_model(model, path: Path, shape: list) -> None:
    """A SavedModel whose `serve` endpoint runs `model` in inference mode."""
    import keras
    import tensorflow as tf

    # An explicit endpoint with training=False: with Keras 3.15, calling a model whose first
    # layer is Resizing with training=None (what Model.export does) runs BatchNormalization
    # on batch statistics; tests/pipeline/test_export.py catches that.
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serve", fn=lambda images: model(images, training=False),
                         input_signature=[tf.TensorSpec(shape, tf.float32, name="images")])
    archive.write_out(str(path), verbose=False)


class ExportError(DetcropError, ValueError):
    """Export options that do not fit together (the --out checks raise `OutputPathError`)."""


def _recorded_files(meta_path: Path) -> set[str]:
    """The entries an earlier export says it wrote (its ``files``; older exports: derived)."""
    meta = read_json_object(meta_path, "export metadata")
    files = meta.get("files")
    if not (isinstance(files, list) and all(isinstance(name, str) for name in files)):
        files = [EXPORT_META_NAME, LABELS_NAME, meta.get("model")]  # exports before the list was kept
    # Only names an export writes count, whatever the file says: a hand-made export.json
    # listing "photos" must not get the photos deleted.
    return set(files) & EXPORT_FILE_NAMES


def _check_replaceable(out_dir: Path, run_dir: Path) -> None:
    """Refuse an --out that holds the run (or is inside it), or holds anything an earlier export did not write."""
    check_output_path(out_dir, "--out", inputs=[("the run folder", run_dir)])
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise OutputPathError(f"--out {out_dir} is a file; expected a folder to export into")
    entries = {entry.name for entry in out_dir.iterdir()}
    if not entries:
        return
    meta_path = out_dir / EXPORT_META_NAME
    if not meta_path.is_file():
        raise OutputPathError(f"--out {out_dir} is not empty and not an earlier export (no {EXPORT_META_NAME}); "
                              f"refusing to replace it: choose another --out")
    foreign = sorted(entries - _recorded_files(meta_path))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputPathError(f"--out {out_dir} holds {shown}, which no earlier export wrote (see its "
                              f"{EXPORT_META_NAME}); refusing to replace it: move them or choose another --out")


def export_bundle(run_dir: str | os.PathLike, out_dir: str | os.PathLike, export_format: str = "savedmodel",
                  quantize: bool = False) -> Path:
    """Export the bundle in `run_dir` into `out_dir`; returns the model's path.

    `out_dir` is filled in a hidden staging folder beside it and renamed into place at the
    end, so a crash leaves no half export; staging folders left by killed exports into the
    same `out_dir` are removed first. An existing `out_dir` is replaced only when it is empty
    or holds nothing but what an earlier export wrote (export.json lists it), and never when
    it holds the run or lies inside it.
    """
    import tensorflow as tf

    from detcrop.classify.bundle import load_bundle

    if export_format not in EXPORT_FORMATS:
        raise ExportError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {export_format!r}")
    if quantize and export_format != "tflite":
        raise ExportError("--quantize applies to --format tflite only")
    out_dir = Path(out_dir)
    _check_replaceable(out_dir, Path(run_dir))
    bundle = load_bundle(run_dir)
    for stale in remove_stale_staging(out_dir, STAGING_TAG):
        logger.info("removed %s, left by an interrupted export", stale)
    with StagingFolder(out_dir, STAGING_TAG) as staging_folder:
        staging = staging_folder.path
        try:
            if export_format == "savedmodel":
                _write_saved_model(bundle.model, staging / SAVEDMODEL_DIR, [None, None, None, 3])
                model_name = SAVEDMODEL_DIR
                input_spec = {"dtype": "float32", "shape": [None, None, None, 3], "range": "0..255 RGB, any size"}
            elif export_format == "onnx":
                size = bundle.input_size
                atomic_write_bytes(staging / ONNX_NAME, onnx_classifier_bytes(bundle))
                model_name = ONNX_NAME
                input_spec = {"dtype": "float32", "shape": [None, size, size, 3],
                              "range": f"0..255 RGB, resized to {size}x{size} (antialiased bilinear) by the caller"}
            else:
                size = bundle.input_size
                intermediate = staging / ".tflite_source"
                _write_saved_model(_tflite_source_model(bundle), intermediate, [1, size, size, 3])
                converter = tf.lite.TFLiteConverter.from_saved_model(str(intermediate))
                if quantize:
                    converter.optimizations = [tf.lite.Optimize.DEFAULT]
                atomic_write_bytes(staging / TFLITE_NAME, converter.convert())
                shutil.rmtree(intermediate)
                model_name = TFLITE_NAME
                input_spec = {"dtype": "float32", "shape": [1, size, size, 3],
                              "range": f"0..255 RGB, resized to {size}x{size} (antialiased bilinear) by the caller"}
            atomic_write_text(staging / LABELS_NAME, "".join(f"{name}\n" for name in bundle.class_names))
            atomic_write_json(staging / EXPORT_META_NAME, {
                "format": export_format, "quantized": quantize, "model": model_name, "input": input_spec,
                "output": {"dtype": "float32", "shape": [None, len(bundle.class_names)], "meaning": "probabilities"},
                "class_names": list(bundle.class_names), "bundle": bundle.metadata.to_dict(),
                "files": sorted([EXPORT_META_NAME, LABELS_NAME, model_name]),
            })
            _swap_into_place(staging, out_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return out_dir / model_name


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Rename `staging` to `out_dir`; an earlier export there goes into a locked staging folder, then away."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    # Moved aside, not deleted first: a kill between the two renames leaves the old export in
    # a staging folder (cleaned on the next run), never no export and no way back.
    with StagingFolder(out_dir, STAGING_TAG) as old:
        os.rename(out_dir, old.path / "previous")
        os.replace(staging, out_dir)
        shutil.rmtree(old.path, ignore_errors=True)


class ExportedModel:
    """Runs an exported model the way its `export.json` says; used for parity checks.

    >>> ExportedModel("export/").predict([image])  # doctest: +SKIP
    """

    def __init__(self, export_dir: str | os.PathLike):
        import tensorflow as tf

        self.export_dir = Path(export_dir)
        meta_path = self.export_dir / EXPORT_META_NAME
        if not meta_path.is_file():
            raise MissingFileError(f"{meta_path}: not an export folder (written by `detcrop export`)")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        self.class_names = tuple(self.meta["class_names"])
        self.input_size = int(self.meta["bundle"]["input_size"])
        if self.meta["format"] == "savedmodel":
            self._saved = tf.saved_model.load(str(self.export_dir / self.meta["model"]))
        elif self.meta["format"] == "onnx":
            import onnxruntime

            self._session = onnxruntime.InferenceSession(str(self.export_dir / self.meta["model"]),
                                                         providers=["CPUExecutionProvider"])
        else:
            self._interpreter = tf.lite.Interpreter(model_path=str(self.export_dir / self.meta["model"]))
            self._interpreter.allocate_tensors()

    def predict(self, images) -> np.ndarray:
        """Probabilities for uint8 HxWx3 images of any size."""
        from detcrop.classify.bundle import resize_images

        rows = []
        for image in images:
            if self.meta["format"] == "savedmodel":
                rows.append(np.asarray(self._saved.serve(np.asarray(image, np.float32)[None]))[0])
            elif self.meta["format"] == "onnx":
                batch = resize_images([image], self.input_size)
                session = self._session
                rows.append(session.run(None, {session.get_inputs()[0].name: batch})[0][0])
            else:
                batch = resize_images([image], self.input_size)
                interpreter = self._interpreter
                interpreter.set_tensor(interpreter.get_input_details()[0]["index"], batch)
                interpreter.invoke()
                rows.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0])
        return np.stack(rows).astype(np.float32)
