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
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from keras_gates.serving.layout import MODELS_CONFIG, check_name, existing_versions

# TensorFlow (and TF Serving's protos, which import it) is imported inside the
# functions that use it, so that `import keras_gates` on the JAX or torch
# backend does not load it (seconds; tested in tests/test_packaging.py).

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
# A staging folder is created under this name, locked, then renamed to its
# STAGING_MARK name: a cleaner never sees one that is not yet locked.
NEW_MARK = ".keras-gates-new-"


def staging_places(base: Path) -> list[tuple[Path, str]]:
    """(folder, name prefix) where exports into `base` are staged.

    Beside the base, in its parent (`.BASE.keras-gates-export-PID-*`), so that
    nothing appears inside the base before the final rename; inside the base
    (`.keras-gates-export-PID-*`, a dot-folder TF Serving ignores) when the
    base is a mount point (a rename from its parent would cross filesystems)
    or its parent cannot be written.
    """
    return [(base.parent, f".{base.name}{STAGING_MARK}"), (base, STAGING_MARK)]


def staging_place(base: Path) -> tuple[Path, str]:
    beside, inside = staging_places(base)
    if base.is_dir() and (
        os.stat(base).st_dev != os.stat(base.parent).st_dev
        or not os.access(base.parent, os.W_OK | os.X_OK)
    ):
        return inside
    return beside


def _try_lock(path: Path) -> int | None:
    """An exclusive lock on folder `path` (its fd), or None if another process
    holds it. The kernel releases it when the holder dies, also in another
    PID namespace on a shared volume, where a PID says nothing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def remove_stale_staging(base: Path) -> list[Path]:
    """Remove staging folders for `base` left by exports that died.

    A live export holds a lock on its staging folder; a folder of our naming
    whose lock can be taken belongs to no running export, and is removed
    (after putting back a version that a killed overwrite had swapped out).

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
            if not entry.is_dir():
                continue
            fd = _try_lock(entry)
            if fd is None:
                continue  # a running export's folder
            try:
                restore_retired(entry)
                shutil.rmtree(entry, ignore_errors=True)
            finally:
                os.close(fd)
            if not entry.exists():
                removed.append(entry)
    return removed


class Staging:
    """A locked staging folder for one export into `base`; a context manager.

    On entry: removes dead exports' staging folders, creates this one (beside
    the base, or inside it where the parent refuses) and locks it. On exit:
    removes it, whatever happened. `export_dir` is where the SavedModel goes;
    `publish` moves it into place.
    """

    def __init__(self, base: Path):
        self.base = base
        self.path: Path | None = None
        self._fd: int | None = None

    @property
    def export_dir(self) -> Path:
        return self.path / "export"

    def __enter__(self) -> Staging:
        # Killed exports first: one may have to put a replaced version back.
        remove_stale_staging(self.base)
        folder, prefix = staging_place(self.base)
        new = Path(
            tempfile.mkdtemp(prefix=prefix.replace(STAGING_MARK, NEW_MARK), dir=folder)
        )
        fd = _try_lock(new)
        if fd is None:  # cannot happen: nobody else knows the name yet
            shutil.rmtree(new, ignore_errors=True)
            raise OSError(errno.EAGAIN, "cannot lock the staging folder", str(new))
        self._fd = fd
        self.path = folder / f"{prefix}{os.getpid()}-{new.name.rsplit('-', 1)[-1]}"
        os.rename(new, self.path)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def publish(
        self,
        name: str,
        version: int | None,
        *,
        overwrite: bool = False,
        shown_base: str | os.PathLike | None = None,
        prepare: Callable[[int], None] | None = None,
    ) -> Path:
        """Move `export_dir` to BASE/NAME/VERSION in one rename.

        Args:
            name: The model's folder.
            version: The version; None for the next free one: one more than
                the highest, chosen at the rename itself, so that concurrent
                exports of one name get versions N and N+1, never a clash.
            overwrite: Replace an existing `version` (swapped out first;
                killed between the two renames, the next export puts it back).
            shown_base: The base as the caller spelled it (for messages).
            prepare: Called with the version just before each rename attempt
                (to write the version into the export's metadata).

        Returns:
            The version folder, under `shown_base`.
        """
        model_dir = self.base / name
        shown = Path(shown_base if shown_base is not None else self.base) / name
        created = make_dirs(model_dir)
        try:
            while True:
                chosen = version or (existing_versions(model_dir) or [0])[-1] + 1
                target = model_dir / str(chosen)
                if prepare is not None:
                    prepare(chosen)
                if version is not None and target.exists():
                    if not overwrite:
                        raise FileExistsError(
                            f"`version`: {shown / str(chosen)} already exists; pass "
                            "overwrite=True (--overwrite) to replace it, or "
                            "another version."
                        )
                    (self.path / RETIRED_FROM).write_text(str(target))
                    os.replace(target, self.path / RETIRED)
                try:
                    # rename(2) refuses a non-empty target: the atomic claim.
                    os.rename(self.export_dir, target)
                except OSError as error:
                    restore_retired(self.path)
                    if version is None and error.errno in (
                        errno.EEXIST,
                        errno.ENOTEMPTY,
                    ):
                        continue  # another export took this version meanwhile
                    if version is not None and error.errno in (
                        errno.EEXIST,
                        errno.ENOTEMPTY,
                    ):
                        raise FileExistsError(
                            f"`version`: {shown / str(chosen)} already exists; pass "
                            "overwrite=True (--overwrite) to replace it, or "
                            "another version."
                        ) from None
                    raise
                created = []
                return shown / str(chosen)
        finally:
            remove_empty(created)


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

    The file is parsed and written as the `ModelServerConfig` proto it is
    (tensorflow-serving-api's text format), under a lock held on
    `base/.models.config.lock`, and replaced in one rename: concurrent exports
    each add their name, and the server never reads a half-written file.

    Args:
        base: The model base directory (it holds one folder per model).
        name: The model's name (its folder in `base`).
        root: Where `base` is mounted in the server (the docker image's /models).

    Returns:
        The path of the config file.

    Raises:
        ValueError: The existing file is not a text ModelServerConfig with a
            model_config_list.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    name = check_name(name)
    base = Path(base)
    path = base / MODELS_CONFIG
    with open(base / f".{MODELS_CONFIG}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        config = model_server_config_pb2.ModelServerConfig()
        if path.exists():
            try:
                text_format.Parse(path.read_text(), config)
            except text_format.ParseError as error:
                raise ValueError(
                    f"`base`: {path} must be a text ModelServerConfig; received a "
                    f"file the proto parser refuses: {error}"
                ) from None
            if config.WhichOneof("config") != "model_config_list":
                raise ValueError(
                    f"`base`: {path} must be a text ModelServerConfig with a "
                    "model_config_list { ... } block; received a file without one."
                )
        models = config.model_config_list.config
        if any(model.name == name for model in models):
            return path
        models.add(
            name=name,
            base_path=f"{root.rstrip('/')}/{name}",
            model_platform="tensorflow",
        )
        text = (
            "# TF Serving model config (text ModelServerConfig), kept by "
            "`keras-gates export`.\n"
            "# Serve with --model_config_file=/models/models.config\n"
            + text_format.MessageToString(config)
        )
        fd, tmp = tempfile.mkstemp(prefix=f".{MODELS_CONFIG}.", dir=base)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path
