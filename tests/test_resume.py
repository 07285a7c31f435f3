"""ExactBackupAndRestore: a mid-epoch interruption resumes to the same weights as
an uninterrupted run (oracle: the uninterrupted run, compared bit for bit)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from conftest import snapshot_tree
from test_faults import EPOCHS, FIT, Interrupt, build, data, state

from keras_gates.resume import ExactBackupAndRestore


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_mid_epoch_resume_is_exact(cell, tmp_path):
    x, y = data()
    clean = build(cell)
    clean.fit(x, y, **FIT)
    want = state(clean)

    backup = str(tmp_path / "backup")
    # Saves after every 2nd batch; interrupted before batch 3 of epoch 1:
    # the backup holds batches 0-1 of epoch 1, batch 2 is lost and redone.
    with pytest.raises(RuntimeError, match="interrupted"):
        build(cell).fit(
            x,
            y,
            callbacks=[
                ExactBackupAndRestore(backup, save_freq=2),
                Interrupt(epoch=1, batch=3),
            ],
            **FIT,
        )
    # Interrupted again, in the resumed run, to check the epoch is recorded.
    with pytest.raises(RuntimeError, match="interrupted"):
        build(cell).fit(
            x,
            y,
            callbacks=[
                ExactBackupAndRestore(backup, save_freq=2),
                Interrupt(epoch=2, batch=1),
            ],
            **FIT,
        )
    resumed = build(cell)
    history = resumed.fit(
        x, y, callbacks=[ExactBackupAndRestore(backup, save_freq=2)], **FIT
    )
    assert len(history.history["loss"]) == EPOCHS - 2
    got = state(resumed)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_plain_keras_callback_is_not_exact_mid_epoch(tmp_path):
    """The gap this callback closes (guards the test above against vacuity)."""
    x, y = data()
    clean = build("lstm")
    clean.fit(x, y, **FIT)
    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError):
        build("lstm").fit(
            x,
            y,
            callbacks=[
                keras.callbacks.BackupAndRestore(backup, save_freq=2),
                Interrupt(epoch=1, batch=3),
            ],
            **FIT,
        )
    resumed = build("lstm")
    resumed.fit(
        x, y, callbacks=[keras.callbacks.BackupAndRestore(backup, save_freq=2)], **FIT
    )
    worst = max(
        float(np.max(np.abs(a - b))) for a, b in zip(state(resumed), state(clean))
    )
    assert worst > 1e-3


@pytest.mark.parametrize(
    "interrupted, resumed, named",
    [
        ({"batch_size": 4}, {}, "batch_size=4 in the backup, 8 now"),
        # Same steps per epoch, other batch size: only the batch size tells.
        (
            {"batch_size": 4, "steps_per_epoch": 4},
            {"steps_per_epoch": 4},
            "batch_size=4 in the backup, 8 now",
        ),
        ({"shuffle": True}, {}, "shuffle=True in the backup, False now"),
    ],
    ids=["batch_size", "batch_size_same_steps", "shuffle"],
)
def test_resume_that_cuts_the_data_differently_is_refused(
    interrupted, resumed, named, tmp_path
):
    """Never a silently different resume: the change is named, nothing moves."""
    x, y = data()
    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        build("lstm").fit(
            x,
            y,
            callbacks=[
                ExactBackupAndRestore(backup, save_freq=2),
                Interrupt(epoch=1, batch=3),
            ],
            **{**FIT, **interrupted},
        )
    files = snapshot_tree(tmp_path)
    model = build("lstm")
    weights = [np.asarray(w).copy() for w in model.weights]
    with pytest.raises(ValueError, match="cannot resume the backup") as error:
        model.fit(
            x,
            y,
            callbacks=[ExactBackupAndRestore(backup, save_freq=2)],
            **{**FIT, **resumed},
        )
    assert named in str(error.value)
    assert snapshot_tree(tmp_path) == files
    for got, want in zip(model.weights, weights, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    # With the backup's own arguments it resumes.
    history = build("lstm").fit(
        x,
        y,
        callbacks=[ExactBackupAndRestore(backup, save_freq=2)],
        **{**FIT, **interrupted},
    )
    assert len(history.history["loss"]) == EPOCHS - 1


def test_backup_records_how_the_data_is_cut(tmp_path):
    x, y = data()
    backup = tmp_path / "backup"
    with pytest.raises(RuntimeError, match="interrupted"):
        build("gru").fit(
            x,
            y,
            callbacks=[
                ExactBackupAndRestore(str(backup), save_freq=2),
                Interrupt(epoch=0, batch=3),
            ],
            **FIT,
        )
    record = json.loads((backup / "exact_resume.json").read_text())
    assert record == {"batch_size": 8, "steps_per_epoch": 4, "shuffle": False}
