"""keras_gates.LSTM / GRU against the NumPy oracle (tests/reference.py).

Tolerances: ATOL/RTOL in conftest.py (float32 layer, float64 oracle).
These tests are re-run under KERAS_BACKEND=jax by tests/test_backends.py.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import ATOL, RTOL, as_numpy, make_layer, reference

pytestmark = pytest.mark.jax_parity

SHAPES = [  # (batch, time, features, units)
    (1, 1, 1, 1),
    (2, 5, 3, 4),
    (3, 12, 7, 16),
]

MASKS = {
    "right_padding": [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]],
    "left_padding": [[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]],
    "gaps": [[1, 0, 1, 0, 1, 1], [0, 1, 1, 0, 0, 1], [1, 1, 0, 1, 0, 0]],
    "all_masked_row": [[0, 0, 0, 0, 0, 0], [1, 1, 0, 1, 1, 1], [1, 0, 1, 1, 0, 1]],
}


def random_inputs(batch, time, features, seed=1):
    return (
        np.random.default_rng(seed)
        .normal(size=(batch, time, features))
        .astype("float32")
    )


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_sequences_equal_reference(variant, shape):
    batch, time, features, units = shape
    layer = make_layer(
        variant, units, features, return_sequences=True, return_state=True
    )
    x = random_inputs(batch, time, features)
    outputs, *states = layer(x)
    want_outputs, _, want_states, _ = reference(variant, layer, x)
    np.testing.assert_allclose(as_numpy(outputs), want_outputs, rtol=RTOL, atol=ATOL)
    assert len(states) == len(want_states)
    for got, want in zip(states, want_states):
        np.testing.assert_allclose(as_numpy(got), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("mask_name", sorted(MASKS))
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("zero_output_for_mask", [False, True])
def test_masks_equal_reference(variant, mask_name, go_backwards, zero_output_for_mask):
    mask = np.array(MASKS[mask_name], bool)
    x = random_inputs(3, 6, 4)
    layer = make_layer(
        variant,
        5,
        4,
        return_sequences=True,
        return_state=True,
        go_backwards=go_backwards,
        zero_output_for_mask=zero_output_for_mask,
    )
    outputs, *states = layer(x, mask=mask)
    want_outputs, _, want_states, _ = reference(
        variant,
        layer,
        x,
        mask=mask,
        go_backwards=go_backwards,
        zero_output_for_mask=zero_output_for_mask,
    )
    np.testing.assert_allclose(as_numpy(outputs), want_outputs, rtol=RTOL, atol=ATOL)
    for got, want in zip(states, want_states):
        np.testing.assert_allclose(as_numpy(got), want, rtol=RTOL, atol=ATOL)


def test_last_output_with_mask_equals_reference(variant):
    mask = np.array(MASKS["gaps"], bool)
    x = random_inputs(3, 6, 4)
    layer = make_layer(variant, 5, 4)
    _, want_last, _, _ = reference(variant, layer, x, mask=mask)
    np.testing.assert_allclose(
        as_numpy(layer(x, mask=mask)), want_last, rtol=RTOL, atol=ATOL
    )


def test_embedding_mask_reaches_layer(variant):
    """A mask made by Embedding(mask_zero=True) is honoured (left padding)."""
    tokens = np.array([[0, 0, 3, 4], [5, 6, 7, 8]])
    embedding = keras.layers.Embedding(10, 3, mask_zero=True)
    layer = make_layer(variant, 4, 3)
    inputs = keras.Input((None,), dtype="int32")
    model = keras.Model(inputs, layer(embedding(inputs)))
    x = as_numpy(embedding(tokens))
    _, want_last, _, _ = reference(variant, layer, x, mask=tokens != 0)
    np.testing.assert_allclose(as_numpy(model(tokens)), want_last, rtol=RTOL, atol=ATOL)


def test_initial_state_equals_reference(variant):
    x = random_inputs(2, 5, 3)
    layer = make_layer(variant, 4, 3, return_sequences=True)
    rng = np.random.default_rng(7)
    initial = [rng.normal(size=(2, 4)).astype("float32") for _ in layer.state_size]
    got = layer(x, initial_state=initial)
    want, _, _, _ = reference(variant, layer, x, initial_state=initial)
    np.testing.assert_allclose(as_numpy(got), want, rtol=RTOL, atol=ATOL)


def test_stateful_over_two_batches_equals_one_long_sequence(variant):
    x = random_inputs(2, 8, 3)
    layer = make_layer(variant, 4, 3, batch=2, stateful=True, return_sequences=True)
    first = as_numpy(layer(x[:, :5]))
    second = as_numpy(layer(x[:, 5:]))
    want, _, _, _ = reference(variant, layer, x)
    np.testing.assert_allclose(
        np.concatenate([first, second], 1), want, rtol=RTOL, atol=ATOL
    )
    layer.reset_state()
    again = as_numpy(layer(x[:, :5]))
    np.testing.assert_allclose(again, want[:, :5], rtol=RTOL, atol=ATOL)


def test_unroll_equals_reference(variant):
    x = random_inputs(2, 6, 3)
    layer = make_layer(variant, 4, 3, unroll=True, return_sequences=True)
    want, _, _, _ = reference(variant, layer, x)
    np.testing.assert_allclose(as_numpy(layer(x)), want, rtol=RTOL, atol=ATOL)


def test_no_bias_equals_reference(variant):
    x = random_inputs(2, 6, 3)
    layer = make_layer(variant, 4, 3, use_bias=False)
    assert len(layer.cell.weights) == 2
    _, want_last, _, _ = reference(variant, layer, x)
    np.testing.assert_allclose(as_numpy(layer(x)), want_last, rtol=RTOL, atol=ATOL)


def test_cell_in_rnn_equals_step_by_step(variant):
    """keras.layers.RNN(cell) equals calling the cell once per time step."""
    layer = make_layer(variant, 4, 3, return_sequences=True)
    cell = layer.cell
    x = random_inputs(2, 6, 3)
    states = [keras.ops.zeros((2, 4)) for _ in layer.state_size]
    stepped = []
    for t in range(x.shape[1]):
        h_t, states = cell(x[:, t], states)
        stepped.append(as_numpy(h_t))
    whole = keras.layers.RNN(cell, return_sequences=True)(x)
    np.testing.assert_allclose(
        as_numpy(whole), np.stack(stepped, 1), rtol=1e-6, atol=1e-6
    )


def test_weight_layout(variant):
    """Names and shapes of lstm.py's / gru.py's layout (a stored manifest, haiku-style),
    and, with a forget gate, exactly the built-in's variables."""
    layer = make_layer(variant, 5, 3)
    blocks = {"lstm": 4, "lstm_no_forget": 3, "gru": 3}[variant]
    manifest = [(w.path.split("/")[-2:], tuple(w.shape)) for w in layer.weights]
    cell_name = "gru_cell" if variant == "gru" else "lstm_cell"
    assert manifest == [
        ([cell_name, "kernel"], (3, blocks * 5)),
        ([cell_name, "recurrent_kernel"], (5, blocks * 5)),
        ([cell_name, "bias"], (blocks * 5,)),
    ]
    if variant != "lstm_no_forget":
        builtin = (
            keras.layers.GRU(5, reset_after=False)
            if variant == "gru"
            else keras.layers.LSTM(5)
        )
        builtin.build((None, None, 3))
        assert manifest == [
            (w.path.split("/")[-2:], tuple(w.shape)) for w in builtin.weights
        ]


