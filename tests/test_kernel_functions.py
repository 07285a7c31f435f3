"""The sequence kernels as functions on tensors, with no layer in sight.

``kernels.lstm_sequence`` / ``gru_sequence`` in every form against the NumPy
oracle (tests/reference.py): masks, go_backwards, initial state, dropout
masks; their gradients against those of Keras's own loop over the cell's
readable ``call`` (``keras.layers.RNN(cell)``), both through the backend's
autodiff; the same compiled (``tf.function(jit_compile=True)`` / ``jax.jit``).
The tests marked ``jax_parity`` run again under KERAS_BACKEND=jax
(tests/test_backends.py).

Also here, because they are about which loop runs: the layers know when XLA
compiles them; a ``GatedCell`` subclass with its own ``call`` runs that
``call``; inference draws no dropout masks.

Tolerances: float32 kernels against the float64 oracle, ATOL/RTOL as
conftest.py; gradients 1e-4 (sums over <= 6 steps of 5 units).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import ATOL, RTOL, as_numpy, make_layer, reference
from keras import ops

import keras_gates
from keras_gates import kernels
from keras_gates.base import GatedCell, GatedRNN

BACKEND = keras.backend.backend()
GRAD_ATOL = 1e-4
# The loop forms, which take every option; the "block" forms (TensorFlow's
# fused ops) and the LSTM's "bptt" form take fewer and have their own tests
# below.
VARIANT_FORMS = [
    (variant, form)
    for variant in ("lstm", "lstm_no_forget", "gru")
    for form in (kernels.GRU_FORMS if variant == "gru" else kernels.LSTM_FORMS)
    if form not in ("block", "bptt")
]
GAPS = [[1, 0, 1, 0, 1, 1], [0, 1, 1, 0, 0, 1], [1, 1, 0, 1, 0, 0]]
LEFT_PADDING = [[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]]
# name -> (kernel options, what the oracle gets)
CASES = {
    "plain": {},
    "gaps_backwards": {"mask": GAPS, "go_backwards": True},
    "left_padding_initial_state_zero_output": {
        "mask": LEFT_PADDING,
        "initial_state": True,
        "zero_output_for_mask": True,
    },
    "last_output_with_mask": {"mask": GAPS, "return_sequences": False},
    "dropout_masks": {"dropout": True},
    "dropout_masks_per_gate_block": {"dropout": "per_block"},
}


def kernel_call(variant, weights, x, form, **options):
    """The variant's kernel on NumPy inputs; weights as NumPy arrays."""
    x = ops.convert_to_tensor(x)
    kernel, recurrent_kernel, bias = (ops.convert_to_tensor(w) for w in weights)
    units = weights[1].shape[0]
    states = options.pop("states", None)
    if states is None:
        states = [ops.zeros((x.shape[0], units)) for _ in range(2)]
    states = [ops.convert_to_tensor(s) for s in states]
    if variant == "gru":
        return kernels.gru_sequence(
            x, states[0], options.pop("mask", None), kernel, recurrent_kernel, bias,
            form=form, **options,
        )  # fmt: skip
    return kernels.lstm_sequence(
        x, states[0], states[1], options.pop("mask", None), kernel, recurrent_kernel,
        bias, forget_gate=variant == "lstm", form=form, **options,
    )  # fmt: skip


