"""keras_gates.distributed in one process: the loop against Keras's own `fit`,
checkpoints, resumption and who writes them.

The multi-worker runs (MultiWorkerMirroredStrategy in two processes) are in
tests/test_multi_worker.py.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_gates

if keras.backend.backend() != "tensorflow":
    pytest.skip(
        "keras_gates.distributed is for the TensorFlow backend", allow_module_level=True
    )

import tensorflow as tf  # noqa: E402

from keras_gates import distributed  # noqa: E402

BATCH = 8
# keras.Model.fit compiles the step with XLA where it can (jit_compile="auto"),
# this loop does not: float rounding apart after a few steps.
FIT_ATOL = 1e-6


def make_model(dropout=0.0, seed=3):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((5, 3)),
            keras_gates.LSTM(4, dropout=dropout),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.Adam(0.01), "mse", metrics=["mae"])
    return model


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4 * BATCH, 5, 3)).astype("float32")
    y = rng.normal(size=(4 * BATCH, 1)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)


def assert_same_weights(first, second, atol=0.0):
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        if atol:
            np.testing.assert_allclose(a, b, atol=atol, rtol=0)
        else:
            np.testing.assert_array_equal(a, b)


def test_fit_trains_as_keras_fit():
    keras_model, ours = make_model(), make_model()
    expected = keras_model.fit(data(), epochs=3, shuffle=False, verbose=0).history
    history = distributed.fit(ours, data(), 3, verbose=0)
    assert sorted(history.history) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(history.history[name], expected[name], atol=FIT_ATOL)
    assert_same_weights(ours, keras_model, atol=FIT_ATOL)


def test_fit_accepts_a_per_replica_dataset_function():
    by_dataset, by_function = make_model(), make_model()
    distributed.fit(by_dataset, data(), 2, verbose=0)
    distributed.fit(by_function, lambda context: data(), 2, verbose=0)
    assert_same_weights(by_dataset, by_function)


def test_resumed_run_ends_with_the_uninterrupted_weights(tmp_path):
    # Dropout on: the seed states are in the checkpoint, or the masks differ.
    uninterrupted = make_model(dropout=0.3)
    distributed.fit(uninterrupted, data(), 4, verbose=0)

    first = make_model(dropout=0.3)
    distributed.fit(
        first, data(), 2, checkpoint_dir=tmp_path, delete_checkpoint=False, verbose=0
    )
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")
    resumed = make_model(dropout=0.3)  # a fresh process: fresh weights
    history = distributed.fit(resumed, data(), 4, checkpoint_dir=tmp_path, verbose=0)
    assert history.epoch == [2, 3]
    assert_same_weights(resumed, uninterrupted)
    assert not tmp_path.exists()  # delete_checkpoint=True: removed at the end


def test_only_the_chief_writes_but_every_worker_resumes(tmp_path, monkeypatch):
    chief = make_model()
    distributed.fit(
        chief, data(), 1, checkpoint_dir=tmp_path, delete_checkpoint=False, verbose=0
    )
    written = sorted(p.name for p in tmp_path.iterdir())

    monkeypatch.setattr(distributed, "is_chief", lambda strategy: False)
    worker = make_model()
    history = distributed.fit(worker, data(), 3, checkpoint_dir=tmp_path, verbose=0)
    assert history.epoch == [1, 2]  # resumed from the chief's epoch-1 checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == written  # nothing new


def test_callbacks_can_stop_training():
    model = make_model()

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    history = distributed.fit(
        model, data(), 5, callbacks=[StopAfterFirstEpoch()], verbose=0
    )
    assert history.epoch == [0]


def resolver(task_type, task_id, jobs):
    cluster = tf.train.ClusterSpec(
        {job: ["localhost:1"] * n for job, n in jobs.items()}
    )
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        cluster, task_type=task_type, task_id=task_id
    )


@pytest.mark.parametrize(
    "task_type, task_id, jobs, expected",
    [
        ("worker", 0, {"worker": 2}, True),
        ("worker", 1, {"worker": 2}, False),
        ("chief", 0, {"chief": 1, "worker": 2}, True),
        ("worker", 0, {"chief": 1, "worker": 2}, False),
    ],
)
def test_is_chief(task_type, task_id, jobs, expected):
    class Strategy:
        cluster_resolver = resolver(task_type, task_id, jobs)

    assert distributed.is_chief(Strategy()) is expected
    assert distributed.is_chief(tf.distribute.get_strategy())  # one machine


def uncompiled():
    return keras.Sequential([keras.Input((5, 3)), keras_gates.LSTM(4)])


@pytest.mark.parametrize(
    "arguments, error, words",
    [
        ({"model": "not a model"}, TypeError, "`model` must be a keras.Model"),
        ({"model": uncompiled}, ValueError, "`model` must be compiled"),
        ({"epochs": 0}, ValueError, "`epochs` must be a positive int; received: 0"),
        ({"dataset": np.zeros((4, 5, 3))}, TypeError, "received: ndarray"),
    ],
)
def test_bad_arguments_are_named(arguments, error, words):
    call = {"model": make_model(), "dataset": data(), "epochs": 1, **arguments}
    if call["model"] is uncompiled:
        call["model"] = call["model"]()
    with pytest.raises(error, match=words.replace("`", ".")):
        distributed.fit(call["model"], call["dataset"], call["epochs"], verbose=0)
