"""trace_gates / gate_sequences / gradient_flow against independent oracles.

Oracles: tests/reference.py (the cells' equations in float64 NumPy, keras.layers.RNN's
mask and go_backwards semantics) for the traces; the layer's own outputs and
final states for h and s; a linear RNN whose gradients are known in closed
form for gradient_flow. Tolerances: ATOL/RTOL of conftest.py.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import ATOL, RTOL, as_numpy, make_layer, reference

import keras_gates
from keras_gates.introspection import gate_names, gate_sequences, gradient_flow
from keras_gates.introspection import trace_gates as trace_gates_

needs_tf = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="gradient_flow uses tf.GradientTape",
)

MASKS = {
    "none": None,
    "left_padding": [[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]],
    "gaps": [[1, 0, 1, 0, 1, 1], [0, 1, 1, 0, 0, 1], [1, 1, 0, 1, 0, 0]],
    "all_masked_row": [[0, 0, 0, 0, 0, 0], [1, 1, 0, 1, 1, 1], [1, 0, 1, 1, 0, 1]],
}


def random_inputs(batch, time, features, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, time, features)).astype("float32")


def expected_trace(variant, layer, x, mask, go_backwards, initial_state=None):
    """The oracle's trace in the documented conventions.

    Gates at unmasked steps are the oracle's; at masked steps NaN. s and h
    hold the state carried into and kept over each step, in input time order.
    """
    _, _, _, gates = reference(
        variant,
        layer,
        x,
        mask=mask,
        go_backwards=go_backwards,
        initial_state=initial_state,
    )
    batch, steps, _ = x.shape
    mask = np.ones((batch, steps), bool) if mask is None else np.asarray(mask, bool)
    order = list(range(steps - 1, -1, -1)) if go_backwards else list(range(steps))
    # reference.run stacks its gates in reading order: position p is step order[p].
    in_time = {name: np.empty_like(value) for name, value in gates.items()}
    for position, t in enumerate(order):
        for name, value in gates.items():
            in_time[name][:, t] = value[:, position]
    units = layer.cell.units
    if initial_state is None:
        initial_state = [np.zeros((batch, units)) for _ in layer.state_size]
    start = {"s": np.asarray(initial_state[-1], np.float64)}
    if "h" in in_time:
        start["h"] = np.asarray(initial_state[0], np.float64)
    want = {}
    for name, value in in_time.items():
        if name in start:
            carried = start[name].copy()
            kept = np.empty_like(value)
            for t in order:
                carried = np.where(mask[:, t, None], value[:, t], carried)
                kept[:, t] = carried
            want[name] = kept
        else:
            want[name] = np.where(mask[:, :, None], value, np.nan)
    return want


def assert_trace_equal(got, want):
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(
            got[name], want[name], rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=name
        )


def test_gate_names(variant):
    layer = make_layer(variant, 3, 2)
    want = {
        "lstm": ("o", "i", "f", "s_tilde", "s", "h"),
        "lstm_no_forget": ("o", "i", "s_tilde", "s", "h"),
        "gru": ("o", "i", "s_tilde", "s"),
    }[variant]
    assert gate_names(layer) == want
    assert gate_names(layer.cell) == want


@pytest.mark.parametrize("mask_name", sorted(MASKS))
@pytest.mark.parametrize("go_backwards", [False, True])
def test_trace_equals_reference(variant, mask_name, go_backwards):
    mask = MASKS[mask_name]
    mask = None if mask is None else np.array(mask, bool)
    x = random_inputs(3, 6, 4)
    layer = make_layer(variant, 5, 4, go_backwards=go_backwards)
    got = trace_gates_(layer, x, mask=mask)
    assert all(value.dtype == np.float32 for value in got.values())
    assert_trace_equal(got, expected_trace(variant, layer, x, mask, go_backwards))


@pytest.mark.parametrize("go_backwards", [False, True])
def test_h_and_s_equal_layer_outputs(variant, go_backwards):
    """The trace's h (LSTM) or s (GRU) is the layer's own output sequence."""
    mask = np.array(MASKS["gaps"], bool)
    x = random_inputs(3, 6, 4, seed=5)
    layer = make_layer(
        variant,
        5,
        4,
        seed=2,
        return_sequences=True,
        return_state=True,
        go_backwards=go_backwards,
    )
    outputs, *states = layer(x, mask=mask)
    outputs = as_numpy(outputs)
    if go_backwards:  # the layer returns reading order; the trace, input order
        outputs = outputs[:, ::-1]
    trace = trace_gates_(layer, x, mask=mask)
    output_name = "h" if "h" in trace else "s"
    np.testing.assert_allclose(trace[output_name], outputs, rtol=RTOL, atol=ATOL)
    last = 0 if go_backwards else -1  # the last step read
    final = dict(zip(("h", "s") if output_name == "h" else ("s",), states, strict=True))
    for name, state in final.items():
        np.testing.assert_allclose(
            trace[name][:, last], as_numpy(state), rtol=RTOL, atol=ATOL
        )


def test_initial_state_and_leading_masked_steps(variant):
    """Before the first unmasked step the carried state is the initial state."""
    mask = np.array(MASKS["left_padding"], bool)
    x = random_inputs(3, 6, 4)
    layer = make_layer(variant, 5, 4)
    rng = np.random.default_rng(9)
    initial = [rng.normal(size=(3, 5)).astype("float32") for _ in layer.state_size]
    got = trace_gates_(layer, x, mask=mask, initial_state=initial)
    want = expected_trace(variant, layer, x, mask, False, initial_state=initial)
    assert_trace_equal(got, want)
    np.testing.assert_allclose(got["s"][2, :5], np.repeat(initial[-1][2:3], 5, 0))


def test_masked_value(variant):
    mask = np.array(MASKS["gaps"], bool)
    x = random_inputs(3, 6, 4)
    layer = make_layer(variant, 5, 4)
    got = trace_gates_(layer, x, mask=mask, masked_value=0.0)
    assert np.all(got["i"][~mask] == 0.0)
    assert not np.isnan(got["o"]).any()
    want = expected_trace(variant, layer, x, mask, False)
    np.testing.assert_allclose(got["s"], want["s"], rtol=RTOL, atol=ATOL)


def test_model_layer_by_name_and_index_with_embedding_mask(variant):
    """The model's own Embedding(mask_zero=True) mask reaches the traced layer."""
    tokens = np.array([[0, 0, 3, 4, 2], [5, 6, 7, 8, 9], [1, 0, 2, 0, 3]])
    embedding = keras.layers.Embedding(10, 3, mask_zero=True)
    dense = keras.layers.Dense(3, activation="tanh")
    layer = make_layer(variant, 4, 3, name="gated")
    model = keras.Sequential(
        [keras.Input((None,), dtype="int32"), embedding, dense, layer]
    )
    features = as_numpy(dense(embedding(tokens)))
    want = expected_trace(variant, layer, features, tokens != 0, False)
    assert_trace_equal(trace_gates_(model, tokens, layer="gated"), want)
    assert_trace_equal(trace_gates_(model, tokens, layer=2), want)
    assert_trace_equal(trace_gates_(model, tokens), want)  # the only gated layer
    # An explicit mask replaces the model's own.
    all_on = np.ones(tokens.shape, bool)
    want_all = expected_trace(variant, layer, features, all_on, False)
    assert_trace_equal(
        trace_gates_(model, tokens, layer="gated", mask=all_on), want_all
    )


