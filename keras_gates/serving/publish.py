"""Publishing a version folder: staging, version numbers, the atomic rename,
retire/restore of an overwritten version, and `models.config`.

A version is staged in a hidden folder beside the base directory (in the base's
parent, so on the same filesystem: ``.BASE.keras-gates-export-PID-XXXX``) and
renamed into place in one step; ``BASE/NAME`` is created only then. A failure
in Python removes the staging folder; a killed export (SIGKILL, power loss)
leaves the base directory exactly as it was, and its staging folder is removed
by the next export into that base once its process is gone. An existing
version is never touched unless ``overwrite=True``, and ``models.config`` is
updated only after the version is in place.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path
from typing import Any

from keras_gates.serving.layout import MODELS_CONFIG, check_name

# Server-side batching example (text BatchingParameters). pad_variable_length_inputs
# pads with each tensor's first element: send `lengths` (signature with_lengths).
BATCHING_PARAMETERS = """\
# TF Serving batching parameters (text BatchingParameters proto); pass with
#   --enable_batching --batching_parameters_file=/models/batching_parameters.txt
# pad_variable_length_inputs pads each tensor with its FIRST ELEMENT, not 0: for a
# masked token model call the `with_lengths` signature with explicit lengths.
max_batch_size { value: 32 }
batch_timeout_micros { value: 2000 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 4 }
pad_variable_length_inputs: true
"""

STAGING_MARK = ".keras-gates-export-"


def staging_places(base: Path) -> list[tuple[Path, str]]:
    """(folder, name prefix) where exports into `base` are staged.

    Beside the base, in its parent (`.BASE.keras-gates-export-PID-*`), so that
    nothing appears inside the base before the final rename; inside the base
    (`.keras-gates-export-PID-*`) only when the base is a mount point, where a
    rename from its parent would cross filesystems.
    """
    return [(base.parent, f".{base.name}{STAGING_MARK}"), (base, STAGING_MARK)]


def staging_place(base: Path) -> tuple[Path, str]:
    beside, inside = staging_places(base)
    if base.is_dir() and os.stat(base).st_dev != os.stat(base.parent).st_dev:
        return inside
    return beside


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists (another user's) or cannot tell: keep its folder
    return True


def remove_stale_staging(base: Path) -> list[Path]:
    """Remove staging folders for `base` left by exports that were killed.

    Only folders of our own naming whose process (the PID in the name) no
    longer runs are removed; a running export's folder is kept.

    Returns:
        The folders removed.
    """
    removed = []
    for folder, prefix in staging_places(base):
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            if not entry.name.startswith(prefix) or entry.is_symlink():
                continue
            pid_text = entry.name[len(prefix) :].split("-", 1)[0]
            if not entry.is_dir() or not pid_text.isdigit():
                continue
            pid = int(pid_text)
            if pid == os.getpid() or process_alive(pid):
                continue
            restore_retired(entry)
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed.append(entry)
    return removed


RETIRED = "retired"  # the replaced version, inside the staging folder
RETIRED_FROM = "retired_from"  # where it came from (a text file beside it)


def restore_retired(staging: Path) -> None:
    """An overwrite killed between its two renames left the old version in
    `staging` and nothing at its place: put it back before `staging` goes."""
    retired, origin = staging / RETIRED, staging / RETIRED_FROM
    if not (retired.is_dir() and origin.is_file()):
        return
    target = Path(origin.read_text())
    if not target.exists() and target.parent.is_dir():
        try:
            os.replace(retired, target)
        except OSError:
            pass


def make_dirs(path: Path) -> list[Path]:
    """mkdir -p `path`; returns the folders it created, outermost first."""
    missing = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    created = []
    for folder in reversed(missing):
        folder.mkdir()
        created.append(folder)
    return created


def remove_empty(folders: list[Path]) -> None:
    """Remove folders created for a failed export, innermost first, if empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            pass


def check_base(base: Any) -> Path:
    if not isinstance(base, (str, os.PathLike)):
        raise TypeError(f"`base` must be a folder path; received {base!r}.")
    # Resolved, so that the staging folder lies on the base's own filesystem
    # even when `base` is a symlink.
    path = Path(base).resolve()
    if path.exists() and not path.is_dir():
        raise ValueError(
            "`base` must be a folder (the model base directory); received "
            f"{str(base)!r}, which is a file."
        )
    ancestor = path.parent
    while not ancestor.exists() and ancestor.parent != ancestor:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR,
            "a file, not a folder, is in the path of `base`",
            str(ancestor),
        )
    if path.parent == path:
        raise ValueError(
            "`base` must be a folder below the filesystem root (exports are staged "
            f"beside it); received {str(base)!r}."
        )
    return path


def update_models_config(
    base: str | os.PathLike, name: str, root: str = "/models"
) -> Path:
    """Add `name` to `base/models.config` (text ModelServerConfig), if absent.

    Args:
        base: The model base directory (it holds one folder per model).
        name: The model's name (its folder in `base`).
        root: Where `base` is mounted in the server (the docker image's /models).

    Returns:
        The path of the config file.
    """
    name = check_name(name)
    path = Path(base) / MODELS_CONFIG
    entry = (
        "  config {\n"
        f'    name: "{name}"\n'
        f'    base_path: "{root.rstrip("/")}/{name}"\n'
        '    model_platform: "tensorflow"\n'
        "  }\n"
    )
    if path.exists():
        text = path.read_text()
        if re.search(rf'name:\s*"{re.escape(name)}"', text):
            return path
        closing = text.rstrip().rfind("}")
        if "model_config_list" not in text or closing < 0:
            raise ValueError(
                f"`base`: {path} must be a text ModelServerConfig with a "
                "model_config_list { ... } block; received a file without one."
            )
        text = text[:closing].rstrip("\n") + "\n" + entry + "}\n"
    else:
        text = (
            "# TF Serving model config (text ModelServerConfig), kept by "
            "`keras-gates export`.\n"
            "# Serve with --model_config_file=/models/models.config\n"
            "model_config_list {\n" + entry + "}\n"
        )
    tmp = path.with_name(f".{MODELS_CONFIG}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
