"""keras_gates.gate_statistics against a direct NumPy computation.

The oracle runs the sequences through tests/reference.py (the cells' equations in NumPy,
float64, keras.layers.RNN's mask rule) and averages the gates per sentence and
class with plain loops; the t intervals use SciPy's t quantile. Tolerances:
1e-5 absolute (float32 layer against the float64 oracle, means of values in
[0, 1] and of state changes of order 1).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import reference

import keras_gates

ATOL = 1e-5
NAMES = ["sentiment", "stop", "neutral"]
# (kind, layer arguments): the LSTM, its variant without forget gate, the GRU,
# and a layer reading backwards.
LAYERS = {
    "lstm": ("lstm", {}),
    "lstm_no_forget": ("lstm", {"forget_gate": False}),
    "gru": ("gru", {}),
    "lstm_backwards": ("lstm", {"go_backwards": True}),
}


def make_layer(kind, arguments, features=3, units=5):
    layer_class = keras_gates.LSTM if kind == "lstm" else keras_gates.GRU
    layer = layer_class(
        units,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.8, seed=1),
        recurrent_initializer=keras.initializers.RandomNormal(stddev=0.8, seed=2),
        bias_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=3),
        **arguments,
    )
    layer.build((None, None, features))
    return layer


def data(sentences=9, steps=7, features=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(sentences, steps, features)).astype("float32")
    lengths = rng.integers(2, steps + 1, size=sentences)
    mask = np.arange(steps) < lengths[:, None]  # right padding
    mask[0, 1] = False  # a gap inside a sentence
    classes = rng.integers(-1, len(NAMES), size=(sentences, steps))
    classes[1] = np.where(classes[1] == 0, 1, classes[1])  # no class 0 here
    classes[2, :] = 0  # class 0 at every step, padding included
    return x, mask, classes


def oracle(kind, arguments, weights, x, mask, classes, initial_state=None):
    """per_sentence[n, c, q] by loops over the reference run's gates."""
    backwards = arguments.get("go_backwards", False)
    _, _, _, gates = reference.run(
        kind,
        x,
        weights,
        mask=mask,
        initial_state=initial_state,
        go_backwards=backwards,
        forget_gate=arguments.get("forget_gate", True),
    )
    sentences, steps, _ = x.shape
    per_sentence = np.full((sentences, len(NAMES), 4), np.nan)
    for n in range(sentences):
        # The carried state before the next read step: s_0, then the last read s_t.
        if initial_state is None:
            s_prev = np.zeros(weights[1].shape[0])
        else:
            s_prev = np.asarray(initial_state[-1][n], np.float64)
        values = {c: [] for c in range(len(NAMES))}
        for k in range(steps):  # k: reading order; t: the input's time index
            t = steps - 1 - k if backwards else k
            if not mask[n, t]:
                continue
            i_t = gates["i"][n, k]
            if kind == "gru":
                f_t = 1.0 - i_t
            elif "f" in gates:
                f_t = gates["f"][n, k]
            else:  # forget_gate=False: s_t = s_{t-1} + i_t * s~_t
                f_t = np.ones_like(i_t)
            s_t = gates["s"][n, k]
            row = [i_t.mean(), f_t.mean(), gates["o"][n, k].mean()]
            row.append(np.abs(s_t - s_prev).mean())
            s_prev = s_t
            if classes[n, t] >= 0:
                values[classes[n, t]].append(row)
        for c, rows in values.items():
            if rows:
                per_sentence[n, c] = np.mean(rows, axis=0)
    return per_sentence


def t_interval(values, confidence=0.95):
    stats = pytest.importorskip("scipy.stats")
    mean = values.mean(axis=0)
    half = stats.t.ppf((1 + confidence) / 2, len(values) - 1)
    half = half * values.std(axis=0, ddof=1) / np.sqrt(len(values))
    return mean, mean - half, mean + half


@pytest.mark.parametrize("variant", list(LAYERS))
def test_layer_statistics_equal_the_numpy_oracle(variant):
    kind, arguments = LAYERS[variant]
    layer = make_layer(kind, arguments)
    x, mask, classes = data()
    stats = keras_gates.gate_statistics(
        layer, x, classes, NAMES, mask=mask, method="t", batch_size=4
    )
    expected = oracle(kind, arguments, layer.get_weights(), x, mask, classes)
    np.testing.assert_allclose(stats.per_sentence, expected, atol=ATOL)
    present = ~np.isnan(expected[:, :, 0])
    np.testing.assert_array_equal(stats.sentences, present.sum(axis=0))
    read = mask[..., None] & (classes[..., None] == np.arange(len(NAMES)))
    np.testing.assert_array_equal(stats.tokens, read.sum(axis=(0, 1)))
    assert not present[1, 0] and present[2, 0]
    for c in range(len(NAMES)):
        mean, low, high = t_interval(expected[present[:, c], c])
        np.testing.assert_allclose(stats.mean[c], mean, atol=ATOL)
        np.testing.assert_allclose(stats.low[c], low, atol=ATOL)
        np.testing.assert_allclose(stats.high[c], high, atol=ATOL)
    if kind == "gru":
        np.testing.assert_allclose(stats.mean[:, 1], 1 - stats.mean[:, 0], atol=1e-6)
    if arguments.get("forget_gate") is False:
        np.testing.assert_allclose(stats.mean[:, 1], 1.0)


