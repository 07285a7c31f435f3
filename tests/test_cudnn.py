"""The LSTM's cuDNN path (keras_gates/cudnn.py), on a machine without a GPU.

The decision is a pure function of the layer's options and the mask, tested
as such. What the layer does once it decides for cuDNN is tested by making
this CPU look like a GPU: `gpu_available` patched True and Keras's fused
kernel replaced by `cudnn_contract`, an independent implementation of what
cuDNN's LSTM returns through Keras (zeros after each example's last step,
h_T as the last output, go_backwards by reversing each example's own steps).
The layer must then give exactly what its own kernel gives (use_cudnn=False)
for every mask pattern, direction and output option. benchmarks/gpu_check.py
proves the same against real cuDNN where a GPU is lent.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

import keras_gates
from keras_gates import cudnn, keras_internals

UNITS, FEATURES, BATCH, TIME = 3, 4, 3, 5

MASKS = {
    "none": None,
    "right_padded": [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]],
    "left_padded": [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]],
    "gaps": [[1, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 1, 0]],
    "empty_row": [[1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0]],
}
CUDNN_MASKS = {"none", "right_padded"}


def cudnn_contract(calls):
    """A stand-in for Keras's fused LSTM with cuDNN's output contract."""

    def lstm(
        inputs,
        initial_state_h,
        initial_state_c,
        mask,
        kernel,
        recurrent_kernel,
        bias,
        activation,
        recurrent_activation,
        return_sequences=False,
        go_backwards=False,
        unroll=False,
    ):
        if mask is not None and keras.backend.backend() != "tensorflow":
            raise NotImplementedError("Keras's JAX and torch kernels take no mask")
        calls.append({"mask": mask is not None, "go_backwards": go_backwards})
        time = inputs.shape[1]
        steps = ops.arange(time)[None, :]  # (1, time)
        if mask is None:
            lengths = ops.full((ops.shape(inputs)[0],), time, "int32")
        else:
            lengths = ops.sum(ops.cast(mask, "int32"), axis=1)
        valid = steps < lengths[:, None]  # (batch, time)
        order = None
        if go_backwards:  # each example's own steps reversed, padding kept
            order = ops.where(valid, lengths[:, None] - 1 - steps, steps)
            inputs = ops.take_along_axis(inputs, order[:, :, None], axis=1)
        h, c = initial_state_h, initial_state_c
        outputs = []
        for t in range(time):
            z = (
                ops.matmul(inputs[:, t], kernel)
                + ops.matmul(h, recurrent_kernel)
                + bias
            )
            a_i, a_f, a_c, a_o = ops.split(z, 4, axis=-1)
            c_new = ops.sigmoid(a_f) * c + ops.sigmoid(a_i) * ops.tanh(a_c)
            h_new = ops.sigmoid(a_o) * ops.tanh(c_new)
            keep = valid[:, t : t + 1]
            h = ops.where(keep, h_new, h)
            c = ops.where(keep, c_new, c)
            outputs.append(ops.where(keep, h_new, ops.zeros_like(h_new)))
        outputs = ops.stack(outputs, axis=1)
        if go_backwards:
            outputs = ops.take_along_axis(outputs, order[:, :, None], axis=1)
            outputs = ops.flip(outputs, axis=1)
        if not return_sequences:
            outputs = h[:, None, :]
        return h, outputs, [h, c]

    return lstm


@pytest.fixture
def fake_gpu(monkeypatch):
    """This machine as a GPU one: Keras's kernel is `cudnn_contract`."""
    calls = []
    monkeypatch.setattr(cudnn, "gpu_available", lambda: True)
    monkeypatch.setattr(
        keras_internals, "keras_lstm_kernel", lambda: cudnn_contract(calls)
    )
    return calls


