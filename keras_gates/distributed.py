"""Training under `tf.distribute` strategies with the TensorFlow backend, `fit`-style.

Keras 3's `Model.fit` does not run under
`tf.distribute.MultiWorkerMirroredStrategy`: it fails before the first step
with ``ValueError: Attempt to convert a value (PerReplica:{...}) with an
unsupported type ... to a Tensor`` (keras-team/keras#20585, open since TF 2.16;
the same with `keras.layers.LSTM` and with a Dense-only model). The model's
own `train_step` does run inside `strategy.run`, so this module keeps every
piece of Keras that `fit` would use (the compiled loss, metrics and optimizer,
`train_step`, callbacks, `History`) and only replaces the loop:

    for epoch in range(initial_epoch, epochs):      # initial_epoch: from the checkpoint
        for batch in strategy.distribute(dataset):  # each replica gets its share
            logs = mean over replicas of strategy.run(model.train_step, batch)
        save a checkpoint (the chief into checkpoint_dir)

The gradient of a step is the sum over replicas of each replica's gradient of
(sum of its examples' losses) / (global batch size): Keras's losses divide by
the number of replicas in sync and Keras's optimizer sums the gradients over
replicas. Two replicas therefore compute what one device computes on the
global batch, up to the order of float additions.

Checkpoints are `tf.train.Checkpoint`s of every model variable (dropout seed
states included, so a resumed run draws the same masks), every optimizer
variable and the epoch, kept by `tf.train.CheckpointManager`. Every worker
restores the latest one from the shared `checkpoint_dir`; every worker saves
(saving may need collective ops), but only the chief's copy goes to
`checkpoint_dir`, the others write to a local scratch folder that is deleted
(tf.distribute's own convention). Resumption is at epoch boundaries, exact as
long as each epoch's data are the same on a rerun (no unseeded shuffle).

Example (on each worker; TF_CONFIG names the cluster and this worker):

>>> strategy = tf.distribute.MultiWorkerMirroredStrategy()  # doctest: +SKIP
>>> with strategy.scope():  # doctest: +SKIP
...     model = keras.Sequential([keras.Input((None, 8)), keras_gates.LSTM(64),
...                               keras.layers.Dense(1)])
...     model.compile("adam", "mse")
>>> keras_gates.distributed.fit(model, global_batches, epochs=10,
...     strategy=strategy, checkpoint_dir="/shared/ckpt")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence

import keras
import tensorflow as tf


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process is the one that writes checkpoints.

    The `chief` task if the cluster has one, else worker 0; a strategy without
    a cluster (one machine) is always the chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def train_step(
    model: keras.Model, strategy: tf.distribute.Strategy | None = None
) -> Callable:
    """A `tf.function` that runs `model.train_step` on every replica.

    Args:
        model: A compiled Keras model built in `strategy.scope()`.
        strategy: The strategy; by default the current one.

    Returns:
        A function of one distributed batch (an element of
        `strategy.experimental_distribute_dataset(...)`) that trains one step
        and returns `model.train_step`'s logs, each averaged over all replicas
        of all workers (so every worker reports the same numbers).
    """
    _check_compiled(model)
    strategy = strategy or tf.distribute.get_strategy()

    # autograph=False, as in Keras's own train function: Keras's Python
    # branches are decided while tracing, not turned into tf.cond (with two
    # replicas in one process autograph's conds fail to run).
    @tf.function(autograph=False)
    def step(batch):
        logs = strategy.run(model.train_step, args=(batch,))
        return {
            name: strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
            for name, value in logs.items()
        }

    return step


def fit(
    model: keras.Model,
    dataset: tf.data.Dataset | Callable,
    epochs: int,
    *,
    strategy: tf.distribute.Strategy | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    max_to_keep: int = 2,
    delete_checkpoint: bool = True,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    verbose: int | str = "auto",
) -> keras.callbacks.History:
    """Train `model` like `model.fit(dataset, epochs=epochs)` under `strategy`.

    Args:
        model: A compiled Keras model built in `strategy.scope()`.
        dataset: One epoch of data, replayed each epoch: a `tf.data.Dataset`
            of global batches `(x, y)` that the strategy splits among the
            replicas (every worker reads the whole dataset; tf.distribute
            gives each its share), or a function `input_context -> Dataset`
            of this worker's per-replica batches
            (`strategy.distribute_datasets_from_function`). Every worker must
            see the same number of batches.
        epochs: Index of the epoch to stop at, as in `Model.fit`.
        strategy: The strategy; by default the current one.
        checkpoint_dir: A folder every worker can read. At the start, the
            latest checkpoint in it is restored and training continues from
            the epoch after it; after each epoch a checkpoint is saved. None:
            no checkpoints.
        max_to_keep: How many checkpoints the chief keeps.
        delete_checkpoint: Remove `checkpoint_dir` when training ends, as
            `keras.callbacks.BackupAndRestore` does (the checkpoints are for
            resuming; save the trained model yourself). False keeps them.
        callbacks: Keras callbacks (History and, unless `verbose=0`, a
            progress bar are added as `fit` does). They are called with the
            logs averaged over all replicas; `on_epoch_end` comes after the
            epoch's checkpoint is saved.
        verbose: 0, 1, 2 or "auto" (1), as in `Model.fit`.

    Returns:
        The `keras.callbacks.History` of the epochs run in this call.
    """
    _check_compiled(model)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"`epochs` must be a positive int; received: {epochs!r}")
    if not isinstance(dataset, tf.data.Dataset) and not callable(dataset):
        raise TypeError(
            "`dataset` must be a tf.data.Dataset of global batches or a function "
            "input_context -> tf.data.Dataset; received: "
            f"{type(dataset).__name__}"
        )
    strategy = strategy or tf.distribute.get_strategy()
    if isinstance(dataset, tf.data.Dataset):
        distributed = strategy.experimental_distribute_dataset(dataset)
    else:
        distributed = strategy.distribute_datasets_from_function(dataset)
    _build_state(model, strategy, distributed)
    checkpoints = _Checkpoints(model, strategy, checkpoint_dir, max_to_keep)
    initial_epoch = checkpoints.restore()

    verbose = 1 if verbose == "auto" else verbose
    callback_list = keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=verbose != 0,
        model=model,
        verbose=verbose,
        epochs=epochs,
    )
    step = train_step(model, strategy)
    model.stop_training = False
    callback_list.on_train_begin()
    logs = {}
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for index, batch in enumerate(distributed):
            callback_list.on_train_batch_begin(index)
            logs = {name: float(value) for name, value in step(batch).items()}
            callback_list.on_train_batch_end(index, logs)
        checkpoints.save(epoch + 1)
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    if delete_checkpoint:
        checkpoints.delete()
    return model.history


def _check_compiled(model) -> None:
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "keras_gates.distributed runs tf.distribute strategies and needs the "
            "TensorFlow backend (KERAS_BACKEND=tensorflow; with JAX use "
            "keras.distribution.DataParallel and model.fit); received the "
            f"backend {keras.backend.backend()!r}"
        )
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`model` must be a keras.Model; received: {type(model).__name__}"
        )
    if getattr(model, "optimizer", None) is None:
        raise ValueError(
            "`model` must be compiled (model.compile(optimizer, loss)) before "
            f"training; received the uncompiled model {model.name!r}"
        )


def _build_state(model, strategy, distributed) -> None:
    """Create the optimizer's, loss trackers' and metrics' variables now.

    They must exist before a checkpoint is restored, and must not be created
    inside the first traced step: with several replicas in one process,
    variables created there fail to initialize ("You must feed a value for
    placeholder"). `fit` does the same before its loop."""
    first = next(iter(distributed))
    local = strategy.experimental_local_results(first)[0]
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(local)
    with strategy.scope():
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        y_pred = model(x, training=False)  # no dropout: seed states unchanged
        model.compute_loss(x, y, y_pred, sample_weight, training=False)
        model.compute_metrics(x, y, y_pred, sample_weight)
    model.reset_metrics()


class _Checkpoints:
    """tf.train.CheckpointManager over the model's and optimizer's variables
    and the epoch; the chief writes to `directory`, the others to scratch."""

    def __init__(self, model, strategy, directory, max_to_keep):
        self.directory = None if directory is None else os.fspath(directory)
        if self.directory is None:
            return
        self.chief = is_chief(strategy)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        # Lists of variables rather than the model: a Keras 3 model does not
        # expose its variables to tf.train.Checkpoint's object graph (only the
        # optimizer's trainable ones would be saved, not the seed states).
        self.checkpoint = tf.train.Checkpoint(
            model=list(model.variables),
            optimizer=list(model.optimizer.variables),
            epoch=self.epoch,
        )
        self.max_to_keep = max_to_keep
        self.manager = None
        if self.chief:
            self.manager = tf.train.CheckpointManager(
                self.checkpoint, self.directory, max_to_keep=max_to_keep
            )

    def restore(self) -> int:
        if self.directory is None:
            return 0
        latest = tf.train.latest_checkpoint(self.directory)
        if latest is None:
            return 0
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        return int(self.epoch.numpy())

    def delete(self) -> None:
        if self.directory is not None and self.chief:
            shutil.rmtree(self.directory, ignore_errors=True)

    def save(self, epoch: int) -> None:
        if self.directory is None:
            return
        self.epoch.assign(epoch)
        if self.chief:
            self.manager.save(checkpoint_number=epoch)
            return
        scratch = tempfile.mkdtemp(prefix="keras_gates-checkpoint-")
        try:
            tf.train.CheckpointManager(self.checkpoint, scratch, 1).save(epoch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
