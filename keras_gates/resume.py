"""Exact resumption of interrupted training, mid-epoch included.

``keras.callbacks.BackupAndRestore`` (Keras 3.15) saves every `save_freq`
batches and writes the last batch done into ``training_metadata.json``, but
on restart it replays the interrupted epoch from its first batch on top of
the mid-epoch weights, so the resumed run differs from an uninterrupted one
(measured 0.11 apart even without dropout). It also restarts its own epoch
counter at 0 after a resume, so a second interruption would record epoch 0.

``ExactBackupAndRestore`` keeps Keras's files and adds the missing part: in
the first resumed epoch, the batches the backup already holds are run and
then undone (every model and optimizer variable, random seed states
included, is put back as it was before the batch), so training continues
from exactly where the backup was taken, as long as the data order is
reproducible (``shuffle=False``, or a seeded shuffle).

What makes "the batches the backup already holds" the same batches is the
way ``fit`` cuts the data: its batch size, steps per epoch and shuffle. The
callback records them beside Keras's files (``exact_resume.json``) and
refuses a resume that changes any of them, naming the change: a resume at
batch size 8 of a backup taken at 4 would count 8 samples per undone batch
as done and skip the rest of them, silently.

Keras gives a callback no public way to do some of this; the private Keras it
uses (the running ``fit``'s arguments, Keras's progress file and counters, the
model's first epoch) goes through ``keras_gates.keras_internals``, one function
per touch, each tested on its own.
"""

from __future__ import annotations

import json
import os
from typing import Any

import keras

from keras_gates import keras_internals

# Beside Keras's training_metadata.json in the backup folder.
RECORD_FILE = "exact_resume.json"


def _is_array_data(x: Any) -> bool:
    """Arrays (NumPy, tensors, DataFrames), which fit batches and shuffles
    itself, as opposed to a dataset or generator, which batches itself."""
    if isinstance(x, (list, tuple)) and x:
        return _is_array_data(x[0])
    if isinstance(x, dict) and x:
        return _is_array_data(next(iter(x.values())))
    return hasattr(x, "shape")


def data_order_record(model: keras.Model, steps: int | None) -> dict[str, Any]:
    """What decides which samples make up each batch of this ``fit``.

    ``batch_size`` is Keras's default 32 where ``fit`` batches arrays without
    one, None where the data batches itself (a dataset, a generator: its
    batch size is its own); ``shuffle`` is None where Keras ignores it (the
    same data). Unknown (outside ``fit``): every entry None.
    """
    arguments = keras_internals.running_fit_arguments(model) or {}
    arrays = _is_array_data(arguments.get("x"))
    batch_size = arguments.get("batch_size")
    if batch_size is None and arrays:
        batch_size = 32
    shuffle = arguments.get("shuffle") if arrays else None
    return {
        "batch_size": None if batch_size is None else int(batch_size),
        "steps_per_epoch": None if steps is None else int(steps),
        "shuffle": shuffle if isinstance(shuffle, (bool, str, type(None))) else None,
    }


class ExactBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` whose mid-epoch resume is exact.

    Args:
        backup_dir: Folder for the backup (as in Keras).
        save_freq: ``"epoch"`` or an integer number of batches (as in Keras).
        double_checkpoint, delete_checkpoint: As in Keras.

    Raises:
        ValueError: At the start of ``fit``, when the backup was taken with
            another batch size, number of steps per epoch or shuffle than
            this run's (the message names each change); nothing is loaded.

    Example:

    >>> callback = keras_gates.ExactBackupAndRestore("backup", save_freq=50)
    >>> model.fit(x, y, shuffle=False, callbacks=[callback])  # doctest: +SKIP
    """

    def on_train_begin(self, logs=None):
        self._batches_to_undo = 0
        self._undo_epoch = None
        self._before_batch = None
        progress = keras_internals.read_backup_progress(self.backup_dir)
        record = data_order_record(self.model, (self.params or {}).get("steps"))
        if progress is not None:  # there is something to resume
            self._check_same_data_order(record)
        os.makedirs(self.backup_dir, exist_ok=True)
        with open(os.path.join(self.backup_dir, RECORD_FILE), "w") as file:
            json.dump(record, file)
        if isinstance(self.save_freq, int) and progress is not None:
            # With an integer save_freq every save is made at a batch's end:
            # batches 0..batch of that epoch are already in the weights.
            self._undo_epoch, last_batch = progress
            self._batches_to_undo = last_batch + 1
        super().on_train_begin(logs)
        steps = (self.params or {}).get("steps")
        if self._batches_to_undo and steps and self._batches_to_undo >= steps:
            # The backup was taken after the epoch's last batch: start at the
            # next epoch instead of replaying and undoing a whole one.
            keras_internals.set_initial_epoch(self.model, self._undo_epoch + 1)
            self._batches_to_undo, self._undo_epoch = 0, None

    def on_epoch_begin(self, epoch, logs=None):
        # Keras's counter restarts at 0 after a resume; keep it on the epoch.
        keras_internals.set_backup_epoch(self, epoch)
        self._undoing = epoch == self._undo_epoch and self._batches_to_undo > 0

    def on_train_batch_begin(self, batch, logs=None):
        if self._undoing and batch < self._batches_to_undo:
            self._before_batch = [
                keras.ops.copy(v.value) for v in self._training_variables()
            ]

    def on_train_batch_end(self, batch, logs=None):
        if self._before_batch is not None:
            for variable, value in zip(self._training_variables(), self._before_batch):
                variable.assign(value)
            self._before_batch = None
            if batch + 1 == self._batches_to_undo:
                self._undoing = False
            # This batch is already in the backup: nothing new to save, but
            # Keras's batch counters move on so the next save comes on time.
            keras_internals.count_batch_without_saving(self, batch)
            return
        super().on_train_batch_end(batch, logs)

    def _check_same_data_order(self, record: dict[str, Any]) -> None:
        path = os.path.join(self.backup_dir, RECORD_FILE)
        if not os.path.exists(path):
            return  # a backup from keras.callbacks.BackupAndRestore: no record
        with open(path) as file:
            recorded = json.load(file)
        changes = [
            f"{name}={recorded.get(name)!r} in the backup, {value!r} now"
            for name, value in record.items()
            if name in recorded and recorded[name] != value
        ]
        if changes:
            raise ValueError(
                f"ExactBackupAndRestore cannot resume the backup in "
                f"'{self.backup_dir}' exactly: the data is cut into batches "
                f"differently ({'; '.join(changes)}), so the batches it already "
                "holds are not this run's first batches and samples would be "
                "skipped or repeated. Call fit with the backup's values, or "
                "delete the backup folder to start over."
            )

    def _training_variables(self):
        """Every variable a training step changes, random seed states included."""
        variables = list(self.model.variables)
        if self.model.optimizer is not None:
            variables += list(self.model.optimizer.variables)
        seen, unique = set(), []
        for variable in variables:
            if id(variable) not in seen:
                seen.add(id(variable))
                unique.append(variable)
        return unique
