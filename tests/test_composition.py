"""The layers inside what users build: Bidirectional, TimeDistributed, stacked
cells, mixed precision, jit_compile, MirroredStrategy. Oracles: the NumPy
reference and the plain (float32, eager, one-device) run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from conftest import ATOL, RTOL, VARIANTS, as_numpy, make_layer, reference

import keras_gates


def test_bidirectional_equals_two_reference_runs(variant):
    forward = make_layer(variant, 4, 3, return_sequences=True)
    bidi = keras.layers.Bidirectional(forward, merge_mode="concat")
    x = np.random.default_rng(0).normal(size=(2, 6, 3)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]], bool)
    bidi(x)  # builds the backward copy (rebuilt from get_config)
    rng = np.random.default_rng(5)
    bidi.backward_layer.cell.set_weights(
        [rng.normal(scale=0.5, size=w.shape) for w in bidi.backward_layer.cell.weights]
    )
    assert type(bidi.backward_layer) is type(forward)
    got = as_numpy(bidi(x, mask=mask))
    # Bidirectional forces zero_output_for_mask=True when returning sequences.
    common = dict(mask=mask, zero_output_for_mask=True)
    fwd, _, _, _ = reference(variant, bidi.forward_layer, x, **common)
    bwd, _, _, _ = reference(
        variant, bidi.backward_layer, x, go_backwards=True, **common
    )
    np.testing.assert_allclose(got[..., :4], fwd, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got[..., 4:], bwd[:, ::-1], rtol=RTOL, atol=ATOL)


def test_time_distributed_over_subsequences(variant):
    layer = make_layer(variant, 4, 3)
    x = np.random.default_rng(1).normal(size=(2, 3, 5, 3)).astype("float32")
    got = as_numpy(keras.layers.TimeDistributed(layer)(x))  # (2, 3, 4)
    _, want, _, _ = reference(variant, layer, x.reshape(6, 5, 3))
    np.testing.assert_allclose(got.reshape(6, 4), want, rtol=RTOL, atol=ATOL)


def test_stacked_cells_equal_two_reference_runs():
    first, second = keras_gates.LSTMCell(5), keras_gates.GRUCell(4)
    layer = keras.layers.RNN([first, second], return_sequences=True)
    x = np.random.default_rng(2).normal(size=(2, 6, 3)).astype("float32")
    got = as_numpy(layer(x))
    from reference import run

    hidden, _, _, _ = run("lstm", x, [as_numpy(w) for w in first.weights])
    want, _, _, _ = run("gru", hidden, [as_numpy(w) for w in second.weights])
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_stacked_cells_with_dropout_train_as_the_builtins():
    """keras.layers.RNN over stacked keras_gates cells with dropout trains as the
    same stack of built-in cells (GRU with reset_after=False) with the same
    weights and seeds: the RNN draws the same masks, once per batch, for our
    cells too (keras_internals.dropout_cell_marker). Losses and weights agree
    to float32 rounding over 2 epochs of 2 batches. The LSTM cell has
    recurrent dropout too: Keras's cells then draw one mask per gate block
    (implementation 1), and so do keras_gates' cells."""

    def stack(lstm_cell, gru_cell):
        return keras.Sequential(
            [
                keras.Input((None, 2)),
                keras.layers.RNN([lstm_cell, gru_cell]),
                keras.layers.Dense(1),
            ]
        )

    ours = stack(
        keras_gates.LSTMCell(4, dropout=0.3, recurrent_dropout=0.2, seed=1),
        keras_gates.GRUCell(3, dropout=0.2, seed=2),
    )
    builtin = stack(
        keras.layers.LSTMCell(4, dropout=0.3, recurrent_dropout=0.2, seed=1),
        keras.layers.GRUCell(3, dropout=0.2, seed=2, reset_after=False),
    )
    builtin.set_weights(ours.get_weights())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5, 2)).astype("float32")
    y = rng.normal(size=(8, 1)).astype("float32")
    losses = []
    for model in (ours, builtin):
        model.compile(keras.optimizers.SGD(0.1), "mse")
        history = model.fit(x, y, epochs=2, batch_size=4, shuffle=False, verbose=0)
        losses.append(history.history["loss"])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    for got, want in zip(ours.get_weights(), builtin.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Dropout was on: a training-mode pass is not the inference pass.
    assert not np.allclose(as_numpy(ours(x, training=True)), as_numpy(ours(x)))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_training_step_under_mixed_precision(variant, policy):
    layer_class, _, extra = VARIANTS[variant]
    x = np.random.default_rng(3).normal(size=(4, 6, 3)).astype("float32")
    y = np.random.default_rng(4).normal(size=(4, 1)).astype("float32")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        layer = layer_class(5, **extra, dropout=0.1, return_state=True)
        inputs = keras.Input((None, 3))
        outputs, *states = layer(inputs)
        model = keras.Model(inputs, keras.layers.Dense(1, dtype="float32")(outputs))
        model.compile(keras.optimizers.Adam(1e-2), "mse")
        before = [as_numpy(w).copy() for w in layer.weights]
        loss = model.train_on_batch(x, y)
        assert np.isfinite(loss)
        assert all(w.dtype == "float32" for w in layer.weights)  # variables stay fp32
        assert keras.backend.standardize_dtype(outputs.dtype) == policy.split("_")[1]
        after = [as_numpy(w) for w in layer.weights]
        assert any(not np.array_equal(a, b) for a, b in zip(before, after))
        # Half-precision forward stays close to the float32 oracle.
        got = as_numpy(layer(x)[0]).astype("float32")
        _, want, _, _ = reference(variant, layer, x)
        tol = 2e-2 if policy == "mixed_float16" else 6e-2
        np.testing.assert_allclose(got, want, atol=tol)
    finally:
        keras.config.set_dtype_policy(previous)


def test_jit_compiled_training_equals_eager(variant):
    layer_class, _, extra = VARIANTS[variant]
    x = np.random.default_rng(5).normal(size=(4, 6, 3)).astype("float32")
    y = np.random.default_rng(6).normal(size=(4, 1)).astype("float32")
    losses = {}
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((6, 3)), layer_class(5, **extra), keras.layers.Dense(1)]
        )
        model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=jit)
        losses[jit] = [model.train_on_batch(x, y) for _ in range(3)]
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, keras_gates

    dropout = sys.argv[1] == "dropout"
    rates = dict(dropout=0.3, recurrent_dropout=0.3) if dropout else {}

    def train(strategy):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = keras.Sequential([
                keras.Input((6, 3)),
                keras_gates.LSTM(5, return_sequences=True, seed=1, **rates),
                keras_gates.GRU(4, seed=2, **rates),
                keras.layers.Dense(1),
            ])
            model.compile(keras.optimizers.SGD(0.1), "mse")
        rng = np.random.default_rng(0)
        x = rng.normal(size=(16, 6, 3)).astype("float32")
        y = rng.normal(size=(16, 1)).astype("float32")
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        seeds = [np.asarray(l.cell.seed_generator.state) for l in model.layers[:2]]
        return [np.asarray(w) for w in model.weights], seeds

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    one, one_seeds = train(tf.distribute.OneDeviceStrategy("/cpu:0"))
    two, two_seeds = train(mirrored)
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(one, two))
    if not dropout:
        assert worst < 1e-5, worst
    else:
        # Same number of mask draws, both replicas in step, and deterministic;
        # each replica draws its half-batch masks from the same seed state, so
        # the masks differ from one device's full-batch draw: not equal.
        again, _ = train(mirrored)
        assert all(np.array_equal(a, b) for a, b in zip(one_seeds, two_seeds))
        assert all(np.isfinite(w).all() for w in two)
        assert all(np.array_equal(a, b) for a, b in zip(two, again))
    print("OK", worst)
    """
)


@pytest.mark.parametrize("dropout", ["no_dropout", "dropout"])
def test_mirrored_strategy_on_two_cpus(dropout):
    """Two logical CPU devices must be set before TF starts: a fresh process.
    Without dropout two replicas equal one device; with it, training is
    deterministic and keeps the replicas' random states in step."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, dropout],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "OK" in result.stdout