def random(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


@pytest.mark.jax_parity
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("variant,form", VARIANT_FORMS)
def test_kernel_equals_oracle(variant, form, case):
    spec = dict(CASES[case])
    layer = make_layer(variant, 5, 4)  # only for its random weights
    weights = [np.asarray(w) for w in layer.cell.get_weights()]
    x = random((3, 6, 4), 1)
    n_states = 1 if variant == "gru" else 2
    options = {"return_sequences": spec.pop("return_sequences", True)}
    oracle = {}
    if "mask" in spec:
        options["mask"] = oracle["mask"] = np.array(spec.pop("mask"), bool)
    for name in ("go_backwards", "zero_output_for_mask"):
        if name in spec:
            options[name] = oracle[name] = spec.pop(name)
    if spec.pop("initial_state", False):
        states = [random((3, 5), 7 + k) for k in range(n_states)]
        options["states"] = states
        oracle["initial_state"] = states
    dropout = spec.pop("dropout", False)
    if dropout == "per_block":
        # Keras's implementation 1: one mask per gate block, block order.
        blocks = weights[1].shape[1] // 5
        input_mask = [
            (random((3, 4), 30 + j) > 0).astype("float32") * 2.0 for j in range(blocks)
        ]
        recurrent_mask = [
            (random((3, 5), 40 + j) > -0.5).astype("float32") / 0.7
            for j in range(blocks)
        ]
        options["input_dropout_mask"] = input_mask
        options["recurrent_dropout_mask"] = recurrent_mask
        x_oracle = x
        oracle["input_mask"] = input_mask
        oracle["recurrent_mask"] = recurrent_mask
    elif dropout:
        input_mask = (random((3, 4), 3) > 0).astype("float32") * 2.0
        recurrent_mask = (random((3, 5), 4) > -0.5).astype("float32") / 0.7
        options["input_dropout_mask"] = input_mask
        options["recurrent_dropout_mask"] = recurrent_mask
        x_oracle = x * input_mask[:, None, :]
        oracle["recurrent_mask"] = recurrent_mask
    else:
        x_oracle = x
    assert not spec
    last, outputs, states = kernel_call(variant, weights, x, form, **options)
    want_outputs, want_last, want_states, _ = reference(
        variant, layer, x_oracle, **oracle
    )
    np.testing.assert_allclose(as_numpy(last), want_last, rtol=RTOL, atol=ATOL)
    if options["return_sequences"]:
        np.testing.assert_allclose(
            as_numpy(outputs), want_outputs, rtol=RTOL, atol=ATOL
        )
    else:
        assert tuple(outputs.shape) == (3, 1, 5)
    assert len(states) == n_states
    for got, want in zip(states, want_states):
        np.testing.assert_allclose(as_numpy(got), want, rtol=RTOL, atol=ATOL)


def gradients(fn, args):
    """d fn(*args) / d args through the backend's autodiff."""
    args = [ops.convert_to_tensor(a) for a in args]
    if BACKEND == "jax":
        import jax

        return jax.grad(fn, argnums=tuple(range(len(args))))(*args)
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(args)
        value = fn(*args)
    return tape.gradient(value, args)


def weighted_sum(outputs):
    """A loss in which every output element has its own weight."""
    size = int(np.prod(outputs.shape))
    weights = ops.reshape(
        ops.linspace(-1.0, 1.0, size, dtype=outputs.dtype), outputs.shape
    )
    return ops.sum(outputs * weights)


def keras_loop(variant, layer, mask):
    """fn(x, *weights) -> loss over Keras's own loop of the cell's `call`."""
    rnn = keras.layers.RNN(layer.cell, return_sequences=True)
    rnn.build((None, None, 4))
    frozen = [v.value for v in rnn.non_trainable_variables]

    def fn(x, *weights):
        outputs = rnn.stateless_call(list(weights), frozen, x, mask=mask)[0]
        return weighted_sum(outputs)

    return fn


def kernel_loop(variant, form, mask):
    def fn(x, *weights):
        _, outputs, _ = kernel_call(
            variant, weights, x, form, mask=mask, return_sequences=True
        )
        return weighted_sum(outputs)

    return fn


def jit(fn):
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    return tf.function(fn, jit_compile=True)


@pytest.mark.jax_parity
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("variant,form", VARIANT_FORMS)
def test_kernel_gradients_equal_keras_loop_over_call(variant, form, compiled):
    """Values and gradients (inputs and every weight) of each form, eagerly
    and compiled, equal Keras's loop over the cell's readable `call`."""
    if BACKEND == "jax" and not compiled:
        pytest.skip("JAX compiles its scan either way: the jit case covers it")
    layer = make_layer(variant, 5, 4)
    weights = [np.asarray(w) for w in layer.cell.get_weights()]
    x = random((3, 6, 4), 2)
    mask = ops.convert_to_tensor(np.array(GAPS, bool))
    args = [x, *weights]
    ours = kernel_loop(variant, form, mask)
    theirs = keras_loop(variant, layer, mask)

    def value_and_gradients(fn):
        return fn(*[ops.convert_to_tensor(a) for a in args]), gradients(fn, args)

    if compiled:
        got = jit(lambda *a: (ours(*a), gradients(ours, a)))(
            *[ops.convert_to_tensor(a) for a in args]
        )
    else:
        got = value_and_gradients(ours)
    want = value_and_gradients(theirs)
    np.testing.assert_allclose(
        as_numpy(got[0]), as_numpy(want[0]), rtol=RTOL, atol=ATOL
    )
    for g, w in zip(got[1], want[1], strict=True):
        np.testing.assert_allclose(as_numpy(g), as_numpy(w), rtol=RTOL, atol=GRAD_ATOL)


@pytest.mark.jax_parity
def test_form_is_checked():
    layer = make_layer("gru", 2, 3)
    weights = [np.asarray(w) for w in layer.cell.get_weights()]
    with pytest.raises(ValueError, match=r"`form` must be 'auto' or one of"):
        kernel_call("gru", weights, random((1, 2, 3), 0), "compiled")


# -- the LSTM's "block" form (tf.raw_ops.BlockLSTMV2) ----------------------- #

needs_tf = pytest.mark.skipif(BACKEND != "tensorflow", reason="a TensorFlow op")
BLOCK_CASES = {
    "sequences": {},
    "backwards_initial_state": {"go_backwards": True, "initial_state": True},
    "last_output": {"return_sequences": False, "initial_state": True},
    "input_dropout_mask": {"input_dropout": True, "go_backwards": True},
    "no_bias": {"no_bias": True},
}


@needs_tf
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf_function"])
@pytest.mark.parametrize("case", sorted(BLOCK_CASES))
def test_block_form_equals_oracle_and_the_loop_forms(case, graph):
    """Outputs and final states (return_state) against the NumPy oracle, and
    against the loop forms on the same call."""
    import tensorflow as tf

    spec = dict(BLOCK_CASES[case])
    layer = make_layer("lstm", 5, 4, use_bias=not spec.get("no_bias", False))
    weights = [np.asarray(w) for w in layer.cell.get_weights()]
    if spec.pop("no_bias", False):
        weights.append(None)
    x = random((3, 6, 4), 11)
    options = {"return_sequences": spec.pop("return_sequences", True)}
    oracle = {}
    if spec.pop("go_backwards", False):
        options["go_backwards"] = oracle["go_backwards"] = True
    if spec.pop("initial_state", False):
        states = [random((3, 5), 21 + k) for k in range(2)]
        options["states"] = oracle["initial_state"] = states
    x_oracle = x
    if spec.pop("input_dropout", False):
        input_mask = (random((3, 4), 5) > 0).astype("float32") * 2.0
        options["input_dropout_mask"] = input_mask
        x_oracle = x * input_mask[:, None, :]
    assert not spec

    def call(form):
        def fn(x):
            return block_call(weights, x, form, **dict(options))

        fn = tf.function(fn) if graph else fn
        return [as_numpy(t) for t in nest_flatten(fn(tf.constant(x)))]

    got = call("block")
    want_outputs, want_last, want_states, _ = reference(
        "lstm", layer, x_oracle, **oracle
    )
    last, outputs, h_t, s_t = got
    np.testing.assert_allclose(last, want_last, rtol=RTOL, atol=ATOL)
    if options["return_sequences"]:
        np.testing.assert_allclose(outputs, want_outputs, rtol=RTOL, atol=ATOL)
    else:
        assert outputs.shape == (3, 1, 5)
    for value, want in zip((h_t, s_t), want_states, strict=True):
        np.testing.assert_allclose(value, want, rtol=RTOL, atol=ATOL)
    for form in ("small", "large", "compiled"):
        for value, other in zip(got, call(form), strict=True):
            np.testing.assert_allclose(value, other, rtol=1e-5, atol=1e-6)


def block_call(weights, x, form, **options):
    """kernel_call for the LSTM, with a bias of None allowed."""
    kernel, recurrent_kernel = (ops.convert_to_tensor(w) for w in weights[:2])
    bias = None if weights[2] is None else ops.convert_to_tensor(weights[2])
    states = options.pop("states", None)
    if states is None:
        states = [ops.zeros((x.shape[0], weights[1].shape[0]))] * 2
    states = [ops.convert_to_tensor(s) for s in states]
    return kernels.lstm_sequence(
        x, states[0], states[1], options.pop("mask", None), kernel,
        recurrent_kernel, bias, form=form, **options,
    )  # fmt: skip


def nest_flatten(result):
    last, outputs, states = result
    return [last, outputs, *states]


@needs_tf
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf_function"])
def test_block_form_gradients_equal_keras_loop_and_large_form(graph):
    """Gradients of inputs, every weight and the initial states, through the
    op's own gradient op (BlockLSTMGradV2): Keras's loop over the cell's
    `call` for x and the weights, the large (training) form for all."""
    import tensorflow as tf

    def gradients_of(fn, args):
        if not graph:
            return gradients(fn, args)
        return tf.function(lambda *a: gradients(fn, a))(*[tf.constant(a) for a in args])

    layer = make_layer("lstm", 5, 4)
    weights = [np.asarray(w) for w in layer.cell.get_weights()]
    x = random((3, 6, 4), 12)
    h0, s0 = random((3, 5), 31), random((3, 5), 32)

    def loss(form):
        def fn(x, kernel, recurrent_kernel, bias, h0, s0):
            last, outputs, (h_t, s_t) = kernels.lstm_sequence(
                x, h0, s0, None, kernel, recurrent_kernel, bias,
                return_sequences=True, form=form, training=True,
            )  # fmt: skip
            return weighted_sum(outputs) + ops.sum(s_t * s_t) + ops.sum(last)

        return fn

    args = [x, *weights, h0, s0]
    got = gradients_of(loss("block"), args)
    for g, w in zip(got, gradients(loss("large"), args), strict=True):
        np.testing.assert_allclose(as_numpy(g), as_numpy(w), rtol=RTOL, atol=GRAD_ATOL)

    def block_only_outputs(x, *weights):
        return kernel_loop("lstm", "block", None)(x, *weights)

    got = gradients_of(block_only_outputs, [x, *weights])
    want = gradients(keras_loop("lstm", layer, None), [x, *weights])
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(as_numpy(g), as_numpy(w), rtol=RTOL, atol=GRAD_ATOL)
    assert bool(tf.reduce_all(tf.math.is_finite(got[0])))


@needs_tf
@pytest.mark.parametrize(
    "why,options,match",
    [
        ("mask", {"mask": np.ones((2, 3), bool)}, "no per-step mask"),
        ("recurrent_dropout", {"recurrent_dropout_mask": np.ones((2, 5), "float32")},
         "recurrent dropout"),
        ("no_forget_gate", {"forget_gate": False}, "forget gate"),
        ("activation", {"activation": keras.activations.relu}, "sigmoid gates"),
        ("float64", {"dtype": "float64"}, "float32 only"),
        ("float16", {"dtype": "float16"}, "float32 only"),
        ("input_dropout_per_block",
         {"input_dropout_mask": [np.ones((2, 4), "float32")] * 4},
         "one input dropout mask"),
    ],
)  # fmt: skip
def test_block_form_refuses_what_it_does_not_compute(why, options, match):
    options = dict(options)
    dtype = options.pop("dtype", "float32")
    n = 3 if options.get("forget_gate") is False else 4
    x = ops.convert_to_tensor(random((2, 3, 4), 0).astype(dtype))
    zeros = ops.zeros((2, 5), dtype)
    weights = [
        ops.convert_to_tensor(random(shape, 1).astype(dtype))
        for shape in ((4, n * 5), (5, n * 5), (n * 5,))
    ]
    mask = options.pop("mask", None)
    with pytest.raises(ValueError, match=rf"`form='block'` does not apply.*{match}"):
        kernels.lstm_sequence(x, zeros, zeros, mask, *weights, form="block", **options)


@needs_tf
def test_block_form_refuses_xla():
    import tensorflow as tf

    layer = make_layer("lstm", 5, 4)
    weights = [np.asarray(w) for w in layer.cell.get_weights()]
    compiled = tf.function(
        lambda x: kernel_call("lstm", weights, x, "block")[0], jit_compile=True
    )
    with pytest.raises(ValueError, match="XLA has no kernel for BlockLSTMV2"):
        compiled(tf.constant(random((1, 3, 4), 0)))


# -- the GRU's "block" form (tf.raw_ops.GRUBlockCell per step) -------------- #

GRU_BLOCK_CASES = sorted(c for c in CASES if not c.startswith("dropout"))


@needs_tf
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf_function"])
@pytest.mark.parametrize("case", GRU_BLOCK_CASES)
def test_gru_block_form_equals_oracle_and_the_loop_forms(case, graph):
    """Outputs and final state against the NumPy oracle (the cases of
    test_kernel_equals_oracle without dropout: masks, go_backwards, initial
    state, zero_output_for_mask, last output), and against the loop forms on
    the same call."""
    import tensorflow as tf

    if not graph:
        test_kernel_equals_oracle("gru", "block", case)
    layer = make_layer("gru", 5, 4)
    weights = [np.asarray(w) for w in layer.cell.get_weights()]
    x = random((3, 6, 4), 1)
    spec = dict(CASES[case])
    options = {"return_sequences": spec.pop("return_sequences", True)}
    if "mask" in spec:
        options["mask"] = np.array(spec.pop("mask"), bool)
    for name in ("go_backwards", "zero_output_for_mask"):
        if name in spec:
            options[name] = spec.pop(name)
    if spec.pop("initial_state", False):
        options["states"] = [random((3, 5), 7)]
    assert not spec

    def call(form):
        def fn(x):
            return kernel_call("gru", weights, x, form, **dict(options))

        fn = tf.function(fn) if graph else fn
        return [as_numpy(t) for t in nest_flatten(fn(tf.constant(x)))]

    got = call("block")
    for form in ("small", "large"):
        for value, other in zip(got, call(form), strict=True):
            np.testing.assert_allclose(value, other, rtol=1e-5, atol=1e-6)


@needs_tf
def test_gru_block_form_with_an_input_dropout_mask_and_no_bias():
    """One input mask (applied to x before the op) and no bias (zeros)."""
    layer = make_layer("gru", 5, 4, use_bias=False)
    weights = [*(np.asarray(w) for w in layer.cell.get_weights()), None]
    x = random((3, 6, 4), 2)
    input_mask = (random((3, 4), 5) > 0).astype("float32") * 2.0
    kernel, recurrent_kernel = (ops.convert_to_tensor(w) for w in weights[:2])
    last, outputs, (s_t,) = kernels.gru_sequence(
        ops.convert_to_tensor(x), ops.zeros((3, 5)), None, kernel,
        recurrent_kernel, None, input_dropout_mask=input_mask,
        return_sequences=True, form="block",
    )  # fmt: skip
    want_outputs, want_last, (want_s,), _ = reference(
        "gru", layer, x * input_mask[:, None, :]
    )
    np.testing.assert_allclose(as_numpy(outputs), want_outputs, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(as_numpy(last), want_last, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(as_numpy(s_t), want_s, rtol=RTOL, atol=ATOL)


@needs_tf
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf_function"])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("keep", [False, True], ids=["last", "sequences"])
def test_gru_block_form_gradients_equal_the_large_form(keep, masked, graph):
    """Gradients of the inputs, every weight and the initial state through
    the form's own gradient (GRUBlockCellGrad per step) equal the large
    form's, with a mask (masked steps pass the gradient on) or without, from
    the last output alone or every output."""
    import tensorflow as tf

    layer = make_layer("gru", 5, 4)
    weights = [np.asarray(w) for w in layer.cell.get_weights()]
    x = random((3, 6, 4), 13)
    s0 = random((3, 5), 33)
    mask = tf.constant(np.array(GAPS, bool)) if masked else None

    def loss(form):
        def fn(x, kernel, recurrent_kernel, bias, s0):
            last, outputs, (s_t,) = kernels.gru_sequence(
                x, s0, mask, kernel, recurrent_kernel, bias,
                return_sequences=keep, form=form,
            )  # fmt: skip
            total = ops.sum(s_t * s_t) + ops.sum(last)
            return total + weighted_sum(outputs) if keep else total

        return fn

    def gradients_of(fn, args):
        if not graph:
            return gradients(fn, args)
        return tf.function(lambda *a: gradients(fn, a))(*[tf.constant(a) for a in args])

    args = [x, *weights, s0]
    got = gradients_of(loss("block"), args)
    want = gradients(loss("large"), args)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(as_numpy(g), as_numpy(w), rtol=RTOL, atol=GRAD_ATOL)


@needs_tf
def test_gru_block_form_gradients_equal_keras_loop_over_call():
    """Against Keras's own loop over the cell's `call`, with gaps."""
    layer = make_layer("gru", 5, 4)
    weights = [np.asarray(w) for w in layer.cell.get_weights()]
    x = random((3, 6, 4), 2)
    mask = ops.convert_to_tensor(np.array(GAPS, bool))
    args = [x, *weights]
    got = gradients(kernel_loop("gru", "block", mask), args)
    want = gradients(keras_loop("gru", layer, mask), args)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(as_numpy(g), as_numpy(w), rtol=RTOL, atol=GRAD_ATOL)


@needs_tf
@pytest.mark.parametrize(
    "why,options,match",
    [
        ("recurrent_dropout", {"recurrent_dropout_mask": np.ones((2, 5), "float32")},
         "recurrent dropout"),
        ("input_dropout_per_block",
         {"input_dropout_mask": [np.ones((2, 4), "float32")] * 3},
         "one input dropout mask"),
        ("activation", {"activation": keras.activations.relu}, "sigmoid gates"),
        ("float64", {"dtype": "float64"}, "float32 only"),
        ("float16", {"dtype": "float16"}, "float32 only"),
    ],
)  # fmt: skip
def test_gru_block_form_refuses_what_it_does_not_compute(why, options, match):
    options = dict(options)
    dtype = options.pop("dtype", "float32")
    x = ops.convert_to_tensor(random((2, 3, 4), 0).astype(dtype))
    weights = [
        ops.convert_to_tensor(random(shape, 1).astype(dtype))
        for shape in ((4, 15), (5, 15), (15,))
    ]
    with pytest.raises(ValueError, match=rf"`form='block'` does not apply.*{match}"):
        kernels.gru_sequence(
            x, ops.zeros((2, 5), dtype), None, *weights, form="block", **options
        )


@needs_tf
def test_gru_block_form_refuses_xla():
    import tensorflow as tf

    layer = make_layer("gru", 5, 4)
    weights = [np.asarray(w) for w in layer.cell.get_weights()]
    compiled = tf.function(
        lambda x: kernel_call("gru", weights, x, "block")[0], jit_compile=True
    )
    with pytest.raises(ValueError, match="XLA has no kernel for GRUBlockCell"):
        compiled(tf.constant(random((1, 3, 4), 0)))


@pytest.fixture
def forms_ran(monkeypatch):
    """The forms the LSTM and GRU kernels run, in call order: "block" for
    the one op, else the loop form `_scan` runs."""
    ran = []
    original_block, original_scan = kernels._block_lstm, kernels._scan
    original_bptt = kernels._bptt_lstm

    def block_spy(*args):
        ran.append("block")
        return original_block(*args)

    def bptt_spy(*args):
        ran.append("bptt")
        return original_bptt(*args)

    def scan_spy(step, init, inputs, mask, keep, form, training):
        ran.append(form)
        return original_scan(step, init, inputs, mask, keep, form, training)

    monkeypatch.setattr(kernels, "_block_lstm", block_spy)
    monkeypatch.setattr(kernels, "_bptt_lstm", bptt_spy)
    monkeypatch.setattr(kernels, "_scan", scan_spy)
    return ran


@needs_tf
def test_auto_picks_the_block_form_by_batch_and_mask(forms_ran):
    """Inference in the graph executor: "block" up to its batch, unmasked;
    a mask or a larger batch takes the loop forms (with the oracle's values);
    a dynamic batch traces every form and runs the one for its size."""
    import tensorflow as tf

    ran = forms_ran
    layer = make_layer("lstm", 5, 4)
    small_max = layer.fused_max_batch
    above_block = "small" if small_max > kernels.BLOCK_BATCH_MAX else "unrolled"
    top = kernels.UNROLLED_BATCH_MAX
    for batch, masked, form in [
        (1, False, "block"),
        (kernels.BLOCK_BATCH_MAX, False, "block"),
        (1, True, "small"),
        (kernels.BLOCK_BATCH_MAX + 1, False, above_block),
        (max(small_max, kernels.BLOCK_BATCH_MAX) + 1, False, "unrolled"),
        (small_max + 1, True, "unrolled"),
        (top, True, "unrolled"),
        (top + 1, False, "compiled"),
        (top + 1, True, "compiled"),
    ]:  # fmt: skip
        ran.clear()
        x = random((batch, 6, 4), batch)
        mask = np.ones((batch, 6), bool)
        if masked:
            mask[:, 4:] = False
        got = tf.function(layer)(
            tf.constant(x), mask=tf.constant(mask) if masked else None
        )
        assert ran == [form], (batch, masked)
        want = reference("lstm", layer, x, mask=mask if masked else None)[1]
        np.testing.assert_allclose(as_numpy(got), want, rtol=RTOL, atol=ATOL)
    ran.clear()
    dynamic = tf.function(
        layer, input_signature=[tf.TensorSpec((None, None, 4), tf.float32)]
    )
    for batch in (1, kernels.BLOCK_BATCH_MAX + 1, top + 1):
        x = random((batch, 6, 4), batch)
        got = dynamic(tf.constant(x))
        np.testing.assert_allclose(
            as_numpy(got), reference("lstm", layer, x)[1], rtol=RTOL, atol=ATOL
        )
    assert {"block", "unrolled", "compiled"} <= set(ran)  # every form traced


STEPS = kernels.UNROLLED_STEPS


def _sequence(variant, x, states, mask, weights, form):
    """The variant's kernel, backwards over a stacked sequence: (outputs,
    the last state)."""
    function = kernels.gru_sequence if variant == "gru" else kernels.lstm_sequence
    _, outputs, final = function(
        x, *states, ops.convert_to_tensor(mask), *weights, form=form,
        go_backwards=True, return_sequences=True,
    )  # fmt: skip
    return outputs, final[-1]


# The small forms' loops share the unrolled form's loop code: below
# UNROLLED_STEPS (the second loop alone) the unrolled form's cases stand for
# them.
UNROLLED_CASES = [("unrolled", t) for t in (1, STEPS - 1)] + [
    (form, t)
    for form in ("unrolled", *kernels.UNROLLED_LOOP_FORMS)
    for t in (STEPS, STEPS + 1, 2 * STEPS + 3)
]


@pytest.mark.jax_parity
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "dynamic_shape"])
@pytest.mark.parametrize("variant", ["lstm", "gru"])
@pytest.mark.parametrize("form,time", UNROLLED_CASES)
def test_unrolled_form_at_lengths_around_its_steps(form, variant, time, graph):
    """The "unrolled" form (and in TensorFlow's graph executor the small
    forms' loops, UNROLLED_LOOP_FORMS) runs UNROLLED_STEPS steps per loop
    iteration and the rest one each: at every length around that count, with a mask,
    go_backwards, an initial state and a stacked sequence, its values equal
    the oracle and its gradients (inputs, weights, initial states) equal those
    of Keras's own loop over the cell's readable `call` (JAX: see below);
    also traced with no static batch or length (TensorFlow: the trip counts
    are computed at run time)."""
    if graph and BACKEND != "tensorflow":
        pytest.skip("a TensorFlow graph with unknown dimensions")
    if form != "unrolled" and BACKEND != "tensorflow":
        pytest.skip("the small forms' loops unroll in TensorFlow only")
    if form == "block" and variant == "lstm":
        pytest.skip("the LSTM's block form takes no mask")
    layer = make_layer(variant, 5, 4)
    weights = [np.asarray(w) for w in layer.cell.get_weights()]
    x = random((3, time, 4), time)
    mask = random((3, time), time + 1) > -0.6
    mask[2, :] = False  # a row with no step read
    states = [random((3, 5), 50 + k) for k in range(2 if variant == "lstm" else 1)]
    args = [x, *states, *weights]
    n_states = len(states)
    # every output element with its own weight in the loss
    spread = np.linspace(-1.0, 1.0, 3 * time * 5, dtype="float32").reshape(3, time, 5)

    def loss(outputs, s_last):
        return ops.sum(outputs * ops.convert_to_tensor(spread)) + ops.sum(s_last**2)

    def of_form(form):
        def run(*a):
            outputs, s_last = _sequence(
                variant, a[0], a[1 : 1 + n_states], mask, a[1 + n_states :], form
            )
            return loss(outputs, s_last), outputs

        return run

    rnn = keras.layers.RNN(
        layer.cell, return_sequences=True, return_state=True, go_backwards=True
    )
    rnn.build((None, None, 4))
    frozen = [v.value for v in rnn.non_trainable_variables]

    def keras_loop_loss(*a):
        outputs, *final = rnn.stateless_call(
            list(a[1 + n_states :]), frozen, a[0], mask=ops.convert_to_tensor(mask),
            initial_state=list(a[1 : 1 + n_states]),
        )[0]  # fmt: skip
        return loss(outputs, final[-1])

    def run(fn):
        value = lambda *a: fn(*a)[0]  # noqa: E731
        outputs = fn(*[ops.convert_to_tensor(a) for a in args])[1]
        if not graph:
            return outputs, gradients(value, args)
        import tensorflow as tf

        spec = [tf.TensorSpec((None,) * np.ndim(a), tf.float32) for a in args]
        spec[1 + n_states :] = [tf.TensorSpec(np.shape(w), tf.float32) for w in weights]
        traced = tf.function(
            lambda *a: (fn(*a)[1], gradients(value, a)), input_signature=spec
        )
        return traced(*[tf.constant(a) for a in args])

    outputs, grads = run(of_form(form))
    want = reference(
        variant, layer, x, mask=mask, go_backwards=True, initial_state=states
    )[0]
    np.testing.assert_allclose(as_numpy(outputs), want, rtol=RTOL, atol=ATOL)

    # Keras's JAX loop outputs h_0 at the masked steps before a row's first
    # read step (its outputs differ from the oracle there: rows 0 and 2
    # here); on JAX the one-step loop, checked against Keras's loop by
    # test_kernel_gradients_equal_keras_loop_over_call, stands in.
    one_step = of_form("compiled" if variant == "lstm" else "large")
    oracle_loss = (lambda *a: one_step(*a)[0]) if BACKEND == "jax" else keras_loop_loss
    keras_grads = gradients(oracle_loss, args)
    for got, expected in zip(grads, keras_grads, strict=True):
        np.testing.assert_allclose(
            as_numpy(got), as_numpy(expected), rtol=RTOL, atol=GRAD_ATOL
        )


@pytest.mark.jax_parity
@pytest.mark.parametrize("variant", ["lstm", "gru"])
def test_auto_takes_the_unrolled_form_under_jax_on_an_accelerator(
    variant, forms_ran, monkeypatch
):
    """Where JAX runs on a GPU or TPU (made to answer so here), inference
    and training take "unrolled" at any batch, masked or not, with the
    oracle's values; in training the weights' gradients equal those of the
    Keras built-in with the same weights."""
    monkeypatch.setattr(kernels, "accelerated_jax", lambda: True)
    layer = make_layer(variant, 5, 4, return_sequences=True)
    for batch, masked in [
        (1, False),
        (3, True),
        (kernels.UNROLLED_BATCH_MAX + 1, False),
    ]:
        forms_ran.clear()
        x = random((batch, 12, 4), batch)
        mask = np.ones((batch, 12), bool)
        mask[:, 9:] = not masked
        got = layer(ops.convert_to_tensor(x), mask=ops.convert_to_tensor(mask))
        assert forms_ran == ["unrolled"], (batch, masked)
        want = reference(variant, layer, x, mask=mask)[0]
        np.testing.assert_allclose(as_numpy(got), want, rtol=RTOL, atol=ATOL)
    forms_ran.clear()
    x = ops.convert_to_tensor(random((2, 12, 4), 7))
    layer(x, training=True)
    assert forms_ran == ["unrolled"]
    values = [v.value for v in layer.trainable_variables]
    frozen = [v.value for v in layer.non_trainable_variables]

    def loss(*weights):
        outputs = layer.stateless_call(list(weights), frozen, x, training=True)[0]
        return ops.sum(outputs**2)

    builtin = (
        keras.layers.GRU(5, reset_after=False, return_sequences=True)
        if variant == "gru"
        else keras.layers.LSTM(5, return_sequences=True)
    )
    builtin.build((None, None, 4))
    builtin.set_weights(layer.get_weights())  # the same variables and order
    builtin_frozen = [v.value for v in builtin.non_trainable_variables]

    def builtin_loss(*weights):
        outputs = builtin.stateless_call(
            list(weights), builtin_frozen, x, training=True
        )[0]
        return ops.sum(outputs**2)

    got = gradients(loss, values)
    want = gradients(builtin_loss, [v.value for v in builtin.trainable_variables])
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(as_numpy(g), as_numpy(w), rtol=RTOL, atol=GRAD_ATOL)


def test_accelerated_jax_answers_for_jax_alone(monkeypatch):
    """False on every backend but JAX (whatever the devices); under JAX,
    whether the devices Keras computes on are an accelerator's."""
    platforms = [("cpu", False), ("gpu", True), ("tpu", True)]
    for platform, accelerated in platforms:
        monkeypatch.setattr(
            keras.distribution, "list_devices", lambda p=platform: [f"{p}:0"]
        )
        assert kernels.accelerated_jax() is (accelerated and BACKEND == "jax")
    monkeypatch.undo()
    if BACKEND == "jax":  # this machine's own answer (no GPU in the suite)
        import jax

        assert kernels.accelerated_jax() is (jax.default_backend() != "cpu")


@pytest.mark.jax_parity
@pytest.mark.parametrize("form", ["unrolled", *kernels.UNROLLED_LOOP_FORMS])
@pytest.mark.parametrize("variant", ["lstm", "gru"])
def test_unrolled_loops_without_a_stacked_sequence(variant, form):
    """The loops that run several steps per iteration, also where they keep
    no sequence (no mask, the last output only): at lengths with whole
    iterations and a remainder, the last output and final states equal the
    oracle's; with a dynamic batch and length too (TensorFlow)."""
    if form != "unrolled" and BACKEND != "tensorflow":
        pytest.skip("the small forms' loops unroll in TensorFlow only")
    function = kernels.gru_sequence if variant == "gru" else kernels.lstm_sequence
    layer = make_layer(variant, 5, 4)
    weights = [ops.convert_to_tensor(w) for w in layer.cell.get_weights()]
    n_states = 1 if variant == "gru" else 2

    def run(x, *states):
        last, _, final = function(x, *states, None, *weights, form=form)
        return last, final[-1]

    for time in (STEPS, 2 * STEPS + 3):
        x = random((3, time, 4), time)
        states = [random((3, 5), 60 + k) for k in range(n_states)]
        want = reference(variant, layer, x, initial_state=states)
        runs = [run(ops.convert_to_tensor(x), *map(ops.convert_to_tensor, states))]
        if BACKEND == "tensorflow":
            import tensorflow as tf

            spec = [tf.TensorSpec((None, None, 4), tf.float32)] + [
                tf.TensorSpec((None, 5), tf.float32)
            ] * n_states
            traced = tf.function(run, input_signature=spec)
            runs.append(traced(tf.constant(x), *map(tf.constant, states)))
        for last, s_last in runs:
            np.testing.assert_allclose(as_numpy(last), want[1], rtol=RTOL, atol=ATOL)
            np.testing.assert_allclose(
                as_numpy(s_last), want[2][-1], rtol=RTOL, atol=ATOL
            )


def test_graph_executor_is_tensorflow_without_xla():
    """Where the small loops unroll and the GRU's ladder takes "unrolled":
    TensorFlow eager and graph, not under jit_compile, never another
    backend."""
    if BACKEND != "tensorflow":
        assert kernels.graph_executor() is False
        return
    import tensorflow as tf

    assert kernels.graph_executor() is True
    answers = {}

    @tf.function
    def graph():
        answers["graph"] = kernels.graph_executor()
        return tf.constant(0)

    @tf.function(jit_compile=True)
    def xla():
        answers["xla"] = kernels.graph_executor()
        return tf.constant(0)

    graph(), xla()
    assert answers == {"graph": True, "xla": False}


@needs_tf
def test_auto_picks_the_gru_block_form_by_batch(forms_ran):
    """The GRU's block form takes masked calls too (the loop's `where`), up
    to its batch; above it "small" (where the layer's fused_max_batch
    reaches further), "unrolled" up to UNROLLED_BATCH_MAX and "large" above;
    training takes "large"; a dynamic batch traces every form and runs the
    one for its size."""
    import tensorflow as tf

    layer = make_layer("gru", 5, 4, return_sequences=True)
    top = kernels.GRU_BLOCK_BATCH_MAX
    small_max = layer.fused_max_batch
    above_block = "small" if small_max > top else "unrolled"
    unrolled_max = kernels.UNROLLED_BATCH_MAX
    for batch, masked, training, form in [
        (1, False, False, "block"),
        (1, True, False, "block"),
        (top, True, False, "block"),
        (top + 1, False, False, above_block),
        (max(small_max, top) + 1, True, False, "unrolled"),
        (unrolled_max, False, False, "unrolled"),
        (unrolled_max + 1, True, False, "large"),
        (1, False, True, "large"),
    ]:  # fmt: skip
        forms_ran.clear()
        x = random((batch, 6, 4), batch)
        mask = np.ones((batch, 6), bool)
        mask[:, 4:] = not masked
        got = tf.function(lambda x, m, t=training: layer(x, mask=m, training=t))(
            tf.constant(x), tf.constant(mask) if masked else None
        )
        assert forms_ran == [form], (batch, masked, training)
        want = reference("gru", layer, x, mask=mask if masked else None)[0]
        np.testing.assert_allclose(as_numpy(got), want, rtol=RTOL, atol=ATOL)
    forms_ran.clear()
    dynamic = tf.function(
        layer, input_signature=[tf.TensorSpec((None, None, 4), tf.float32)]
    )
    for batch in (1, top + 1, unrolled_max + 1):
        x = random((batch, 6, 4), batch)
        np.testing.assert_allclose(
            as_numpy(dynamic(tf.constant(x))),
            reference("gru", layer, x)[0],
            rtol=RTOL,
            atol=ATOL,
        )
    assert {"block", "unrolled", "large"} <= set(forms_ran)  # every form traced


# Where the block form meets the layers' other options: it runs where it
# computes the same numbers, and leaves the call to a loop form where not.


@needs_tf
def test_block_form_with_dropout_runs_at_inference_only(forms_ran):
    """Dropout is off at inference: the block form runs the layer (no masks
    drawn); training takes the large form with its dropout masks."""
    import tensorflow as tf

    layer = make_layer("lstm", 5, 4, dropout=0.3, recurrent_dropout=0.2)
    x = random((2, 6, 4), 3)
    got = tf.function(lambda x: layer(x, training=False))(tf.constant(x))
    assert forms_ran == ["block"]
    want = reference("lstm", layer, x)[1]
    np.testing.assert_allclose(as_numpy(got), want, rtol=RTOL, atol=ATOL)
    forms_ran.clear()
    tf.function(lambda x: layer(x, training=True))(tf.constant(x))
    assert forms_ran == ["large"]


@needs_tf
def test_block_form_in_a_stateful_layer_carries_the_state(forms_ran):
    """Two calls of a stateful layer: the second starts from the first's
    final states (the op's h_prev and cs_prev), as the oracle."""
    import tensorflow as tf

    layer = make_layer("lstm", 5, 4, batch=2, stateful=True, return_sequences=True)
    call = tf.function(layer)
    first, second = random((2, 6, 4), 4), random((2, 3, 4), 5)
    got = [as_numpy(call(tf.constant(x))) for x in (first, second)]
    assert forms_ran == ["block", "block"]
    want_first, _, states, _ = reference("lstm", layer, first)
    want_second = reference("lstm", layer, second, initial_state=states)[0]
    np.testing.assert_allclose(got[0], want_first, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got[1], want_second, rtol=RTOL, atol=ATOL)


@needs_tf
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_block_form_in_bidirectional_equals_keras(masked, forms_ran):
    """Bidirectional runs the block form both ways (the backward layer
    through go_backwards) without a mask, the small form with one; values
    equal keras.layers.Bidirectional(keras.layers.LSTM) on the same weights."""
    import tensorflow as tf

    ours = keras.layers.Bidirectional(keras_gates.LSTM(5, return_sequences=True))
    theirs = keras.layers.Bidirectional(keras.layers.LSTM(5, return_sequences=True))
    for layer in (ours, theirs):
        layer.build((None, None, 4))
    rng = np.random.default_rng(6)
    theirs.set_weights(
        [rng.normal(scale=0.5, size=w.shape).astype("float32") for w in theirs.weights]
    )
    ours.set_weights(theirs.get_weights())
    x = random((2, 6, 4), 7)
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool) if masked else None
    feed = {"mask": tf.constant(mask)} if masked else {}
    got = tf.function(lambda x, **kw: ours(x, **kw))(tf.constant(x), **feed)
    want = theirs(x, mask=mask)
    assert forms_ran == (["small", "small"] if masked else ["block", "block"])
    np.testing.assert_allclose(as_numpy(got), as_numpy(want), rtol=RTOL, atol=ATOL)


