"""`detcrop export RUN --format savedmodel|tflite --out DIR [--quantize]`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a trained run as a TF SavedModel, TFLite or ONNX model, with labels.txt",
        description="SavedModel: raw 0..255 RGB images of any size in, probabilities out. TFLite: a fixed "
        "[1, S, S, 3] raw-pixel input (resize first; see export.json). ONNX: [batch, S, S, 3] raw pixels for ONNX "
        "Runtime (resize first). --quantize: dynamic-range int8 weights.",
    )
    parser.add_argument("run", help="run folder written by `detcrop train`")
    parser.add_argument("--format", dest="export_format", choices=("savedmodel", "tflite", "onnx"),
                        default="savedmodel")
    parser.add_argument("--out", required=True, help="output folder: new, empty, or an earlier export (replaced)")
    parser.add_argument("--quantize", action="store_true", help="TFLite only: int8 weights, float activations")
    parser.add_argument("--check", nargs="*", metavar="PHOTO",
                        help="compare the export with the bundle on these images and print the largest difference")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from detcrop.classify.export import export_bundle
    from detcrop.data.outputs import check_writable

    check_writable(args.out)  # the export is staged beside --out, so that is where it must be able to write
    path = export_bundle(args.run, args.out, args.export_format, args.quantize)
    print(f"wrote {path} (labels: {args.out}/labels.txt, spec: {args.out}/export.json)")
    if args.check:
        import numpy as np

        from detcrop.classify.bundle import load_bundle
        from detcrop.classify.export import ExportedModel
        from detcrop.data.folders import expand_image_paths
        from detcrop.data.images import load_image_array

        images = [load_image_array(path) for path in expand_image_paths(args.check)]
        expected = load_bundle(args.run).predict(images, tta_flip=False)
        received = ExportedModel(args.out).predict(images)
        agree = float(np.mean(expected.argmax(axis=1) == received.argmax(axis=1)))
        print(f"parity on {len(images)} image(s): max |p_export - p_bundle| = {np.abs(expected - received).max():.2e}, "
              f"top-1 agreement {agree:.1%}")
    return 0