def test_model_mask_and_initial_state_are_respected():
    # A model whose Embedding masks token 0; the first step's state change is
    # measured from the initial state handed in.
    vocabulary, features = 12, 3
    model = keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(vocabulary, features, mask_zero=True),
            make_layer("lstm", {}, features=features, units=4),
            keras.layers.Dense(1),
        ]
    )
    rng = np.random.default_rng(4)
    tokens = rng.integers(1, vocabulary, size=(6, 5))
    tokens[:, 3:] = np.where(rng.random((6, 2)) < 0.6, 0, tokens[:, 3:])
    tokens[0] = [3, 4, 0, 0, 0]
    classes = rng.integers(0, len(NAMES), size=tokens.shape)
    initial_state = [
        rng.normal(size=(6, 4)).astype("float32"),
        rng.normal(size=(6, 4)).astype("float32"),
    ]
    stats = keras_gates.gate_statistics(
        model,
        tokens,
        classes,
        NAMES,
        layer=1,
        initial_state=initial_state,
        method="t",
        batch_size=4,
    )
    embedded = model.layers[0].get_weights()[0][tokens]
    expected = oracle(
        "lstm",
        {},
        model.layers[1].get_weights(),
        embedded,
        tokens != 0,
        classes,
        initial_state=initial_state,
    )
    np.testing.assert_allclose(stats.per_sentence, expected, atol=ATOL)
    # padding never counts, whatever class it was given
    read = (tokens != 0)[..., None] & (classes[..., None] == np.arange(len(NAMES)))
    np.testing.assert_array_equal(stats.tokens, read.sum(axis=(0, 1)))


def test_difference_and_bootstrap():
    layer = make_layer("gru", {})
    x, mask, classes = data(sentences=40, seed=5)
    boot = keras_gates.gate_statistics(layer, x, classes, NAMES, mask=mask, seed=3)
    again = keras_gates.gate_statistics(layer, x, classes, NAMES, mask=mask, seed=3)
    t = keras_gates.gate_statistics(layer, x, classes, NAMES, mask=mask, method="t")
    np.testing.assert_array_equal(boot.low, again.low)  # seeded
    np.testing.assert_allclose(boot.mean, t.mean)
    assert (boot.low <= boot.mean).all() and (boot.mean <= boot.high).all()
    # A percentile bootstrap of a mean is about as wide as the t interval.
    ratio = (boot.high - boot.low) / (t.high - t.low)
    assert ((ratio > 0.7) & (ratio < 1.2)).all(), ratio

    expected = oracle("gru", {}, layer.get_weights(), x, mask, classes)
    paired = expected[:, 0] - expected[:, 1]
    paired = paired[~np.isnan(paired).any(axis=-1)]
    mean, low, high = t_interval(paired)
    difference = t.difference("sentiment", "stop")
    assert difference["sentences"] == (len(paired),)
    for q, name in enumerate(t.quantities):
        np.testing.assert_allclose(difference[name], (mean[q], low[q], high[q]), 1e-5)
    table = t.table("GRU")
    assert table.splitlines()[0] == "GRU" and "sentiment" in table and "[" in table


@pytest.mark.parametrize(
    "change, message",
    [
        ({"token_classes": np.full((9, 7), 3)}, "class indices 0..2"),
        ({"token_classes": np.zeros((9, 6), int)}, "must match the traced layer"),
        ({"token_classes": np.zeros((8, 7), int)}, "one row per sentence"),
        ({"token_classes": np.zeros((9, 7))}, "integer array"),
        ({"class_names": ["a", "a", "b"]}, "distinct strings"),
        ({"method": "normal"}, "`method` must be one of"),
        ({"confidence": 95}, "`confidence` must be between 0 and 1"),
        ({"resamples": 0}, "`resamples` must be a positive integer"),
    ],
)
def test_bad_arguments_are_named(change, message):
    layer = make_layer("gru", {})
    x, mask, classes = data()
    arguments = {"token_classes": classes, "class_names": NAMES, **change}
    with pytest.raises(ValueError, match=message):
        keras_gates.gate_statistics(layer, x, mask=mask, **arguments)