@needs_tf
def test_block_form_refuses_float16_so_mixed_precision_falls_back(forms_ran):
    """Under mixed_float16 the LSTM computes in float16: the block form runs
    float32 only, so the small form runs it (the oracle within float16's
    precision)."""
    import tensorflow as tf

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = make_layer("lstm", 5, 4, return_sequences=True)
        x = random((1, 6, 4), 8)
        got = tf.function(layer)(tf.constant(x))
    finally:
        keras.config.set_dtype_policy(previous)
    assert forms_ran == ["small"]
    assert keras.backend.standardize_dtype(got.dtype) == "float16"
    want = reference("lstm", layer, x)[0]
    np.testing.assert_allclose(as_numpy(got), want, rtol=1e-2, atol=5e-3)


@needs_tf
def test_cudnn_auto_on_cpu_runs_the_block_form(forms_ran, monkeypatch):
    """use_cudnn="auto" without a GPU: never cuDNN, the package's kernel,
    which at batch 1 is the block form."""
    import tensorflow as tf

    from keras_gates import cudnn

    if cudnn.gpu_available():
        pytest.skip("a GPU is visible: auto takes cuDNN (tests/test_cudnn.py)")

    def no_cudnn(*args, **kwargs):
        raise AssertionError("cuDNN ran on a CPU-only machine")

    monkeypatch.setattr(cudnn, "sequence", no_cudnn)
    layer = make_layer("lstm", 5, 4, use_cudnn="auto")
    x = random((1, 6, 4), 9)
    got = tf.function(layer)(tf.constant(x))
    assert forms_ran == ["block"]
    np.testing.assert_allclose(
        as_numpy(got), reference("lstm", layer, x)[1], rtol=RTOL, atol=ATOL
    )