def test_functional_model_layer():
    inputs = keras.Input((None, 4))
    hidden = keras.layers.Dense(4)(inputs)
    gated = make_layer("lstm", 3, 4, name="inner")
    model = keras.Model(inputs, keras.layers.Dense(1)(gated(hidden)))
    x = random_inputs(2, 5, 4)
    features = as_numpy(model.layers[1](x))
    want = expected_trace("lstm", gated, features, None, False)
    assert_trace_equal(trace_gates_(model, x, layer="inner"), want)


def test_rnn_over_keras_gates_cell():
    cell = keras_gates.GRUCell(4)
    layer = keras.layers.RNN(cell, go_backwards=True)
    layer.build((None, None, 3))
    x = random_inputs(2, 5, 3)
    got = trace_gates_(layer, x)
    _, _, _, gates = reference_for_cell(cell, x, go_backwards=True)
    np.testing.assert_allclose(got["i"], gates["i"][:, ::-1], rtol=RTOL, atol=ATOL)


def reference_for_cell(cell, x, **kwargs):
    from reference import run

    return run("gru", x, [np.asarray(w) for w in cell.get_weights()], **kwargs)


def test_stateful_layer_starts_from_its_state_and_keeps_it(variant):
    x = random_inputs(2, 8, 3)
    layer = make_layer(variant, 4, 3, batch=2, stateful=True, return_sequences=True)
    layer(x[:, :5])
    before = [as_numpy(s).copy() for s in layer.states]
    got = trace_gates_(layer, x[:, 5:])
    after = [as_numpy(s) for s in layer.states]
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)  # tracing leaves the state alone
    full = expected_trace(variant, layer, x, None, False)
    for name in got:
        np.testing.assert_allclose(got[name], full[name][:, 5:], rtol=RTOL, atol=ATOL)