def test_unit_forget_bias_initialises_forget_block():
    from keras_gates import LSTM

    lstm = LSTM(3, bias_initializer="zeros")
    lstm.build((None, None, 2))
    bias = as_numpy(lstm.cell.bias)
    np.testing.assert_array_equal(
        bias, [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    )  # [i|f|c|o]: ones on the f block
    builtin = keras.layers.LSTM(3, bias_initializer="zeros")
    builtin.build((None, None, 2))
    np.testing.assert_array_equal(bias, as_numpy(builtin.cell.bias))
    off = LSTM(3, unit_forget_bias=False)
    off.build((None, None, 2))
    np.testing.assert_array_equal(as_numpy(off.cell.bias), np.zeros(12))
    no_forget = LSTM(3, forget_gate=False)
    no_forget.build((None, None, 2))
    np.testing.assert_array_equal(as_numpy(no_forget.cell.bias), np.zeros(9))


def test_dropout_masks_fixed_across_time(variant):
    """Training with dropout equals the oracle run with one mask for all steps."""
    layer = make_layer(
        variant, 3, 4, return_sequences=True, dropout=0.5, recurrent_dropout=0.4, seed=3
    )
    x = random_inputs(8, 6, 4)
    a = as_numpy(layer(x, training=True))
    b = as_numpy(layer(x, training=True))
    assert not np.allclose(a, b), "masks must be drawn afresh for every call"

    # Draw this call's masks first; the layer then uses them (and drops them).
    # With recurrent_dropout > 0 there is one mask per gate block, as Keras's
    # cells draw them (implementation 1).
    cell = layer.cell
    blocks = cell.num_gate_blocks
    input_mask = cell.get_dropout_mask(keras.ops.convert_to_tensor(x[:, 0]))
    state_mask = cell.get_recurrent_dropout_mask(keras.ops.zeros((8, 3)))
    assert len(input_mask) == len(state_mask) == blocks
    input_mask = [as_numpy(m) for m in input_mask]
    state_mask = [as_numpy(m) for m in state_mask]
    assert set(np.unique(input_mask)) <= {0.0, 2.0}
    kept = np.concatenate(state_mask)[np.concatenate(state_mask) != 0]
    np.testing.assert_allclose(kept, 1 / 0.6, rtol=1e-6)
    assert not np.array_equal(state_mask[0], state_mask[1]), "one draw per block"
    got = as_numpy(layer(x, training=True))
    assert getattr(cell, "_dropout_mask", None) is None, "masks are reset after a call"
    want, _, _, _ = reference(
        variant, layer, x, input_mask=input_mask, recurrent_mask=state_mask
    )
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    # Inference ignores dropout.
    want_eval, _, _, _ = reference(variant, layer, x)
    np.testing.assert_allclose(as_numpy(layer(x)), want_eval, rtol=RTOL, atol=ATOL)