# -- the LSTM's "bptt" form (the loop with its backward pass written out) --- #

BPTT_CASES = sorted(case for case in CASES if "dropout" not in case)


@needs_tf
@pytest.mark.parametrize("case", BPTT_CASES)
def test_bptt_form_equals_oracle(case):
    """Outputs and final states against the NumPy oracle: masks (gaps, left
    padding), go_backwards, initial states, zero_output_for_mask."""
    test_kernel_equals_oracle("lstm", "bptt", case)


@needs_tf
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "jit"])
def test_bptt_form_gradients_equal_keras_loop_over_call(compiled):
    """Values and gradients of the inputs and every weight, masked, eagerly
    and under XLA, against Keras's loop over the cell's `call`."""
    test_kernel_gradients_equal_keras_loop_over_call("lstm", "bptt", compiled)


@needs_tf
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf_function"])
@pytest.mark.parametrize(
    "options",
    [
        {"return_sequences": True},
        {"return_sequences": False, "go_backwards": True},
        {"return_sequences": True, "mask": GAPS, "go_backwards": True},
        {"return_sequences": False, "mask": LEFT_PADDING, "zero_output_for_mask": True},
        {"return_sequences": True, "input_dropout_mask": True, "no_bias": True},
    ],
    ids=["sequences", "last_backwards", "gaps_backwards", "left_padding_last",
         "input_dropout_no_bias"],
)  # fmt: skip
def test_bptt_form_gradients_equal_the_large_form(options, graph):
    """Every gradient, the initial states' too, of a loss on the outputs and
    both final states (return_state), in float64 (the two differ only by
    rounding) and float32, against TensorFlow's own gradient of the large
    form's loop."""
    import tensorflow as tf

    options = dict(options)
    no_bias = options.pop("no_bias", False)
    if "mask" in options:
        options["mask"] = np.array(options["mask"], bool)
    if options.pop("input_dropout_mask", False):
        options["input_dropout_mask"] = (random((3, 4), 5) > 0) * 2.0
    layer = make_layer("lstm", 5, 4)
    weights = [np.asarray(w) for w in layer.cell.get_weights()]
    for dtype, atol in (("float64", 1e-12), ("float32", GRAD_ATOL)):
        args = [random((3, 6, 4), 12), *weights, random((3, 5), 31), random((3, 5), 32)]
        args = [tf.constant(a.astype(dtype)) for a in args]
        if no_bias:
            del args[3]
        kw = dict(options)
        if "input_dropout_mask" in kw:
            kw["input_dropout_mask"] = kw["input_dropout_mask"].astype(dtype)
        got = lstm_loss_gradients("bptt", args, kw, no_bias, graph)
        want = lstm_loss_gradients("large", args, kw, no_bias, graph)
        assert len(got) == len(args)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == dtype
            np.testing.assert_allclose(as_numpy(g), as_numpy(w), rtol=RTOL, atol=atol)