def test_gate_sequences_inside_tf_function(variant):
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.function needs the TensorFlow backend")
    layer = make_layer(variant, 4, 3)
    x = random_inputs(2, 6, 3)
    mask = np.array([[1, 1, 0, 1, 1, 1], [0, 1, 1, 1, 1, 0]], bool)

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, None, 3), tf.float32),
            tf.TensorSpec((None, None), tf.bool),
        ]
    )
    def gates(inputs, mask):
        return gate_sequences(layer, inputs, mask=mask, masked_value=0.0)

    got = {name: value.numpy() for name, value in gates(x, mask).items()}
    want = expected_trace(variant, layer, x, mask, False)
    for name in want:
        expected = want[name] if name in ("s", "h") else np.nan_to_num(want[name])
        np.testing.assert_allclose(got[name], expected, rtol=RTOL, atol=ATOL)
    # New batch and time sizes through the same traced function.
    assert gates(random_inputs(5, 9, 3), np.ones((5, 9), bool))["s"].shape == (5, 9, 4)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_seq2seq_trace_starts_from_the_state_the_model_feeds(kind):
    """A decoder whose initial_state is the encoder's final state: the trace
    equals the NumPy oracle's decoder run from the oracle encoder's final
    state, and the decoder's real per-step outputs (h_t, or the GRU's s_t)."""
    variant = kind
    encoder = make_layer(variant, 4, 3, seed=1, return_state=True, name="encoder")
    decoder = make_layer(variant, 4, 2, seed=2, return_sequences=True, name="decoder")
    enc_in = keras.Input((None, 3), name="x_enc")
    dec_in = keras.Input((None, 2), name="x_dec")
    _, *enc_states = encoder(enc_in)
    dec_seq = decoder(dec_in, initial_state=enc_states)
    model = keras.Model([enc_in, dec_in], keras.layers.Dense(1)(dec_seq))
    x_enc, x_dec = random_inputs(2, 6, 3, seed=3), random_inputs(2, 5, 2, seed=4)

    _, _, enc_final, _ = reference(variant, encoder, x_enc)
    want = expected_trace(variant, decoder, x_dec, None, False, enc_final)
    got = trace_gates_(model, [x_enc, x_dec], layer="decoder")
    assert_trace_equal(got, want)
    real = as_numpy(keras.Model(model.inputs, dec_seq)([x_enc, x_dec]))
    output_name = "h" if kind == "lstm" else "s"
    np.testing.assert_allclose(got[output_name], real, rtol=RTOL, atol=ATOL)
    # A zero start is far from it (what the trace gave before).
    zero_start = expected_trace(variant, decoder, x_dec, None, False)
    assert np.max(np.abs(zero_start["s"] - want["s"])) > 1e-2
    # An explicit initial_state still wins over the model's.
    zeros = [np.zeros((2, 4), "float32") for _ in enc_final]
    explicit = trace_gates_(model, [x_enc, x_dec], layer="decoder", initial_state=zeros)
    assert_trace_equal(explicit, zero_start)


def test_trace_starts_from_a_state_input_of_the_model():
    layer = make_layer("gru", 3, 2, return_sequences=True, name="gru")
    x_in, s_in = keras.Input((None, 2)), keras.Input((3,))
    model = keras.Model([x_in, s_in], layer(x_in, initial_state=[s_in]))
    x = random_inputs(2, 4, 2)
    s0 = random_inputs(1, 2, 3, seed=5)[0]
    want = expected_trace("gru", layer, x, None, False, [s0])
    assert_trace_equal(trace_gates_(model, [x, s0], layer="gru"), want)


def test_stacked_cells_rnn_gets_a_message_that_says_what_it_is():
    layer = keras.layers.RNN([keras_gates.LSTMCell(3), keras_gates.GRUCell(3)])
    layer.build((None, None, 2))
    with pytest.raises(TypeError, match="over 2 stacked cells \\(LSTMCell, GRUCell\\)"):
        trace_gates_(layer, random_inputs(1, 4, 2))


