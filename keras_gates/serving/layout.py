"""The TF Serving model base layout: one fact, one place.

    BASE/models.config                  text ModelServerConfig listing every model
    BASE/batching_parameters.txt        an example of server-side batching options
    BASE/NAME/VERSION/                  one SavedModel; the server serves the highest
        saved_model.pb, variables/
        assets.extra/tf_serving_warmup_requests    PredictionLog TFRecords
        assets.extra/keras_gates.json              what `keras-gates verify` reads

Standard library only: the loader child (no TensorFlow Python) imports it too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
METADATA_FILE = "keras_gates.json"
WARMUP_PATH = os.path.join(ASSETS_EXTRA, WARMUP_FILE)
METADATA_PATH = os.path.join(ASSETS_EXTRA, METADATA_FILE)
MODELS_CONFIG = "models.config"
BATCHING_FILE = "batching_parameters.txt"
# TF Serving reads at most this many warmup records.
MAX_WARMUP_RECORDS = 1000


def existing_versions(model_dir: Path) -> list[int]:
    """The version numbers under BASE/NAME, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(
        int(entry.name)
        for entry in model_dir.iterdir()
        if entry.is_dir() and entry.name.isdigit()
    )


def check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a string; received {name!r}.")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(
            "`name` must be a model name of letters, digits, '_', '.' and '-' (it "
            f"becomes a folder and a URL segment); received {name!r}."
        )
    return name


def check_version(version: Any) -> int | None:
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)):
        raise TypeError(
            f"`version` must be None or a positive integer; received {version!r}."
        )
    if version <= 0:
        raise ValueError(
            f"`version` must be None or a positive integer; received {version}."
        )
    return int(version)