def pair(**options):
    """The same weights in a layer on cuDNN's path and one on its own kernel."""
    rng = np.random.default_rng(7)
    on = keras_gates.LSTM(UNITS, **options)
    off = keras_gates.LSTM(UNITS, use_cudnn=False, **options)
    for layer in (on, off):
        layer.build((None, None, FEATURES))
    for variable, other in zip(on.weights, off.weights, strict=True):
        value = rng.uniform(-0.6, 0.6, variable.shape).astype("float32")
        variable.assign(value)
        other.assign(value)
    return on, off


def inputs():
    return (
        np.random.default_rng(3).normal(size=(BATCH, TIME, FEATURES)).astype("float32")
    )


# --- the decision -----------------------------------------------------------

OPTION_BLOCKERS = {
    "activation": ({"activation": "relu"}, "activation='relu'"),
    "recurrent_activation": (
        {"recurrent_activation": "hard_sigmoid"},
        "recurrent_activation='hard_sigmoid'",
    ),
    "use_bias": ({"use_bias": False}, "use_bias=False"),
    "recurrent_dropout": ({"recurrent_dropout": 0.2}, "recurrent_dropout=0.2"),
    "unroll": ({"unroll": True}, "unroll=True"),
    "forget_gate": ({"forget_gate": False}, "forget_gate=False"),
}


@pytest.mark.jax_parity
@pytest.mark.parametrize("option", sorted(OPTION_BLOCKERS))
def test_each_option_that_cudnn_lacks_is_named(option):
    options, named = OPTION_BLOCKERS[option]
    layer = keras_gates.LSTM(UNITS, **options)
    assert named in layer.cudnn_blocker()
    with pytest.raises(
        ValueError, match=r"`use_cudnn=True` cannot be honoured: "
    ) as error:
        keras_gates.LSTM(UNITS, use_cudnn=True, **options)
    assert named in str(error.value)


@pytest.mark.jax_parity
def test_default_options_allow_cudnn_and_dropout_does_not_block_it():
    assert keras_gates.LSTM(UNITS).cudnn_blocker() is None
    assert keras_gates.LSTM(UNITS, dropout=0.3).cudnn_blocker() is None
    assert keras_gates.LSTM(UNITS, activation=keras.ops.tanh).cudnn_blocker() is None
    assert "own `call`" in cudnn.blocker(
        activation=keras.activations.tanh,
        recurrent_activation=keras.activations.sigmoid,
        use_bias=True,
        recurrent_dropout=0.0,
        unroll=False,
        forget_gate=True,
        own_equations=False,
    )


@pytest.mark.jax_parity
@pytest.mark.parametrize("name", sorted(set(MASKS) - {"none"}))
def test_mask_allows_only_right_padding_with_a_step_per_example(name):
    allowed = bool(ops.convert_to_numpy(cudnn.mask_allows(np.array(MASKS[name]))))
    assert allowed == (name in CUDNN_MASKS)


@pytest.mark.jax_parity
def test_use_cudnn_is_validated_and_kept_in_the_config():
    with pytest.raises(ValueError, match=r"`use_cudnn` must be.*received 'yes'"):
        keras_gates.LSTM(UNITS, use_cudnn="yes")
    for value in cudnn.USE_CUDNN_CHOICES:
        layer = keras_gates.LSTM(UNITS, use_cudnn=value)
        assert layer.get_config()["use_cudnn"] == value
        assert keras_gates.LSTM.from_config(layer.get_config()).use_cudnn == value


@pytest.mark.jax_parity
def test_without_a_gpu_the_layer_runs_its_own_kernel_and_keeps_xla():
    """On a CPU nothing changes: auto runs the package's kernel (Keras's is
    never asked) and the layer still supports XLA; True says why not."""
    layer = keras_gates.LSTM(UNITS)
    assert layer.supports_jit is True
    assert cudnn.loop_blocker() == f"the {keras.backend.backend()} backend sees no GPU"
    on, off = pair()
    np.testing.assert_array_equal(
        ops.convert_to_numpy(on(inputs())), ops.convert_to_numpy(off(inputs()))
    )
    forced = keras_gates.LSTM(UNITS, use_cudnn=True)
    with pytest.raises(ValueError, match=r"sees no GPU"):
        forced(inputs())