def test_errors_name_the_argument():
    layer = make_layer("lstm", 4, 3)
    with pytest.raises(TypeError, match="`layer_or_model`.*SimpleRNN"):
        simple = keras.layers.SimpleRNN(3)
        simple.build((None, None, 3))
        trace_gates_(simple, random_inputs(1, 2, 3))
    with pytest.raises(ValueError, match="`layer` must be built"):
        trace_gates_(keras_gates.GRU(3), random_inputs(1, 2, 3))
    with pytest.raises(
        ValueError, match="`inputs` must have 3 features.*\\(1, 2, 5\\)"
    ):
        trace_gates_(layer, random_inputs(1, 2, 5))
    with pytest.raises(ValueError, match="`inputs` must have rank 3"):
        trace_gates_(layer, np.zeros((2, 3), "float32"))
    with pytest.raises(TypeError, match="`inputs` must be floating point"):
        trace_gates_(layer, np.zeros((1, 2, 3), "int32"))
    with pytest.raises(ValueError, match="`mask` must have shape"):
        trace_gates_(layer, random_inputs(1, 2, 3), mask=np.ones((1, 3), bool))
    with pytest.raises(ValueError, match="`initial_state` must be a list of 2"):
        trace_gates_(layer, random_inputs(1, 2, 3), initial_state=[np.zeros((1, 4))])
    model = keras.Sequential([keras.Input((None, 3)), layer])
    with pytest.raises(ValueError, match="`layer` must name a layer.*'nope'"):
        trace_gates_(model, random_inputs(1, 2, 3), layer="nope")
    with pytest.raises(ValueError, match="`layer` must be an index.*received 7"):
        trace_gates_(model, random_inputs(1, 2, 3), layer=7)
    with pytest.raises(ValueError, match="`layer` selects a layer inside a model"):
        trace_gates_(layer, random_inputs(1, 2, 3), layer=0)


@needs_tf
def test_gradient_flow_equals_closed_form():
    """A linear RNN y = sum_k a^(T-1-k) x_k has gradient a^d at distance d."""
    a = 0.8
    rnn = keras.layers.SimpleRNN(1, activation=None, use_bias=False)
    model = keras.Sequential([keras.Input((None, 1)), rnn])
    rnn.set_weights([np.ones((1, 1), "float32"), np.full((1, 1), a, "float32")])
    x = random_inputs(3, 12, 1)
    flow = gradient_flow(model, x)
    np.testing.assert_array_equal(flow["distance"], np.arange(12))
    np.testing.assert_allclose(flow["norm"], a ** np.arange(12), rtol=1e-5)
    assert flow["per_example"].shape == (3, 12)
    # With targets and MSE: dL/dy = 2 (y - target) scales every distance alike.
    y = as_numpy(model(x))
    targets = y - 1.0
    with_loss = gradient_flow(model, x, targets=targets, loss="mse")
    np.testing.assert_allclose(with_loss["norm"], 2 * a ** np.arange(12), rtol=1e-5)


@needs_tf
def test_gradient_flow_lstm_far_above_simple_rnn():
    """The vanishing gradient, measured on a fixed seed.

    Same initialisation scale for both (every kernel ~ N(0, 0.1^2)), 32 units,
    60 steps of the adding problem's uniform inputs. The SimpleRNN's gradient
    is a product of W^T diag(tanh') factors (spectral radius ~0.1 * sqrt(32)
    ~ 0.6): it falls ~1e-13 over 50 steps. The LSTM's path through s_t is
    multiplied by f_t ~ sigmoid(1) ~ 0.73 per step (unit_forget_bias): ~1e-7.
    Measured: ratio 2.9e7 at distance 50 on this seed; asserted > 1e4.
    (With Keras's default initialisers the two are close: the forget gate
    has to learn to stay near 1, which the demo's trained models show.)
    """
    x = np.random.default_rng(0).uniform(size=(16, 60, 2)).astype("float32")

    def init(seed):
        return {
            "kernel_initializer": keras.initializers.RandomNormal(0.0, 0.1, seed=seed),
            "recurrent_initializer": keras.initializers.RandomNormal(
                0.0, 0.1, seed=seed + 100
            ),
        }

    def model(recurrent):
        head = keras.layers.Dense(
            1, kernel_initializer=keras.initializers.RandomNormal(0.0, 0.1, seed=200)
        )
        return keras.Sequential([keras.Input((None, 2)), recurrent, head])

    rnn = gradient_flow(model(keras.layers.SimpleRNN(32, **init(0))), x)["norm"]
    lstm = gradient_flow(model(keras_gates.LSTM(32, **init(0))), x)["norm"]
    assert rnn[50] < 1e-9
    assert lstm[50] / rnn[50] > 1e4


