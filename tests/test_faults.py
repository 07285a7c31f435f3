"""Faults: training interrupted and resumed, an export killed midway.

Oracles: an uninterrupted run with the same seeds (weights compared exactly,
float32 bit for bit), and the listing and hashes of a directory before the
fault.

What Keras 3.15's BackupAndRestore does (measured, tests/test_faults.py and
the issue): it saves the model's weights and the optimizer's variables, and
restores them with the epoch to restart from.

- Interrupted at an epoch boundary, a resumed run is exact only if the dropout
  random state comes back too. Keras leaves a layer's SeedGenerator state out
  of `save_weights`; keras_gates cells add it (GatedCell.save_own_variables).
- Interrupted mid-epoch with an integer `save_freq`, Keras restarts the
  interrupted epoch from its first batch on the mid-epoch weights (it writes
  the last batch into training_metadata.json but never reads it back), so no
  layer can make that resume exact. The backup itself is exact; a run is
  exact if it feeds the rest of the interrupted epoch itself (as
  `finish_interrupted_epoch` does here), then carries on.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import snapshot_tree

import keras_gates

CELLS = {"lstm": keras_gates.LSTM, "gru": keras_gates.GRU}
EPOCHS = 3
BATCH = 8
SAMPLES = 32  # 4 batches per epoch
FIT = {"epochs": EPOCHS, "batch_size": BATCH, "shuffle": False, "verbose": 0}


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, 5, 3)).astype("float32")
    y = rng.normal(size=(SAMPLES, 1)).astype("float32")
    return x, y


def build(cell: str) -> keras.Model:
    """The same model every time: fixed initial weights and dropout seed."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((5, 3)),
            CELLS[cell](4, dropout=0.3, recurrent_dropout=0.3, seed=3),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.Adam(0.05), "mse")
    return model


def state(model: keras.Model) -> list[np.ndarray]:
    """Weights, optimizer variables (iterations included) and the seed state."""
    cell = model.layers[0].cell
    return (
        [np.asarray(w) for w in model.weights]
        + [np.asarray(v) for v in model.optimizer.variables]
        + [np.asarray(cell.seed_generator.state)]
    )


def assert_same(got, want):
    assert len(got) == len(want)
    for index, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(g, w, err_msg=f"state entry {index}")


class Interrupt(keras.callbacks.Callback):
    """Raises at the start of `epoch` (and of `batch` in it, if given)."""

    def __init__(self, epoch: int, batch: int | None = None):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, -1

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch
        if self.batch is None and epoch == self.epoch:
            raise RuntimeError("interrupted")

    def on_train_batch_begin(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            raise RuntimeError("interrupted")


class Snapshot(keras.callbacks.Callback):
    """Records the full training state after `batch` of `epoch`."""

    def __init__(self, epoch: int, batch: int):
        super().__init__()
        self.epoch, self.batch, self.current, self.taken = epoch, batch, -1, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            self.taken = state(self.model)


@pytest.fixture(scope="module", params=sorted(CELLS))
def uninterrupted(request):
    """(cell, final state, state after batch 1 of epoch 1) of one clean run."""
    x, y = data()
    model = build(request.param)
    snapshot = Snapshot(epoch=1, batch=1)
    model.fit(x, y, callbacks=[snapshot], **FIT)
    return request.param, state(model), snapshot.taken


def test_dropout_is_active():
    """Guards the tests below: with dropout off they would pass trivially."""
    x, _ = data()
    layer = build("lstm").layers[0]
    first = np.asarray(layer(x, training=True))
    assert not np.array_equal(first, np.asarray(layer(x, training=False)))
    assert not np.array_equal(first, np.asarray(layer(x, training=True)))


def test_resume_at_epoch_boundary_is_exact(uninterrupted, tmp_path):
    cell, want, _ = uninterrupted
    x, y = data()
    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        build(cell).fit(
            x,
            y,
            callbacks=[keras.callbacks.BackupAndRestore(backup), Interrupt(epoch=2)],
            **FIT,
        )
    resumed = build(cell)
    history = resumed.fit(
        x, y, callbacks=[keras.callbacks.BackupAndRestore(backup)], **FIT
    )
    assert len(history.history["loss"]) == EPOCHS - 2  # epochs 0, 1 not re-run
    assert_same(state(resumed), want)


def finish_interrupted_epoch(model, x, y, backup: str) -> None:
    """Restore with BackupAndRestore and train the rest of the interrupted epoch.

    Keras would restart the epoch from batch 0; this feeds only the batches
    after the one recorded in the backup, then backs up at the epoch's end so
    that the next `fit` with BackupAndRestore carries on from the next epoch.
    """
    metadata = json.loads((Path(backup) / "training_metadata.json").read_text())
    epoch, done = metadata["epoch"], metadata["batch"] + 1
    model.fit(
        x[done * BATCH :],
        y[done * BATCH :],
        epochs=epoch + 1,
        batch_size=BATCH,
        shuffle=False,
        verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False)],
    )