# --- the path, on a CPU dressed as a GPU ------------------------------------

CASES = [
    (mask, go_backwards, return_sequences, zero_output)
    for mask in sorted(MASKS)
    for go_backwards in (False, True)
    for return_sequences, zero_output in ((False, False), (True, False), (True, True))
]


@pytest.mark.jax_parity
@pytest.mark.parametrize("mask, go_backwards, return_sequences, zero_output", CASES)
def test_cudnn_path_gives_what_the_own_kernel_gives(
    fake_gpu, mask, go_backwards, return_sequences, zero_output
):
    """Outputs and final states equal the package's kernel for every mask
    pattern (cuDNN's for right padding, the fallback for the others)."""
    options = {
        "go_backwards": go_backwards,
        "return_sequences": return_sequences,
        "zero_output_for_mask": zero_output,
        "return_state": True,
    }
    on, off = pair(**options)
    x = inputs()
    mask_value = None if MASKS[mask] is None else np.array(MASKS[mask], bool)
    h0 = np.random.default_rng(5).normal(size=(BATCH, UNITS)).astype("float32")
    state = [h0, 0.5 * h0]
    got = on(x, mask=mask_value, initial_state=state)
    want = off(x, mask=mask_value, initial_state=state)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(
            ops.convert_to_numpy(a), ops.convert_to_numpy(b), atol=1e-6, rtol=1e-6
        )
    # Eagerly only the path taken runs: cuDNN for the masks it computes (on
    # JAX and torch, whose Keras kernels take no mask, for no mask only).
    if keras.backend.backend() == "tensorflow":
        assert bool(fake_gpu) == (mask in CUDNN_MASKS), fake_gpu
        assert on.supports_jit is False
    else:
        assert bool(fake_gpu) == (mask_value is None), fake_gpu


def test_mask_is_decided_per_batch_inside_one_graph(fake_gpu):
    """TensorFlow: one traced function holds both paths; each batch runs the
    one its mask allows, and both equal the own kernel."""
    import tensorflow as tf

    on, off = pair(return_sequences=True)
    run_on = tf.function(lambda x, m: on(x, mask=m))
    run_off = tf.function(lambda x, m: off(x, mask=m))
    for name in ("right_padded", "left_padded", "gaps"):
        mask = tf.constant(np.array(MASKS[name], bool))
        np.testing.assert_allclose(
            run_on(inputs(), mask).numpy(), run_off(inputs(), mask).numpy(), atol=1e-6
        )
    assert len(run_on.get_concrete_function(inputs(), mask).graph.outputs) == 1


def test_use_cudnn_true_refuses_a_mask_cudnn_does_not_compute(fake_gpu, monkeypatch):
    import tensorflow as tf

    def asserting_contract(*args, **kwargs):  # Keras's kernel asserts the mask
        mask = args[3]
        tf.debugging.Assert(cudnn.mask_allows(mask), ["not right-padded"])
        return cudnn_contract(fake_gpu)(*args, **kwargs)

    monkeypatch.setattr(
        keras_internals, "keras_lstm_kernel", lambda: asserting_contract
    )
    layer = keras_gates.LSTM(UNITS, use_cudnn=True)
    layer(inputs(), mask=np.array(MASKS["right_padded"], bool))
    with pytest.raises(tf.errors.InvalidArgumentError, match="right-padded"):
        layer(inputs(), mask=np.array(MASKS["left_padded"], bool))


