"""Bad arguments and inputs: each error names the argument, the expectation and
the value received (where Keras accepts `dropout=1.5`, answers `units="8"`
with a bare TypeError, and crashes in a matmul on a new feature size)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_gates

LAYERS = [keras_gates.LSTM, keras_gates.GRU, keras_gates.LSTMCell, keras_gates.GRUCell]


@pytest.mark.parametrize("layer_class", LAYERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (
            {"units": "8"},
            TypeError,
            r"`units` must be a positive integer; received '8' \(type str\)",
        ),
        ({"units": 0}, ValueError, r"`units` must be a positive integer; received 0"),
        ({"units": -3}, ValueError, r"received -3"),
        ({"units": 2.5}, TypeError, r"received 2.5 \(type float\)"),
        ({"units": True}, TypeError, r"received True \(type bool\)"),
        (
            {"units": 4, "dropout": 1.5},
            ValueError,
            r"`dropout` must be a float in \[0, 1\).*received 1.5",
        ),
        ({"units": 4, "dropout": -0.1}, ValueError, r"`dropout`.*received -0.1"),
        (
            {"units": 4, "recurrent_dropout": 1.0},
            ValueError,
            r"`recurrent_dropout`.*received 1.0",
        ),
        ({"units": 4, "dropout": "0.2"}, TypeError, r"`dropout`.*received '0.2'"),
        (
            {"units": 4, "activation": "tanhh"},
            ValueError,
            r"`activation` could not be resolved.*'tanhh'",
        ),
        (
            {"units": 4, "recurrent_activation": 3},
            ValueError,
            r"`recurrent_activation`.*received 3",
        ),
        (
            {"units": 4, "kernel_initializer": "nope"},
            ValueError,
            r"`kernel_initializer`.*'nope'",
        ),
        (
            {"units": 4, "recurrent_regularizer": "l3"},
            ValueError,
            r"`recurrent_regularizer`.*'l3'",
        ),
        (
            {"units": 4, "bias_constraint": "sometimes"},
            ValueError,
            r"`bias_constraint`.*'sometimes'",
        ),
        (
            {"units": 4, "use_bias": "yes"},
            TypeError,
            r"`use_bias` must be True or False; received 'yes'",
        ),
        ({"units": 4, "seed": -1}, ValueError, r"`seed`.*received -1"),
        ({"units": 4, "seed": "1"}, TypeError, r"`seed`.*received '1'"),
    ],
)
def test_constructor_arguments(layer_class, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        layer_class(**kwargs)


@pytest.mark.parametrize(
    "argument", ["return_sequences", "go_backwards", "stateful", "unroll"]
)
def test_layer_flags_must_be_booleans(argument):
    with pytest.raises(
        TypeError, match=rf"`{argument}` must be True or False; received 'False'"
    ):
        keras_gates.LSTM(4, **{argument: "False"})


def test_lstm_switches_must_be_booleans():
    with pytest.raises(TypeError, match="`forget_gate`"):
        keras_gates.LSTM(4, forget_gate=None)
    with pytest.raises(TypeError, match="`unit_forget_bias`"):
        keras_gates.LSTMCell(4, unit_forget_bias="no")


def built(layer_class, units=4, features=3, **kwargs):
    layer = layer_class(units, **kwargs)
    layer(np.zeros((2, 5, features), "float32"))
    return layer


@pytest.mark.parametrize("layer_class", [keras_gates.LSTM, keras_gates.GRU])
def test_feature_size_change_after_build(layer_class):
    layer = built(layer_class)
    with pytest.raises(
        ValueError, match=r"must have 3 features.*received shape \(2, 5, 4\)"
    ):
        layer(np.zeros((2, 5, 4), "float32"))


@pytest.mark.parametrize("layer_class", [keras_gates.LSTM, keras_gates.GRU])
def test_wrong_rank(layer_class):
    with pytest.raises(ValueError, match="ndim=3"):
        layer_class(4)(np.zeros((2, 5), "float32"))


@pytest.mark.parametrize("layer_class", [keras_gates.LSTM, keras_gates.GRU])
def test_integer_inputs_are_refused(layer_class):
    with pytest.raises(
        TypeError, match=r"floating point.*received dtype int32.*Embedding"
    ):
        layer_class(4)(np.zeros((2, 5, 3), "int32"))


@pytest.mark.parametrize("layer_class", [keras_gates.LSTM, keras_gates.GRU])
def test_mask_of_wrong_shape(layer_class):
    layer = built(layer_class)
    with pytest.raises(
        ValueError,
        match=r"`mask` must have shape \(batch, time\) = \(2, 5\); received shape \(2,",
    ):
        layer(np.zeros((2, 5, 3), "float32"), mask=np.ones((2, 4), bool))


def test_initial_state_count_and_shape():
    lstm = built(keras_gates.LSTM)
    x = np.zeros((2, 5, 3), "float32")
    with pytest.raises(
        ValueError, match=r"`initial_state` must be a list of 2 tensor\(s\).*received 1"
    ):
        lstm(x, initial_state=[np.zeros((2, 4), "float32")])
    with pytest.raises(
        ValueError,
        match=r"`initial_state\[1\]` must have shape.*\(2, 4\); received shape \(2, 5",
    ):
        lstm(
            x, initial_state=[np.zeros((2, 4), "float32"), np.zeros((2, 5), "float32")]
        )
    gru = built(keras_gates.GRU)
    with pytest.raises(ValueError, match=r"list of 1 tensor"):
        gru(x, initial_state=[np.zeros((2, 4), "float32")] * 2)


def test_stateful_batch_size_mismatch():
    layer = keras_gates.GRU(4, stateful=True)
    layer.build((2, None, 3))
    with pytest.raises(ValueError, match=r"batch size"):
        layer(np.zeros((3, 5, 3), "float32"))


def test_errors_leave_the_layer_usable():
    layer = built(keras_gates.LSTM)
    with pytest.raises(ValueError):
        layer(np.zeros((2, 5, 9), "float32"))
    assert keras.ops.shape(layer(np.zeros((2, 5, 3), "float32"))) == (2, 4)


def test_keras_only_arguments_are_accepted_where_they_mean_the_same():
    """A literal swap keeps working: implementation, use_cudnn (the LSTM's
    cuDNN path: tests/test_cudnn.py), GRU(reset_after=False); what cannot be
    honoured is refused by name."""
    keras_gates.LSTM(4, use_cudnn=False, implementation=2)
    keras_gates.LSTM(4, use_cudnn="auto")
    keras_gates.GRU(4, reset_after=False, use_cudnn=False, implementation=1)
    keras_gates.LSTMCell(4, implementation=2)
    with pytest.raises(ValueError, match=r"`use_cudnn=True` cannot be honoured"):
        keras_gates.LSTM(4, use_cudnn=True, forget_gate=False)
    with pytest.raises(ValueError, match=r"`use_cudnn` must be.*received 'yes'"):
        keras_gates.LSTM(4, use_cudnn="yes")
    with pytest.raises(ValueError, match=r"`reset_after` must be False.*received"):
        keras_gates.GRU(4, reset_after=True)
    with pytest.raises(ValueError, match=r"`use_cudnn` must be 'auto' or False"):
        keras_gates.GRU(4, use_cudnn=True)
