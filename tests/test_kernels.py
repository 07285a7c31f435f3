"""The layers' sequence kernels (keras_gates/kernels.py) equal the plain cell loop.

The plain path is ``keras.layers.RNN.inner_loop`` over the layer's own cell
(the readable step in lstm.py / gru.py); the fast path is what the layers
run by default, in every form (small- and large-batch, and the LSTM's
compiled form) and in training. tests/test_kernel_functions.py calls the
kernels directly, without a layer, on every backend.
Values and gradients (w.r.t. the inputs and every weight)
must agree across masks, dropout with a seed, go_backwards, initial and
carried state, mixed precision and jit_compile; values also match the NumPy
oracle in tests/reference.py.

Tolerances: both paths are float32 (float16 under mixed precision) with the
same weights; they differ only by summation order and by
tanh(a) = 2 * sigmoid(2 a) - 1, a few ulps per step over <= 8 steps.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ATOL, RTOL, as_numpy, make_layer, reference

import keras_gates
from keras_gates import kernels
from keras_gates.base import GatedRNN

MASKS = {
    "none": None,
    "left_padding": [[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]],
    "gaps": [[1, 0, 1, 0, 1, 1], [0, 1, 1, 0, 0, 1], [1, 1, 0, 1, 0, 0]],
    "all_masked_row": [[0, 0, 0, 0, 0, 0], [1, 1, 0, 1, 1, 1], [1, 0, 1, 1, 0, 1]],
}
GRAD_ATOL = 1e-4


@pytest.fixture(autouse=True, params=["block", "small", "large", "compiled"])
def form(request, monkeypatch):
    """The kernels' forms: at inference, "compiled" when XLA compiles the loop
    (the LSTM's; made to answer so here), else "block" up to
    `kernels.BLOCK_BATCH_MAX` (the LSTM's) / `GRU_BLOCK_BATCH_MAX` where it
    applies (the LSTM's: no mask; both: no recurrent dropout, float32; else
    "small"), "small" up to `fused_max_batch` and `kernels.ABOVE_LADDER`
    above (the LSTM's "compiled", made "large" here for the large form).
    Every test runs each form at any batch; training always takes the large
    form."""
    if request.param == "compiled":
        if request.node.callspec.params.get("variant") == "gru":
            pytest.skip("the GRU has no compiled form (kernels.GRU_FORMS)")
        monkeypatch.setattr(kernels, "compiled", lambda: True)
    else:
        limit = 0 if request.param == "large" else 10**9
        for layer_class in (keras_gates.LSTM, keras_gates.GRU):
            monkeypatch.setattr(layer_class, "fused_max_batch", limit)
    block_limit = 10**9 if request.param == "block" else 0
    # The "unrolled" form (several steps per loop iteration) is tested on its
    # own in tests/test_kernel_functions.py.
    monkeypatch.setattr(kernels, "UNROLLED_BATCH_MAX", 0)
    monkeypatch.setattr(kernels, "BLOCK_BATCH_MAX", block_limit)
    monkeypatch.setattr(kernels, "GRU_BLOCK_BATCH_MAX", block_limit)
    if request.param == "large":  # above the ladder: this form too
        monkeypatch.setitem(kernels.ABOVE_LADDER, "lstm", "large")
    return request.param


def spy_forms(monkeypatch) -> list:
    """The form of every loop the kernels build from now on."""
    forms = []
    original, original_bptt = kernels._scan, kernels._bptt_lstm

    def spy(step, init, inputs, mask, keep, form, training):
        forms.append(form)
        return original(step, init, inputs, mask, keep, form, training)

    def bptt_spy(*args):  # the LSTM's "bptt" form runs its own loop
        forms.append("bptt")
        return original_bptt(*args)

    monkeypatch.setattr(kernels, "_scan", spy)
    monkeypatch.setattr(kernels, "_bptt_lstm", bptt_spy)
    return forms


@contextlib.contextmanager
def plain_path():
    """Run the layers on keras.layers.RNN's generic loop over the cell."""
    original = GatedRNN.runs_sequence_kernel
    GatedRNN.runs_sequence_kernel = lambda layer: False
    try:
        yield
    finally:
        GatedRNN.runs_sequence_kernel = original


def random_inputs(batch, time, features, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, time, features)).astype("float32")


def values_and_gradients(layer, x, **call_kwargs):
    """Outputs, states, and d(sum of weighted outputs)/d(inputs, weights)."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        result = layer(x, **call_kwargs)
        result = list(result) if isinstance(result, (list, tuple)) else [result]
        # Weighted so every element of every output has its own gradient.
        loss = tf.add_n(
            [
                tf.reduce_sum(
                    tf.cast(r, "float32")
                    * tf.reshape(tf.linspace(-1.0, 1.0, tf.size(r)), tf.shape(r))
                )
                for r in result
            ]
        )
    grads = tape.gradient(loss, [x, *layer.trainable_variables])
    return [as_numpy(tf.cast(r, "float32")) for r in result], [
        as_numpy(g) for g in grads
    ]


def assert_paths_equal(make, x, atol=ATOL, grad_atol=GRAD_ATOL, rtol=RTOL, **kwargs):
    """`make()` twice with the same weights: fast path == plain path."""
    fast_layer, plain_layer = make(), make()
    assert fast_layer.runs_sequence_kernel()
    fast = values_and_gradients(fast_layer, x, **kwargs)
    with plain_path():
        plain = values_and_gradients(plain_layer, x, **kwargs)
    for got, want in zip(fast[0], plain[0]):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    for got, want in zip(fast[1], plain[1]):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=grad_atol)
    return fast


@pytest.mark.parametrize("mask_name", sorted(MASKS))
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("zero_output_for_mask", [False, True])
def test_fast_equals_plain_with_masks(
    variant, mask_name, go_backwards, zero_output_for_mask
):
    mask = None if MASKS[mask_name] is None else np.array(MASKS[mask_name], bool)
    x = random_inputs(3, 6, 4)
    kwargs = dict(
        return_sequences=True,
        return_state=True,
        go_backwards=go_backwards,
        zero_output_for_mask=zero_output_for_mask,
    )
    fast = assert_paths_equal(lambda: make_layer(variant, 5, 4, **kwargs), x, mask=mask)
    # And both equal the independent oracle.
    layer = make_layer(variant, 5, 4, **kwargs)
    want_outputs, _, want_states, _ = reference(
        variant,
        layer,
        x,
        mask=mask,
        go_backwards=go_backwards,
        zero_output_for_mask=zero_output_for_mask,
    )
    np.testing.assert_allclose(fast[0][0], want_outputs, rtol=RTOL, atol=ATOL)
    for got, want in zip(fast[0][1:], want_states):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_fast_equals_plain_last_output_with_initial_state(variant):
    """Left padding with a non-zero h_0: masked leading outputs are zeros."""
    x = random_inputs(3, 6, 4)
    mask = np.array(MASKS["left_padding"], bool)
    rng = np.random.default_rng(7)
    n_states = 1 if variant == "gru" else 2
    initial = [rng.normal(size=(3, 5)).astype("float32") for _ in range(n_states)]
    for return_sequences in (False, True):
        fast = assert_paths_equal(
            lambda return_sequences=return_sequences: make_layer(
                variant, 5, 4, return_sequences=return_sequences, return_state=True
            ),
            x,
            mask=mask,
            initial_state=initial,
        )
        layer = make_layer(variant, 5, 4)
        outputs, last, states, _ = reference(
            variant, layer, x, mask=mask, initial_state=initial
        )
        want = outputs if return_sequences else last
        np.testing.assert_allclose(fast[0][0], want, rtol=RTOL, atol=ATOL)
        for got, want_state in zip(fast[0][1:], states):
            np.testing.assert_allclose(got, want_state, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("mask_name", ["none", "gaps"])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_fast_equals_plain_in_training_with_dropout(
    variant, mask_name, go_backwards, monkeypatch
):
    """Training runs on the fast path (large-batch form) with the same
    per-sequence dropout masks as the plain loop: same seed, same values and
    gradients."""
    forms = spy_forms(monkeypatch)
    mask = None if MASKS[mask_name] is None else np.array(MASKS[mask_name], bool)
    x = random_inputs(3, 6, 4)

    def make():
        keras.utils.set_random_seed(11)  # the layers' dropout seeds
        return make_layer(
            variant,
            5,
            4,
            return_sequences=True,
            return_state=True,
            go_backwards=go_backwards,
            dropout=0.4,
            recurrent_dropout=0.3,
        )

    fast = assert_paths_equal(make, x, mask=mask, training=True)
    assert forms == ["large"]
    # Dropout did apply: the same layer without it gives other values.
    layer = make()
    no_dropout = as_numpy(layer(x, mask=mask, training=False)[0])
    assert np.abs(fast[0][0] - no_dropout).max() > 1e-2


def test_fast_equals_plain_stateful(variant):
    x = random_inputs(2, 8, 3)
    runs = []
    for use_plain in (False, True):
        layer = make_layer(variant, 4, 3, batch=2, stateful=True, return_sequences=True)
        with plain_path() if use_plain else contextlib.nullcontext():
            runs.append([as_numpy(layer(x[:, :5])), as_numpy(layer(x[:, 5:]))])
    for got, want in zip(*runs):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_fast_equals_plain_other_activations(variant, activation):
    """Without tanh/sigmoid the fast path applies each activation by block."""
    x = random_inputs(2, 5, 3)
    kwargs = dict(
        return_sequences=True,
        activation=activation,
        recurrent_activation="hard_sigmoid",
    )
    assert_paths_equal(lambda: make_layer(variant, 4, 3, **kwargs), x)


def test_fast_equals_plain_without_bias(variant):
    x = random_inputs(2, 5, 3)
    assert_paths_equal(lambda: make_layer(variant, 4, 3, use_bias=False), x)


@pytest.mark.parametrize("training", [False, True])
def test_fast_equals_plain_under_jit_compile(variant, training):
    x = random_inputs(3, 6, 4)
    mask = np.array(MASKS["gaps"], bool)
    results = []
    for use_plain in (False, True):
        keras.utils.set_random_seed(11)
        layer = make_layer(
            variant, 5, 4, return_sequences=True, dropout=0.3, recurrent_dropout=0.2
        )

        @tf.function(jit_compile=True)
        def forward_and_grad(x, mask, layer=layer):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, mask=mask, training=training)
                loss = tf.reduce_sum(y * y)
            return y, tape.gradient(loss, [x, *layer.trainable_variables])

        with plain_path() if use_plain else contextlib.nullcontext():
            y, grads = forward_and_grad(tf.constant(x), tf.constant(mask))
        results.append([as_numpy(y), *(as_numpy(g) for g in grads)])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=GRAD_ATOL)


@pytest.mark.parametrize("training", [False, True])
def test_fast_equals_plain_mixed_precision(variant, training):
    x = random_inputs(3, 6, 4)
    mask = np.array(MASKS["gaps"], bool)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        fast = assert_paths_equal(
            lambda: make_layer(variant, 5, 4, return_sequences=True, return_state=True),
            x,
            atol=5e-3,
            grad_atol=2e-2,
            rtol=1e-2,
            mask=mask,
            training=training,
        )
        layer = make_layer(variant, 5, 4, return_sequences=True, return_state=True)
        outputs, *states = layer(x, mask=mask)
        assert keras.backend.standardize_dtype(outputs.dtype) == "float16"
        assert all(
            keras.backend.standardize_dtype(s.dtype) == "float16" for s in states
        )
    finally:
        keras.config.set_dtype_policy(previous)
    want, _, _, _ = reference(variant, layer, x, mask=mask)
    np.testing.assert_allclose(fast[0][0], want, rtol=1e-2, atol=5e-3)


def test_unroll_keeps_the_plain_path(variant):
    layer = make_layer(variant, 4, 3, unroll=True)
    assert isinstance(layer, GatedRNN)
    assert not layer.runs_sequence_kernel()


def test_fast_path_exports_core_ops_only(variant, tmp_path):
    """The traced loop has no Python ops (SavedModel must run in TF Serving)."""
    layer = make_layer(variant, 4, 3)
    inputs = keras.Input((None, 3))
    model = keras.Model(inputs, layer(inputs))
    model.export(str(tmp_path / "model"), format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "model"))
    x = random_inputs(2, 5, 3)
    np.testing.assert_allclose(
        as_numpy(loaded.serve(tf.constant(x))), as_numpy(model(x)), rtol=RTOL, atol=ATOL
    )
    graph = loaded.serve.get_concrete_function(
        tf.TensorSpec((None, None, 3), "float32")
    ).graph.as_graph_def()
    ops_used = {node.op for node in graph.node}
    for function in graph.library.function:
        ops_used |= {node.op for node in function.node_def}
    assert not ops_used & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}


@pytest.mark.parametrize("layer_class", [keras_gates.LSTM, keras_gates.GRU])
def test_dispatch_by_batch_size(layer_class, form, monkeypatch):
    """Static batch: the form is chosen when tracing; dynamic batch (a serving
    signature): both forms in the graph, `ops.cond` picks; training: the
    LSTM's "bptt" form up to its batch (TensorFlow), else the large form;
    every route equals the oracle."""
    if form != "small":
        pytest.skip("the dispatch itself is under test: once is enough")
    monkeypatch.setattr(layer_class, "fused_max_batch", 2)
    calls = spy_forms(monkeypatch)
    variant = "lstm" if layer_class is keras_gates.LSTM else "gru"
    layer = make_layer(variant, 5, 4, return_sequences=True)
    above = kernels.ABOVE_LADDER[variant]
    bptt = variant == "lstm" and keras.backend.backend() == "tensorflow"
    for batch, training, forms in (
        (1, False, ["small"]),
        (3, False, [above]),
        (1, True, ["bptt" if bptt else "large"]),
        (kernels.BPTT_BATCH_MAX + 1, True, ["large"]),
    ):
        calls.clear()
        x = random_inputs(batch, 6, 4)
        got = as_numpy(layer(x, training=training))
        assert calls == forms
        want, _, _, _ = reference(variant, layer, x)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)

    serve = tf.function(
        layer, input_signature=[tf.TensorSpec((None, None, 4), tf.float32)]
    )
    for batch in (1, 2, 3, 7):
        x = random_inputs(batch, 5, 4, seed=batch)
        want, _, _, _ = reference(variant, layer, x)
        np.testing.assert_allclose(as_numpy(serve(x)), want, rtol=RTOL, atol=ATOL)