def test_gradients_equal_the_own_kernel(fake_gpu):
    import tensorflow as tf

    on, off = pair(return_sequences=True)
    mask = np.array(MASKS["right_padded"], bool)
    x = tf.constant(inputs())
    grads = []
    for layer in (on, off):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, mask=mask) ** 2)
        grads.append(tape.gradient(loss, [x, *layer.trainable_weights]))
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.jax_parity
def test_input_dropout_uses_the_same_mask_and_seed_state(fake_gpu):
    """Training with input dropout: the same outputs on both paths, and the
    seed state advanced alike (the next call draws the same masks)."""
    on, off = pair(dropout=0.4, seed=11, return_sequences=True)
    for _ in range(2):
        got = on(inputs(), training=True)
        want = off(inputs(), training=True)
        np.testing.assert_allclose(
            ops.convert_to_numpy(got), ops.convert_to_numpy(want), atol=1e-6
        )
    np.testing.assert_array_equal(
        ops.convert_to_numpy(on.cell.seed_generator.state),
        ops.convert_to_numpy(off.cell.seed_generator.state),
    )
    assert fake_gpu


def test_xla_and_portable_traces_never_hold_cudnn(fake_gpu):
    """jit_compile=True compiles the own kernel (cuDNN ops are not XLA ops);
    inside portable() (every serving export) cuDNN is off even with True."""
    import tensorflow as tf

    on, off = pair()
    want = off(inputs()).numpy()
    got = tf.function(on, jit_compile=True)(inputs()).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert fake_gpu == []
    forced = keras_gates.LSTM(UNITS, use_cudnn=True)
    with cudnn.portable():
        forced(inputs())
    assert fake_gpu == []
    forced(inputs())
    assert len(fake_gpu) == 1


def test_supports_jit_is_off_where_cudnn_can_run(fake_gpu):
    """Keras's jit_compile="auto" then leaves XLA off, as for keras.layers.LSTM."""
    model = keras.Sequential([keras.Input((None, FEATURES)), keras_gates.LSTM(UNITS)])
    model.compile("sgd", "mse")
    assert model.layers[0].supports_jit is False
    assert model.jit_compile is False
    plain = keras.Sequential(
        [keras.Input((None, FEATURES)), keras_gates.LSTM(UNITS, use_cudnn=False)]
    )
    assert plain.layers[0].supports_jit is True
    assert keras_gates.LSTM(UNITS, forget_gate=False).supports_jit is True


def test_traces_take_the_per_step_path(fake_gpu):
    """trace_gates and gate_statistics read every gate: never cuDNN."""
    model = keras.Sequential([keras.Input((None, FEATURES)), keras_gates.LSTM(UNITS)])
    trace = keras_gates.trace_gates(model, inputs())
    assert trace["o"].shape[:2] == (BATCH, TIME)
    assert fake_gpu == []


def test_an_export_made_where_cudnn_runs_holds_no_gpu_only_op(monkeypatch, tmp_path):
    """Keras's real kernel, told there is a GPU, puts CudnnRNNV3 in a traced
    graph of the model; the serving export of the same model has none, and
    TF Serving's C++ loader (CPU) runs it."""
    import sys

    import tensorflow as tf

    from keras_gates.serving.export import GPU_ONLY_OPS, graph_ops

    keras_rnn = sys.modules[keras_internals.keras_lstm_kernel().__module__]
    monkeypatch.setattr(keras_rnn, "_is_gpu_available", lambda: True)
    monkeypatch.setattr(cudnn, "gpu_available", lambda: True)
    model = keras.Sequential(
        [
            keras.Input((None, FEATURES)),
            keras_gates.LSTM(UNITS, return_sequences=True),
            keras.layers.Dense(1),
        ]
    )
    traced = tf.function(model).get_concrete_function(
        tf.TensorSpec((None, None, FEATURES), tf.float32)
    )
    graph = traced.graph.as_graph_def()
    traced_ops = {node.op for node in graph.node} | {
        node.op for function in graph.library.function for node in function.node_def
    }
    assert "CudnnRNNV3" in traced_ops  # the patch really makes cuDNN run

    path = keras_gates.export_for_serving(model, tmp_path, "on_gpu", verify=True)
    assert graph_ops(path) & set(GPU_ONLY_OPS) == set()
