"""keras_gates against the Keras built-ins after copying weights (lstm.py, gru.py).

The built-ins are an independent implementation of the same maths, with the
same variables: keras.layers.LSTM (blocks i, f, c, o) and
keras.layers.GRU(reset_after=False) (z, r, h; the lecture's o = r and
i = 1 - z). Tolerance: both float32, same ops, so 1e-5.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import as_numpy

import keras_gates

pytestmark = pytest.mark.jax_parity

TOL = dict(rtol=1e-5, atol=1e-5)


def random_keras_layer(kind, units=6, features=4, seed=0, batch=None, **kwargs):
    if kind == "lstm":
        layer = keras.layers.LSTM(units, **kwargs)
    else:
        layer = keras.layers.GRU(units, reset_after=False, **kwargs)
    layer.build((batch, None, features))
    rng = np.random.default_rng(seed)
    layer.set_weights(
        [rng.normal(scale=0.5, size=w.shape) for w in layer.get_weights()]
    )
    return layer


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"go_backwards": True},
        {"use_bias": False},
        {"recurrent_activation": "hard_sigmoid"},
        # Not symmetric (g(-a) != 1 - g(a)): exact too, the GRU stores z.
        {"recurrent_activation": "tanh"},
    ],
    ids=str,
)
def test_from_keras_equals_builtin(kind, options):
    theirs = random_keras_layer(
        kind, return_sequences=True, return_state=True, **options
    )
    ours = keras_gates.from_keras(theirs)
    assert type(ours).__name__ == kind.upper()
    x = np.random.default_rng(1).normal(size=(3, 7, 4)).astype("float32")
    mask = np.array([[0, 0, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 1, 0], [1] * 7], bool)
    for kwargs in ({}, {"mask": mask}):
        want = theirs(x, **kwargs)
        got = ours(x, **kwargs)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(as_numpy(g), as_numpy(w), **TOL)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_to_keras_round_trip(kind):
    layer_class = keras_gates.LSTM if kind == "lstm" else keras_gates.GRU
    ours = layer_class(5, return_sequences=True)
    ours.build((None, None, 3))
    rng = np.random.default_rng(2)
    ours.set_weights([rng.normal(scale=0.5, size=w.shape) for w in ours.get_weights()])
    theirs = keras_gates.to_keras(ours)
    assert isinstance(theirs, keras.layers.LSTM if kind == "lstm" else keras.layers.GRU)
    if kind == "gru":
        assert theirs.cell.reset_after is False
    x = rng.normal(size=(2, 6, 3)).astype("float32")
    np.testing.assert_allclose(as_numpy(theirs(x)), as_numpy(ours(x)), **TOL)
    back = keras_gates.from_keras(theirs)
    for a, b in zip(back.get_weights(), ours.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_from_keras_copies_stateful_state():
    theirs = random_keras_layer("lstm", batch=2, stateful=True)
    x = np.random.default_rng(3).normal(size=(2, 5, 4)).astype("float32")
    theirs(x)  # moves the state away from zero
    ours = keras_gates.from_keras(theirs)
    for a, b in zip(ours.states, theirs.states):
        np.testing.assert_array_equal(as_numpy(a), as_numpy(b))
    np.testing.assert_allclose(as_numpy(ours(x)), as_numpy(theirs(x)), **TOL)


def test_config_is_carried_over():
    theirs = keras.layers.LSTM(
        7,
        dropout=0.25,
        recurrent_dropout=0.1,
        seed=5,
        unit_forget_bias=False,
        name="enc",
    )
    ours = keras_gates.from_keras(theirs)
    assert (ours.units, ours.dropout, ours.recurrent_dropout, ours.seed) == (
        7,
        0.25,
        0.1,
        5,
    )
    assert ours.unit_forget_bias is False and ours.name == "enc"
    assert not ours.built


def test_reset_after_gru_is_refused_with_reason():
    with pytest.raises(ValueError, match="reset_after=True"):
        keras_gates.from_keras(keras.layers.GRU(4))


def test_lstm_without_forget_gate_cannot_go_to_keras():
    with pytest.raises(ValueError, match="forget_gate=False"):
        keras_gates.to_keras(keras_gates.LSTM(4, forget_gate=False))


def test_from_keras_copies_weights_unchanged():
    """The variables are the built-in's: conversion is a copy, both ways."""
    for kind in ("lstm", "gru"):
        theirs = random_keras_layer(kind)
        ours = keras_gates.from_keras(theirs)
        back = keras_gates.to_keras(ours)
        for a, b, c in zip(
            theirs.get_weights(), ours.get_weights(), back.get_weights(), strict=True
        ):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)


def test_wrong_type_is_refused():
    with pytest.raises(TypeError, match="received Dense"):
        keras_gates.from_keras(keras.layers.Dense(3))
    with pytest.raises(TypeError, match="received SimpleRNN"):
        keras_gates.to_keras(keras.layers.SimpleRNN(3))
