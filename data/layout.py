"""The names of the files detcrop writes, in one place.

A cropped dataset (`detcrop crop`):

    DATASET/manifest.jsonl      MANIFEST_NAME     one record per crop, and per photo without one
    DATASET/crop_config.json    CROP_CONFIG_NAME  the resolved CropConfig
    DATASET/summary.json        CROP_SUMMARY_NAME photos seen, cropped, empty, failed
    DATASET/.detcrop.lock       LOCK_NAME         held while a job writes into the folder
    DATASET/<label>/*.jpg                         the crops

A run folder (`detcrop train`, `detcrop baseline`):

    RUN/model.keras             MODEL_NAME        the classifier, preprocessing inside
    RUN/bundle.json             BUNDLE_NAME       class names, input size, metrics, configs, versions
    RUN/config.json             CONFIG_NAME       the resolved training config
    RUN/INCOMPLETE              INCOMPLETE_NAME   while training writes into RUN; predict & co. refuse it
    RUN/backup/                 BACKUP_DIR        fine-tuning state per epoch (resume after a kill)
    RUN/split.json, history.json, metrics.json, classification_report.txt, *.png

An export folder (`detcrop export`): EXPORT_META_NAME, LABELS_NAME, TFLITE_NAME.

Modules that read or write these files import the names from here, so a name is never
spelt twice.
"""

from __future__ import annotations

# ------------------------------------------------------------------ cropped dataset
MANIFEST_NAME = "manifest.jsonl"
CROP_CONFIG_NAME = "crop_config.json"
CROP_SUMMARY_NAME = "summary.json"

# ------------------------------------------------------------------ run folder
MODEL_NAME = "model.keras"
BUNDLE_NAME = "bundle.json"
CONFIG_NAME = "config.json"
SPLIT_NAME = "split.json"
HISTORY_NAME = "history.json"
METRICS_NAME = "metrics.json"
REPORT_NAME = "classification_report.txt"
CONFUSION_NAME = "confusion_matrix.png"
CURVES_NAME = "curves.png"
MISTAKES_NAME = "mistakes.png"
TRAINING_LOG_NAME = "training_log.json"  # the from-scratch baseline's per-epoch log
MODEL_SUMMARY_NAME = "model_summary.txt"  # the from-scratch baseline's Keras summary
#: Present while `train` writes into a run folder (and after a killed or cancelled one): not to be used.
INCOMPLETE_NAME = "INCOMPLETE"
#: Fine-tuning state after each epoch, so a killed `train` resumes where it stopped.
BACKUP_DIR = "backup"

# ------------------------------------------------------------------ export folder
EXPORT_META_NAME = "export.json"
LABELS_NAME = "labels.txt"
TFLITE_NAME = "model.tflite"

# ------------------------------------------------------------------ any folder a job writes into
#: Held (fcntl.flock) by the job writing into a dataset or run folder; says who holds it.
LOCK_NAME = ".detcrop.lock"

#: Files detcrop writes into a dataset root: not images, not worth reporting as skipped.
DATASET_ROOT_FILES = frozenset({MANIFEST_NAME, CROP_CONFIG_NAME, CROP_SUMMARY_NAME, "README.md"})