def lstm_loss_gradients(form, args, options, no_bias, graph):
    """Gradients of a loss on every output of lstm_sequence in `form`."""
    import tensorflow as tf

    def loss(x, kernel, recurrent_kernel, *rest):
        bias, h0, s0 = (None, *rest) if no_bias else rest
        kw = dict(options)
        last, outputs, (h_t, s_t) = kernels.lstm_sequence(
            x, h0, s0, kw.pop("mask", None), kernel, recurrent_kernel, bias,
            form=form, training=True, **kw,
        )  # fmt: skip
        return (
            weighted_sum(outputs) + ops.sum(ops.sin(h_t))
            + ops.sum(s_t * s_t) + ops.sum(last)
        )  # fmt: skip

    if graph:
        return tf.function(lambda *a: gradients(loss, a))(*args)
    return gradients(loss, args)


@needs_tf
@pytest.mark.parametrize(
    "why,options,match",
    [
        ("recurrent_dropout", {"recurrent_dropout_mask": np.ones((2, 5), "float32")},
         "recurrent dropout"),
        ("no_forget_gate", {"forget_gate": False}, "forget gate"),
        ("activation", {"activation": keras.activations.relu}, "sigmoid gates"),
        ("float16", {"dtype": "float16"}, "float32 and float64 only"),
        ("input_dropout_per_block",
         {"input_dropout_mask": [np.ones((2, 4), "float32")] * 4},
         "one input dropout mask"),
    ],
)  # fmt: skip
def test_bptt_form_refuses_what_it_does_not_compute(why, options, match):
    options = dict(options)
    dtype = options.pop("dtype", "float32")
    n = 3 if options.get("forget_gate") is False else 4
    x = ops.convert_to_tensor(random((2, 3, 4), 0).astype(dtype))
    zeros = ops.zeros((2, 5), dtype)
    weights = [
        ops.convert_to_tensor(random(shape, 1).astype(dtype))
        for shape in ((4, n * 5), (5, n * 5), (n * 5,))
    ]
    with pytest.raises(ValueError, match=rf"`form='bptt'` does not apply.*{match}"):
        kernels.lstm_sequence(x, zeros, zeros, None, *weights, form="bptt", **options)