def test_resume_mid_epoch_with_integer_save_freq_is_exact(uninterrupted, tmp_path):
    cell, want_final, want_at_backup = uninterrupted
    x, y = data()
    backup = str(tmp_path / "backup")
    # Saves after every 2nd batch; the last save before batch 3 of epoch 1
    # holds the state after batch 1 of epoch 1, and batch 2 is lost.
    with pytest.raises(RuntimeError, match="interrupted"):
        build(cell).fit(
            x,
            y,
            callbacks=[
                keras.callbacks.BackupAndRestore(backup, save_freq=2),
                Interrupt(epoch=1, batch=3),
            ],
            **FIT,
        )
    metadata = json.loads((Path(backup) / "training_metadata.json").read_text())
    assert metadata == {"epoch": 1, "batch": 1}

    # The backup restores exactly the clean run's state at that batch.
    restored = build(cell)
    restored.optimizer.build(restored.trainable_variables)
    restored.load_weights(str(Path(backup) / "latest.weights.h5"))
    assert_same(state(restored), want_at_backup)

    resumed = build(cell)
    finish_interrupted_epoch(resumed, x, y, backup)
    history = resumed.fit(
        x, y, callbacks=[keras.callbacks.BackupAndRestore(backup, save_freq=2)], **FIT
    )
    assert len(history.history["loss"]) == EPOCHS - 2
    assert_same(state(resumed), want_final)


def test_weights_written_without_seed_state_still_load(tmp_path, monkeypatch):
    """Files from before the seed state was saved load; the seed is kept."""
    model = build("gru")
    path = str(tmp_path / "old.weights.h5")
    with monkeypatch.context() as patch:
        # The seed state is saved by a child layer of the cell: without it, the
        # file is what older keras_gates (and the built-in GRU) write.
        patch.setattr(
            keras_gates.base._SeedStateSaver,
            "save_own_variables",
            lambda self, store: None,
        )
        model.save_weights(path)
    other = build("gru")
    other.layers[0].cell.seed_generator.state.assign([5, 7])
    other.load_weights(path)
    for got, want in zip(other.weights, model.weights):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(
        np.asarray(other.layers[0].cell.seed_generator.state), [5, 7]
    )


# --------------------------------------------------------------------------- #
# An export killed midway
# --------------------------------------------------------------------------- #


def new_files(root: Path, before: dict[str, str]) -> list[str]:
    return [
        path
        for path, kind in snapshot_tree(root).items()
        if kind != "dir" and path not in before
    ]


EXPORT_SCRIPT = textwrap.dedent(
    """
    import sys, keras, keras_gates
    from keras_gates.serving import export_for_serving
    model = keras.Sequential([keras.Input((5, 3)), keras_gates.LSTM(4),
                              keras.layers.Dense(1)])
    print("READY", flush=True)
    export_for_serving(model, sys.argv[1], "toy", verify=False)
    print("DONE", flush=True)
    """
)


def test_export_killed_midway_leaves_base_unchanged(tmp_path):
    """SIGKILL once the export has written its first file: the base is as it
    was (the export is staged beside it, in its parent), and the next export's
    clean-up removes the dead export's staging folder."""
    from keras_gates.serving.publish import remove_stale_staging

    base = tmp_path / "saved_models"
    (base / "toy" / "1" / "variables").mkdir(parents=True)
    (base / "toy" / "1" / "saved_model.pb").write_bytes(b"version one")
    (base / "toy" / "1" / "variables" / "variables.index").write_bytes(b"index")
    (base / "models.config").write_text(
        'model_config_list {\n  config {\n    name: "toy"\n  }\n}\n'
    )
    before = snapshot_tree(tmp_path)
    before_base = snapshot_tree(base)

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    child = subprocess.Popen(
        [sys.executable, "-c", EXPORT_SCRIPT, str(base)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert child.stdout.readline().strip() == b"READY"
        # Kill once the export has written its first file under the base.
        deadline = time.monotonic() + 120
        while not new_files(tmp_path, before):
            assert child.poll() is None, "the export finished before it was killed"
            assert time.monotonic() < deadline, "the export never wrote anything"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert snapshot_tree(base) == before_base
    # Only the dead export's staging folder is left, beside the base.
    left = {path.split(os.sep)[0] for path in snapshot_tree(tmp_path)} - {
        path.split(os.sep)[0] for path in before
    }
    assert len(left) == 1
    (staging,) = left
    assert staging.startswith(f".saved_models.keras-gates-export-{child.pid}-")
    # A running export's staging folder is never taken; a dead one's is.
    alive = tmp_path / f".saved_models.keras-gates-export-{os.getpid()}-x"
    alive.mkdir()
    held = os.open(alive, os.O_RDONLY)  # as a running export holds its folder
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        assert remove_stale_staging(base) == [tmp_path / staging]
    finally:
        os.close(held)
    alive.rmdir()
    assert snapshot_tree(tmp_path) == before