def seeded(kind, units=4, **arguments):
    """A layer with the seeded initializers of make_layer, not yet built."""
    layer_class = keras_gates.LSTM if kind == "lstm" else keras_gates.GRU
    return layer_class(
        units,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.8, seed=1),
        recurrent_initializer=keras.initializers.RandomNormal(stddev=0.8, seed=2),
        bias_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=3),
        **arguments,
    )


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("sentences,batch_size", [(4, 256), (12, 256), (12, 5)])
def test_stateful_layer_statistics_start_from_the_carried_state(
    kind, sentences, batch_size
):
    """A stateful layer (fixed batch 4) after one call: sentence n's first
    |s_t - s_{t-1}| is measured from row n mod 4 of the carried state, for 4
    sentences (its batch) and 12 (more: the default batch_size of 256 and one
    that is no multiple of 4), and the state is left as it was."""
    layer = seeded(kind, stateful=True, return_sequences=True)
    rng = np.random.default_rng(2)
    layer(rng.normal(size=(4, 5, 3)).astype("float32"))  # moves the state
    carried = [np.array(keras.ops.convert_to_numpy(s)) for s in layer.states]
    assert np.abs(carried[-1]).max() > 0.1
    x, mask, classes = data(sentences=sentences)
    stats = keras_gates.gate_statistics(
        layer, x, classes, NAMES, mask=mask, method="t", batch_size=batch_size
    )
    rows = np.arange(sentences) % 4
    expected = oracle(
        kind,
        {},
        layer.get_weights(),
        x,
        mask,
        classes,
        initial_state=[state[rows] for state in carried],
    )
    np.testing.assert_allclose(stats.per_sentence, expected, atol=ATOL)
    from_zeros = oracle(kind, {}, layer.get_weights(), x, mask, classes)
    assert np.nanmax(np.abs(from_zeros[..., 3] - expected[..., 3])) > 1e-3
    for state, before in zip(layer.states, carried, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(state), before)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_model_fed_state_is_the_first_steps_s_tm1(kind):
    """A decoder started from an encoder's final state: with no
    `initial_state`, the statistics start from the state the model feeds."""
    encoder = seeded(kind, return_state=True, name="encoder")
    decoder = seeded(kind, return_sequences=True, name="decoder")
    enc_in, dec_in = keras.Input((None, 2)), keras.Input((None, 3))
    _, *enc_states = encoder(enc_in)
    model = keras.Model(
        [enc_in, dec_in],
        keras.layers.Dense(1)(decoder(dec_in, initial_state=enc_states)),
    )
    x, mask, classes = data(sentences=6)
    x_enc = np.random.default_rng(5).normal(size=(6, 4, 2)).astype("float32")
    stats = keras_gates.gate_statistics(
        model, [x_enc, x], classes, NAMES, layer="decoder", mask=mask, method="t"
    )
    _, _, enc_final, _ = reference.run(kind, x_enc, encoder.get_weights())
    expected = oracle(
        kind, {}, decoder.get_weights(), x, mask, classes, initial_state=enc_final
    )
    np.testing.assert_allclose(stats.per_sentence, expected, atol=ATOL)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bidirectional_directions_with_mask_and_state(kind):
    """Each direction of a Bidirectional inside a model, chosen as
    "bi/forward" / "bi/backward": the model's Embedding mask, and its half of
    the wrapper's initial state (model inputs), as the NumPy oracle."""
    vocabulary, features, units = 12, 3, 4
    n_states = 2 if kind == "lstm" else 1
    tokens_in = keras.Input((None,), dtype="int32")
    state_in = [keras.Input((units,)) for _ in range(2 * n_states)]
    embedded = keras.layers.Embedding(vocabulary, features, mask_zero=True)(tokens_in)
    bi = keras.layers.Bidirectional(
        seeded(kind, units, return_sequences=True), name="bi"
    )
    # With initial_state Keras passes no Embedding mask by itself (more than
    # one tensor argument): the model hands its mask explicitly.
    mask = keras.ops.not_equal(tokens_in, 0)
    outputs = bi(embedded, initial_state=state_in, mask=mask)
    model = keras.Model([tokens_in, *state_in], outputs)
    rng = np.random.default_rng(4)
    tokens = rng.integers(1, vocabulary, size=(6, 5))
    tokens[:, 3:] = np.where(rng.random((6, 2)) < 0.6, 0, tokens[:, 3:])
    states = [rng.normal(size=(6, units)).astype("float32") for _ in state_in]
    classes = rng.integers(0, len(NAMES), size=tokens.shape)
    x = model.layers[1].get_weights()[0][tokens]
    for direction, inner, half in (
        ("forward", bi.forward_layer, states[:n_states]),
        ("backward", bi.backward_layer, states[n_states:]),
    ):
        stats = keras_gates.gate_statistics(
            model, [tokens, *states], classes, NAMES, layer=f"bi/{direction}",
            method="t", batch_size=4,
        )  # fmt: skip
        expected = oracle(
            kind,
            {"go_backwards": direction == "backward"},
            inner.get_weights(),
            x,
            tokens != 0,
            classes,
            initial_state=half,
        )
        np.testing.assert_allclose(stats.per_sentence, expected, atol=ATOL)