@needs_tf
@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_fit_takes_the_bptt_form_and_equals_the_builtin(jit_compile, forms_ran):
    """model.fit through a Masking layer into a backwards LSTM with
    return_sequences, 10 examples in batches of 4 (the last one of 2, which
    Keras traces again with a dynamic batch: both training forms in the
    graph): the "bptt" form trains it (up to BPTT_BATCH_MAX), with the
    losses and weights of keras.layers.LSTM on the same weights and data.
    Under XLA, fit traces a dynamic batch, where the large form trains (XLA
    cannot differentiate a cond over the two loops)."""

    def model(layer):
        return keras.Sequential(
            [keras.Input((6, 3)), keras.layers.Masking(0.0), layer,
             keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)]
        )  # fmt: skip

    options = {"return_sequences": True, "go_backwards": True}
    keras.utils.set_random_seed(3)
    ours = model(keras_gates.LSTM(5, **options))
    builtin = model(keras.layers.LSTM(5, **options))
    builtin.set_weights(ours.get_weights())
    rng = np.random.default_rng(4)
    x = rng.normal(size=(10, 6, 3)).astype("float32")
    for row, length in enumerate([6, 4, 2, 5, 6, 3, 1, 6, 4, 5]):
        x[row, length:] = 0.0  # padding the Masking layer turns into a mask
    y = rng.normal(size=(10, 1)).astype("float32")
    losses = []
    for m in (ours, builtin):
        m.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=jit_compile)
        history = m.fit(x, y, epochs=3, batch_size=4, shuffle=False, verbose=0)
        losses.append(history.history["loss"])
    assert set(forms_ran) == ({"large"} if jit_compile else {"bptt", "large"})
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    for got, want in zip(ours.get_weights(), builtin.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@needs_tf
def test_training_where_bptt_does_not_apply_takes_the_large_form(forms_ran):
    """Recurrent dropout, the variant without a forget gate, and batches
    above BPTT_BATCH_MAX train through the large form."""
    import tensorflow as tf

    def train_step(layer, batch):
        x = tf.constant(random((batch, 4, 3), 5))

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(layer(x, training=True))
            return tape.gradient(loss, layer.trainable_variables)

        step(x)

    for layer, batch in (
        (keras_gates.LSTM(5, recurrent_dropout=0.2), 2),
        (keras_gates.LSTM(5, forget_gate=False), 2),
        (keras_gates.LSTM(5), kernels.BPTT_BATCH_MAX + 1),
    ):
        forms_ran.clear()
        train_step(layer, batch)
        assert set(forms_ran) == {"large"}
    forms_ran.clear()
    train_step(keras_gates.LSTM(5), kernels.BPTT_BATCH_MAX)
    assert set(forms_ran) == {"bptt"}


# -- who runs the loop ------------------------------------------------------ #


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's jit_compile")
def test_compiled_is_known_while_xla_traces():
    import tensorflow as tf

    seen = []

    def probe(x):
        seen.append(kernels.compiled())
        return x + 1.0

    x = tf.constant(1.0)
    probe(x)
    tf.function(probe)(x)
    tf.function(probe, jit_compile=True)(x)
    outer = tf.function(lambda x: tf.function(probe)(x), jit_compile=True)
    outer(x)
    assert seen == [False, False, True, True]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's jit_compile")
@pytest.mark.parametrize("variant", ["lstm", "gru"])
def test_layers_take_the_compiled_form_under_xla(variant, monkeypatch):
    """Bare tf.function(jit_compile=True) and model.compile(jit_compile=True):
    the LSTM's compiled form (the GRU has none: its batch-1 small form), with
    the oracle's values; the graph executor keeps the small form."""
    import tensorflow as tf

    forms = []
    original = kernels._scan

    def spy(step, init, inputs, mask, keep, form, training):
        forms.append(form)
        return original(step, init, inputs, mask, keep, form, training)

    monkeypatch.setattr(kernels, "_scan", spy)
    layer = make_layer(variant, 5, 4)
    x = random((1, 6, 4), 3)
    want = reference(variant, layer, x)[1]
    expected = "compiled" if variant == "lstm" else "small"
    got = tf.function(layer, jit_compile=True)(tf.constant(x))
    assert forms == [expected]
    np.testing.assert_allclose(as_numpy(got), want, rtol=RTOL, atol=ATOL)
    forms.clear()
    model = keras.Sequential([keras.Input((None, 4)), layer])
    model.compile(jit_compile=True)
    np.testing.assert_allclose(model.predict_on_batch(x), want, rtol=RTOL, atol=ATOL)
    assert forms == [expected]
    forms.clear()
    tf.function(layer)(tf.constant(x))
    # The graph executor's LSTM at batch 1 is the "block" form (one op, no
    # _scan); the GRU's a loop of its block op (a "block" _scan).
    assert forms == ([] if variant == "lstm" else ["block"])


class _MinimalGatedCell(GatedCell):
    """A gated cell of another shape (Zhou et al., 2016's minimal gated unit,
    one gate): s_t = (1 - f_t) s_{t-1} + f_t tanh(W (f_t s_{t-1}) + U x_t + b)."""

    state_names = ("s",)
    gate_names = ("f", "s_tilde")
    weight_blocks = ("f", "h")

    def __init__(self, units, **kwargs):
        super().__init__(units, **kwargs)
        self.state_size = units

    def call(self, inputs, states, training=False):
        s_tm1 = states[0] if isinstance(states, (list, tuple)) else states
        u = self.units
        ux = ops.matmul(inputs, self.kernel) + self.bias
        f_t = ops.sigmoid(ops.matmul(s_tm1, self.recurrent_kernel[:, :u]) + ux[:, :u])
        s_tilde_t = ops.tanh(
            ops.matmul(f_t * s_tm1, self.recurrent_kernel[:, u:]) + ux[:, u:]
        )
        s_t = (1 - f_t) * s_tm1 + f_t * s_tilde_t
        return s_t, [s_t]


class _NoResetGRUCell(keras_gates.GRUCell):
    """A GRUCell whose own `call` drops the reset (output) gate: o_t = 1."""

    def call(self, inputs, states, training=False):
        s_tm1 = states[0] if isinstance(states, (list, tuple)) else states
        u = self.units
        ux = ops.matmul(inputs, self.kernel) + self.bias
        z_t = ops.sigmoid(ops.matmul(s_tm1, self.recurrent_kernel[:, :u]) + ux[:, :u])
        s_tilde_t = ops.tanh(
            ops.matmul(s_tm1, self.recurrent_kernel[:, 2 * u :]) + ux[:, 2 * u :]
        )
        s_t = z_t * s_tm1 + (1 - z_t) * s_tilde_t
        return s_t, [s_t]


class _KeptCallLSTMCell(keras_gates.LSTMCell):
    """A subclass that keeps LSTMCell's `call`: it keeps the kernel too."""


@pytest.mark.jax_parity
@pytest.mark.parametrize("cell_class", [_MinimalGatedCell, _NoResetGRUCell])
def test_gated_cell_subclass_with_its_own_call_runs_that_call(cell_class):
    """Its layer equals Keras's loop over its `call`, not the GRU's (or any
    other cell's) equations."""
    keras.utils.set_random_seed(5)
    cell = cell_class(4)
    layer = GatedRNN(cell, return_sequences=True)
    x = random((2, 5, 3), 4)
    got = as_numpy(layer(x))
    assert not cell.has_sequence_kernel and not layer.runs_sequence_kernel()
    want = as_numpy(keras.layers.RNN(cell, return_sequences=True)(x))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    if cell_class is _NoResetGRUCell:
        gru = reference("gru", layer, x)[0]
        assert np.abs(got - gru).max() > 1e-3  # not the GRU's equations


@pytest.mark.jax_parity
def test_subclass_keeping_call_keeps_the_kernel():
    cell = _KeptCallLSTMCell(3)
    assert cell.has_sequence_kernel
    assert GatedRNN(cell).runs_sequence_kernel()
    assert cell.trace_names == ("o", "i", "f", "s_tilde", "s", "h")
    assert keras_gates.GRUCell(2).trace_names == ("o", "i", "s_tilde", "s")


@pytest.mark.jax_parity
@pytest.mark.parametrize("variant", ["lstm", "gru"])
def test_inference_draws_no_dropout_masks(variant):
    """Inference (a call, predict, a trace) leaves the dropout seed state as
    it is, so it cannot change later training; a training call advances it."""
    layer = make_layer(variant, 4, 3, dropout=0.3, recurrent_dropout=0.2, seed=1)
    state = layer.cell.seed_generator.state
    before = as_numpy(state).copy()
    x = random((2, 5, 3), 6)
    layer(x)
    layer(x, training=False)
    model = keras.Sequential([keras.Input((None, 3)), layer])
    model.predict(x, verbose=0)
    keras_gates.trace_gates(layer, x)
    np.testing.assert_array_equal(as_numpy(state), before)
    layer(x, training=True)
    assert not np.array_equal(as_numpy(state), before)


def dropout_model(builtin, kind, dropout, recurrent_dropout, seed, unroll=False):
    options = {"dropout": dropout, "recurrent_dropout": recurrent_dropout, "seed": seed}
    options["unroll"] = unroll
    if builtin:
        layer = (
            keras.layers.LSTM(4, **options)
            if kind == "lstm"
            else keras.layers.GRU(4, reset_after=False, **options)
        )
    else:
        layer = (keras_gates.LSTM if kind == "lstm" else keras_gates.GRU)(4, **options)
    return keras.Sequential([keras.Input((None, 3)), layer, keras.layers.Dense(1)])


@pytest.mark.jax_parity
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize(
    "dropout,recurrent_dropout,unroll",
    [(0.3, 0.0, False), (0.0, 0.5, False), (0.3, 0.3, False), (0.3, 0.3, True)],
)
def test_dropout_training_equals_the_builtins(kind, dropout, recurrent_dropout, unroll):
    """A model trained with a keras_gates layer equals the same model with the
    built-in (keras.layers.LSTM, GRU(reset_after=False)): same weights, seeds
    and data, 4 epochs of 2 batches. The masks are the built-in cell's draws:
    one each, or with recurrent_dropout > 0 one per gate block (Keras's
    implementation 1), in the same order from the same seed generator; in the
    sequence kernel and, unrolled, in the cell's own call."""
    ours = dropout_model(False, kind, dropout, recurrent_dropout, 7, unroll)
    builtin = dropout_model(True, kind, dropout, recurrent_dropout, 7, unroll)
    builtin.set_weights(ours.get_weights())
    initial = ours.get_weights()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5, 3)).astype("float32")
    y = rng.normal(size=(8, 1)).astype("float32")
    losses = []
    for model in (ours, builtin):
        model.compile(keras.optimizers.SGD(0.5), "mse")
        history = model.fit(x, y, epochs=4, batch_size=4, shuffle=False, verbose=0)
        losses.append(history.history["loss"])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6, atol=1e-6)
    # Float32 rounding, grown over 8 SGD steps at lr 0.5: CI and a loaded run
    # saw 1.7e-6 on a weight of 2.6 and 2.2e-6 on one of 0.04 (the losses
    # agree to 1e-6). Masks drawn from another seed: 0.36 (GRU), 0.43 (LSTM).
    for got, want in zip(ours.get_weights(), builtin.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Training moved the weights, and dropout was on (a training pass differs
    # from the inference pass).
    assert not np.allclose(ours.get_weights()[1], initial[1], atol=1e-3)
    assert not np.allclose(as_numpy(ours(x, training=True)), as_numpy(ours(x)))
