"""Stage one: find objects in photos and crop them into a class-folder dataset.

Stands on `data` only. TensorFlow is imported by the detector adapters when a detector is
loaded, so importing this package (and `detcrop --help`) stays fast.

- `detect.detections.Detections`: the validated result of one `detect` call.
- `detect.base.Detector` / `load_detector`: the interface and the registry of detectors.
- `detect.geometry.crop_region`: margin, square and clipping of a box (pure).
- `detect.crop.CropConfig`, `crop_detections`, `crop_photos`: cropping one image, or a
  whole folder into a resumable dataset with a manifest.
"""