@needs_tf
def test_gradient_flow_errors():
    model = keras.Sequential([keras.Input((None, 2)), keras.layers.SimpleRNN(2)])
    with pytest.raises(ValueError, match="`inputs` must have rank 3"):
        gradient_flow(model, np.zeros((2, 3), "float32"))
    with pytest.raises(TypeError, match="`inputs` must be floating point"):
        gradient_flow(model, np.zeros((2, 3, 2), "int32"))
    with pytest.raises(TypeError, match="`model` must be a Keras model"):
        gradient_flow("model", np.zeros((2, 3, 2), "float32"))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bidirectional_directions_inside_a_model_equal_its_outputs(kind):
    """Both directions of a Bidirectional in a model, by every selector: the
    wrapper's name plus forward/backward, the tag, the inner layer's name and
    object. Each trace equals the NumPy oracle (the model's mask, the
    direction's half of the wrapper's initial state) and, at the steps read,
    the model's own outputs."""
    units, n_states = 4, 2 if kind == "lstm" else 1
    x_in = keras.Input((None, 3))
    mask_in = keras.Input((None,), dtype="bool")
    state_in = [keras.Input((units,)) for _ in range(2 * n_states)]
    bi = keras.layers.Bidirectional(
        make_layer(kind, units, 3, seed=4, return_sequences=True), name="bi"
    )
    outputs = bi(x_in, initial_state=state_in, mask=mask_in)
    model = keras.Model([x_in, mask_in, *state_in], outputs)
    x = random_inputs(3, 6, 3)
    mask = np.array(MASKS["gaps"], bool)
    states = [random_inputs(1, 3, units, seed=10 + k)[0] for k in range(2 * n_states)]
    real = as_numpy(model([x, mask, *states]))
    output_name = "h" if kind == "lstm" else "s"
    for direction, inner, half, columns in (
        ("forward", bi.forward_layer, states[:n_states], slice(0, units)),
        ("backward", bi.backward_layer, states[n_states:], slice(units, None)),
    ):
        want = expected_trace(kind, inner, x, mask, direction == "backward", half)
        for selector in (
            f"bi/{direction}",
            f"bi/{inner.name}",
            inner.name,
            inner,
        ):
            got = trace_gates_(model, [x, mask, *states], layer=selector)
            assert_trace_equal(got, want)
        # The model's output at a read step is the state the trace holds.
        np.testing.assert_allclose(
            np.where(mask[..., None], got[output_name], 0.0),
            np.where(mask[..., None], real[..., columns], 0.0),
            rtol=RTOL,
            atol=ATOL,
        )
    for selector in ("bi", bi, 0 if model.layers[0] is bi else model.layers.index(bi)):
        with pytest.raises(ValueError, match="'bi/forward_\\w+', 'bi/backward_\\w+'"):
            trace_gates_(model, [x, mask, *states], layer=selector)


def test_layer_in_a_nested_sub_model_is_found_and_fed():
    """A keras_gates layer inside a sub-model (an "encoder" model called by
    the outer one, behind a Dense): found by "encoder/lstm" or its own name,
    fed what the outer model hands the sub-model."""
    inner_in = keras.Input((None, 3))
    lstm = make_layer("lstm", 4, 3, seed=2, return_sequences=True, name="lstm")
    encoder = keras.Model(inner_in, lstm(inner_in), name="encoder")
    x_in = keras.Input((None, 2))
    dense = keras.layers.Dense(3, name="project")
    model = keras.Model(x_in, keras.layers.Dense(1)(encoder(dense(x_in))))
    x = random_inputs(2, 5, 2)
    projected = as_numpy(dense(x))
    want = expected_trace("lstm", lstm, projected, None, False)
    for selector in ("encoder/lstm", "lstm", lstm):
        assert_trace_equal(trace_gates_(model, x, layer=selector), want)
    assert_trace_equal(trace_gates_(model, x), want)  # the only one
    tags = [t.tag for t in keras_gates.introspection.gated_layers(model)]
    assert tags == ["encoder/lstm"]


def test_stateful_layer_traces_more_sequences_than_its_batch(variant):
    """8 sequences through a stateful layer of fixed batch 4 (no initial
    state passed): traced 4 at a time, sequence n from row n mod 4 of the
    carried state; no error about an `initial_state` never given."""
    layer = make_layer(variant, 4, 3, batch=4, stateful=True, return_sequences=True)
    layer(random_inputs(4, 5, 3, seed=2))
    carried = [as_numpy(s).copy() for s in layer.states]
    x = random_inputs(8, 6, 3, seed=3)
    got = trace_gates_(layer, x)
    rows = np.arange(8) % 4
    want = expected_trace(
        variant, layer, x, None, False, [state[rows] for state in carried]
    )
    assert_trace_equal(got, want)
    short = trace_gates_(layer, x[:3])  # fewer: the first rows
    assert_trace_equal(short, {name: value[:3] for name, value in want.items()})
    for state, before in zip(layer.states, carried, strict=True):
        np.testing.assert_array_equal(as_numpy(state), before)
