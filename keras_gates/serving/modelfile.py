"""Reading a `.keras` file with clear errors (used by export and verify)."""

from __future__ import annotations

import errno
import os
import zipfile

import keras

# the layer and cell classes, registered with Keras's serialization on import
from keras_gates import gru, lstm  # noqa: F401


def load_keras_file(path: str | os.PathLike):
    """keras.saving.load_model, with clear errors for a missing or damaged file.

    Raises:
        FileNotFoundError: Nothing at `path` (strerror "no such file").
        ValueError: A `.keras` file that is not a zip archive, or one whose
            content is damaged or incomplete (no config.json, bad CRC, ...);
            the message names the argument (`model`) and the path.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
    if str(path).endswith(".keras") and os.path.isfile(path):
        if not zipfile.is_zipfile(path):
            raise ValueError(
                "`model` must be a .keras file (a zip archive); received "
                f"{str(path)!r}, which is not a valid .keras file (truncated or "
                "corrupted?)."
            )
        try:
            return keras.saving.load_model(path)
        except (zipfile.BadZipFile, KeyError) as error:
            # KeyError: a member such as config.json is missing from the zip.
            raise ValueError(
                "`model` must be a readable .keras file; received "
                f"{str(path)!r}, which is not a valid .keras file (truncated or "
                f"corrupted?): {type(error).__name__}: {error}"
            ) from error
    return keras.saving.load_model(path)
