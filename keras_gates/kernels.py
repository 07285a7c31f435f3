"""The sequence loops of the LSTM and the GRU, as functions on tensors.

``lstm_sequence`` and ``gru_sequence`` run a whole sequence through the
lecture's equations (lstm.py, gru.py) given the weights as tensors, the way Keras has
``keras.backend.lstm`` and flax/haiku a scan over a cell: they know no layer
or cell class. A cell's ``sequence`` method (``lstm.py``, ``gru.py``) calls
its kernel with its weights, options and dropout masks; ``GatedRNN.inner_loop``
calls the cell. A cell whose class writes its own ``call`` without its own
``sequence`` runs Keras's loop over that ``call`` (``GatedCell.has_sequence_kernel``).

``keras.layers.RNN`` calls the cell once per time step, and each call does all
of its work inside the loop: it reads and casts the weights, slices the
recurrent kernel into gate blocks, projects x_t, splits the pre-activations.
These loops do the same equations with the work that does not depend on the
state done once, before the loop. Which work that is depends on who runs the
loop, so each kernel has several forms (``LSTM_FORMS``, ``GRU_FORMS``); each
is chosen where it measured fastest (``keras-gates bench``; the numbers are
in benchmarks/README.md, "CPU matrix"), and each computes the same numbers
(tests/test_kernels.py, tests/test_kernel_functions.py):

``"block"``: TensorFlow's graph executor, small batches, inference (what a
serving batcher sends): TensorFlow's fused CPU ops, core ops that TF Serving
runs. The LSTM's is the whole sequence as one ``tf.raw_ops.BlockLSTMV2``: no
per-step op launches at all. Its weight is ``[kernel; recurrent_kernel]`` in
Keras's own block order (the op's i, f, c, o), no peepholes, no cell clip,
so it computes this package's LSTM exactly where it applies
(``block_form_refusal``: sigmoid gates, tanh, the forget gate, float32, no
per-step mask, no recurrent dropout). Its gradient is the op's own
``BlockLSTMGradV2`` (``_block_lstm_op``). The GRU's is a loop of
``tf.raw_ops.GRUBlockCell``, one op per step (the reset-before GRU, which is
this package's with Keras's update gate; ``gru_block_form_refusal``); being
per step, it keeps a per-step mask; inference only (TensorFlow has no
gradient for it). Both ops' products take x_t and the state together, at
every step: from a middle batch size on, the loop forms, which take the
input projection off the recurrence, win, and the ladder below moves on.

``"small"``: TensorFlow's graph executor, small batches, inference, where the
block form does not apply (a masked LSTM, mixed precision, other
activations). A step costs what its ops cost to launch, not what they
compute, so the step has as few ops as possible:

    before the loop, all steps at once (one large matmul; the weights'
    blocks in Keras's order, lstm.py):
        Ux_t + b = [U_i x_t + b_i | U_f x_t + b_f | U x_t + b | U_o x_t + b_o]
    inside the loop, per step (LSTM):
        a_t  = W h_{t-1} + (Ux_t + b)                 one matmul, one add
        i_t, f_t, s~_t, o_t = one sigmoid over a_t, with
                              tanh(a) = 2 * sigmoid(2 a) - 1 for s~_t (the
                              factor 2 folded into W, U and b once)
        s_t  = f_t * s_{t-1} + i_t * s~_t
        h_t  = o_t * tanh(s_t)

and iterations run one at a time (nothing is left to overlap). The small
forms' loops (this one and the GRU's block loop) run ``UNROLLED_STEPS`` steps
per iteration in the graph executor (``UNROLLED_LOOP_FORMS``): at these
batches the loop's own ops per iteration cost as much as a step's.

``"large"``: TensorFlow's graph executor, larger batches and training: the
matmuls are the cost. x_t is projected inside the step again, where
TensorFlow overlaps the products of coming steps with the recurrence (32
parallel iterations), off its critical path; each gate keeps its own
activation; and the output gate o_t, needed only at the end of the step, gets
its own product beside the one for i_t, f_t and s~_t, so the two run side by
side. (The GRU: o_t alone feeds the candidate, so it gets its own, half as
wide, product.)

``"compiled"`` (the LSTM's): XLA (TensorFlow ``jit_compile=True``, and JAX,
which always compiles). XLA on a CPU has no per-op launch cost and runs a
loop body's ops one after another, so what wins in the graph executor (the hoisted input
projection, the one-sigmoid trick, the split products) measured slower here.
The compiled LSTM is the plain step (the cell's own arithmetic): per step
one product of x_t and one of the state with all gate blocks, one activation
per block, as Keras's own loop (both are bound by the same two products per
step). The GRU has no compiled form: under XLA its graph forms, chosen by
batch size as below, measured best.

``"unrolled"``: both kernels' in TensorFlow's graph executor, middle
batches, inference, and under JAX on a GPU or TPU (``accelerated_jax``),
inference and training, where every loop iteration costs a launch and a trip
to the host for its condition. The LSTM's is the plain step (as ``"compiled"``), the
GRU's the large form's step with z and o from one product;
``UNROLLED_STEPS`` steps per loop iteration and the last
``time % UNROLLED_STEPS`` steps one per iteration in a second loop: the
loop's own ops (its counter, the TensorArray reads and writes' bookkeeping,
the frame's control nodes) run once per several steps.
Under TensorFlow's XLA (on a CPU no such per-iteration cost was measured,
and it cannot differentiate a loop that may run no iteration) it runs one
step per iteration unless the length is known when tracing; under JAX it is
``scan``'s ``unroll``.

``"bptt"`` (the LSTM's): training at small batches. The plain step's
forward loop, keeping every step's gates, with its backward pass written out
(``_bptt_lstm``): the steps in reverse, each an elementwise chain and one
product, and the weights' gradients after the loop in one product each,
instead of TensorFlow's gradient of the loop, which replays every op of every
step and accumulates the weights' gradients step by step. Where op launches
are the cost (small batches) it measured faster; at large batches, where the
products are, TensorFlow's gradient overlaps the weights' products with the
recurrence and wins (``bptt_form_refusal``: sigmoid gates, tanh, the forget
gate, float32/64, no recurrent dropout).

``form="auto"`` (what the layers pass) picks ``"unrolled"`` under JAX on an
accelerator; elsewhere for training the LSTM's
``"bptt"`` up to ``BPTT_BATCH_MAX`` examples where it applies (with a
dynamic batch both are traced and ``tf.cond`` picks one; under XLA, which
cannot differentiate that cond, a dynamic batch takes ``"large"``), and
``"large"`` above it and for the GRU (also under XLA, where it measured as
fast as the compiled form); for
inference the LSTM's ``"compiled"`` when the loop is being compiled
(``compiled()``), else by batch size: ``"block"`` up to ``block_batch_max``
(``BLOCK_BATCH_MAX``, ``GRU_BLOCK_BATCH_MAX``) examples where it applies,
``"small"`` up to ``small_batch_max`` (the layer's ``fused_max_batch``;
where the block form applies and takes as many, it takes the small one's
batches), ``"unrolled"`` up to ``UNROLLED_BATCH_MAX`` (the GRU's in the
graph executor only: under XLA and JAX on a CPU it measured slower than the
one-step loop), and above them the LSTM's ``"compiled"`` (the plain step: in the
graph executor at these batches its two products per step, run by 32
parallel iterations, measured faster than the split ones of ``"large"``),
the GRU's ``"large"`` (with a dynamic batch, as in a serving signature,
every one of them is traced and ``tf.switch_case`` / ``ops.cond`` picks one
at run time).

The GRU's candidate needs o_t first, so it cannot share one product with its
gates; its weights hold Keras's update gate z_t = 1 - i_t (gru.py):

    a_t^{zo} = W_{zo} s_{t-1} + (U_{zo} x_t + b_{zo})
    z_t, o_t = sigmoid(a_t^{zo}),  i_t = 1 - z_t
    s~_t     = tanh(W (o_t * s_{t-1}) + (U x_t + b))
    s_t      = z_t * s_{t-1} + i_t * s~_t                 (z_t = 1 - i_t)

with z_t * s_{t-1} computed while s~_t is: two ops after s~_t on the
critical path.

Dropout: the caller draws the input and recurrent masks once per sequence
(variational dropout, as Keras) and passes them in: one mask each, or a list
of one mask per gate block (in the weights' block order), as Keras's cells
draw them with ``recurrent_dropout > 0``. One input mask is applied to the
whole sequence at once; per-block input masks give each block its own
U (x_t * m_j), projected for every step before the loop (in every form). The
recurrent mask multiplies the state where it meets W (never the carried
state); per-block masks, each block's own product.

Semantics are those of ``keras.layers.RNN`` (and ``tests/reference.py``): a
masked step keeps the state; the output of a masked step repeats the last
unmasked output (zeros before the first one), or is zeros with
``zero_output_for_mask``; ``go_backwards`` reads from the end and returns the
outputs in reading order. Because a gated cell's output is its first state,
the loop carries only the states, and the outputs are read off the stacked
states afterwards with the mask: one vectorised ``where`` instead of one per
step; without a mask or ``return_sequences`` nothing is stacked.

Under TensorFlow the loop is a ``tf.while_loop`` over TensorArrays (it traces
under ``tf.function`` and ``jit_compile``, differentiates under XLA, and
exports to a SavedModel of core ops); under other backends it is
``keras.ops.scan`` (``jax.lax.scan``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

__all__ = [
    "GRU_FORMS",
    "LSTM_FORMS",
    "accelerated_jax",
    "compiled",
    "graph_executor",
    "gru_sequence",
    "lstm_sequence",
]

# The forms each kernel has (module docstring); `form="auto"` picks one.
LSTM_FORMS = ("small", "large", "compiled", "block", "bptt", "unrolled")
# With `form="auto"`, TensorFlow's graph executor runs the LSTM's "block" form
# (where it applies, `block_form_refusal`) up to this batch at inference.
BLOCK_BATCH_MAX = 4
# With `form="auto"`, training runs the LSTM's "bptt" form (where it applies,
# `bptt_form_refusal`) up to this batch, and the "large" form above it.
BPTT_BATCH_MAX = 16
# With `form="auto"`, TensorFlow's graph executor runs the "unrolled" form up
# to this batch at inference, above the "block" and "small" forms'.
UNROLLED_BATCH_MAX = 48
# The "unrolled" form's steps per loop iteration, also those of these forms'
# loops in TensorFlow's graph executor (the GRU's "block" form is a loop of
# one GRUBlockCell per step).
UNROLLED_STEPS = 10
UNROLLED_LOOP_FORMS = ("small", "block")
GRU_FORMS = ("small", "large", "block", "unrolled")
# With `form="auto"`, inference above the batch-size ladder takes this form:
# the LSTM's plain step, the GRU's "large" (module docstring).
ABOVE_LADDER = {"lstm": "compiled", "gru": "large"}
# With `form="auto"`, TensorFlow's graph executor runs the GRU's "block" form
# (where it applies, `gru_block_form_refusal`) up to this batch at inference.
GRU_BLOCK_BATCH_MAX = 8


def accelerated_jax() -> bool:
    """Whether JAX runs the loop on an accelerator (a GPU or TPU).

    There each iteration of a compiled loop costs a kernel launch and a trip
    back to the host for its condition, more than a step's arithmetic at
    these sizes, so inference and training take the ``"unrolled"`` form,
    whose loop runs ``UNROLLED_STEPS`` steps per iteration (measured on an
    H200: 0.62 vs 2.66 ms for the LSTM's one-step loop at batch 1, a training
    step 1.90 vs 3.89 ms; benchmarks/README.md). (JAX on the CPU measured the
    one-step loop as fast or faster: ``"compiled"``, the GRU's ladder.)
    The answer is the platform of the devices Keras's JAX backend computes
    on (``keras.distribution.list_devices()``: JAX's default backend's, as
    ``"gpu:0"``), so the package itself never imports JAX.
    """
    if keras.backend.backend() != "jax":
        return False
    devices = keras.distribution.list_devices()
    return bool(devices) and not devices[0].startswith("cpu")


def graph_executor() -> bool:
    """Whether TensorFlow runs the loop op by op (its graph executor, or
    eager), not compiled by XLA: where the GRU's ``"unrolled"`` form joins
    the batch-size ladder and the small forms' loops run ``UNROLLED_STEPS``
    steps per iteration (both measured there only)."""
    return keras.backend.backend() == "tensorflow" and not compiled()


def compiled() -> bool:
    """Whether the loop being traced now will be compiled by XLA.

    JAX always compiles. TensorFlow compiles inside ``tf.function(
    jit_compile=True)`` (also what ``model.compile(jit_compile=True)`` and an
    XLA-compiled serving export trace under): while such a function traces,
    TensorFlow keeps an XLA control-flow context on the graph, which
    ``keras_internals.in_xla_compilation`` finds (TensorFlow's exported
    internal API, the one its own losses use to ask the same question).
    If a TensorFlow release drops that function the answer is False: the
    loop takes a graph form, correct and only slower under XLA
    (``tests/test_kernels.py`` checks the answer on both sides).
    """
    backend = keras.backend.backend()
    if backend == "jax":
        return True
    if backend != "tensorflow":
        return False
    from keras_gates import keras_internals

    return bool(keras_internals.in_xla_compilation())


def lstm_sequence(
    x: Any,
    h0: Any,
    s0: Any,
    mask: Any,
    kernel: Any,
    recurrent_kernel: Any,
    bias: Any,
    *,
    activation: Callable = keras.activations.tanh,
    recurrent_activation: Callable = keras.activations.sigmoid,
    forget_gate: bool = True,
    go_backwards: bool = False,
    return_sequences: bool = False,
    zero_output_for_mask: bool = False,
    input_dropout_mask: Any = None,
    recurrent_dropout_mask: Any = None,
    training: bool = False,
    form: str = "auto",
    small_batch_max: int = 2,
    block_batch_max: int | None = None,
) -> tuple[Any, Any, list]:
    """The lecture's LSTM over a whole sequence (module docstring).

    Args:
        x: Inputs, (batch, time, features).
        h0, s0: Initial states h_0 and s_0, (batch, units) each.
        mask: Optional (batch, time) booleans; False steps keep the state.
        kernel: (features, n * units), blocks [U_i | U_f | U | U_o] (no U_f
            with ``forget_gate=False``): Keras's order, lstm.py.
        recurrent_kernel: (units, n * units), the W blocks, same order.
        bias: (n * units,) or None.
        activation, recurrent_activation: The state and gate nonlinearities.
        forget_gate: False for the lecture's variant s_t = s_{t-1} + i_t s~_t.
        go_backwards: Read from the last step; outputs in reading order.
        return_sequences: Return every h_t (else only the last).
        zero_output_for_mask: Masked steps output zeros (else the previous
            output).
        input_dropout_mask: Optional (batch, features) multiplier of every x_t,
            or a list of one per gate block (block order i, (f,) c, o).
        recurrent_dropout_mask: Optional (batch, units) multiplier of h_{t-1}
            where it meets W, or a list of one per gate block.
        training: Whether gradients will be taken (picks the form).
        form: ``"auto"`` or one of ``LSTM_FORMS``.
        small_batch_max: Largest batch that takes the ``"small"`` form at
            inference, with ``form="auto"``.
        block_batch_max: Largest batch that takes the ``"block"`` form at
            inference, with ``form="auto"``, where it applies (it goes before
            ``"small"``); None: ``BLOCK_BATCH_MAX``.

    Returns:
        ``(last_output, outputs, [h_T, s_T])`` as ``keras.layers.RNN
        .inner_loop``: last_output (batch, units), outputs (batch, time,
        units) with ``return_sequences``, else (batch, 1, units).
    """
    n_blocks = 4 if forget_gate else 3
    candidate = n_blocks - 2  # Keras's order: i, (f,) s~ (its c), o
    u = recurrent_kernel.shape[0]
    default_activations = _is(activation, "tanh") and _is(
        recurrent_activation, "sigmoid"
    )

    x, mask, x_masks, r_mask = _prepare(
        x, mask, input_dropout_mask, recurrent_dropout_mask, go_backwards
    )
    keep = return_sequences or mask is not None  # stack the states
    refusal = block_form_refusal(
        x.dtype, mask, r_mask, default_activations, forget_gate, x_masks
    )
    if form == "block" and refusal is not None:
        raise ValueError(f"`form='block'` does not apply here: {refusal}.")
    bptt_refusal = bptt_form_refusal(
        x.dtype, r_mask, default_activations, forget_gate, x_masks
    )
    if form == "bptt" and bptt_refusal is not None:
        raise ValueError(f"`form='bptt'` does not apply here: {bptt_refusal}.")

    def run(form):
        if form == "block":
            return _block_lstm(x, h0, s0, kernel, recurrent_kernel, bias, keep)
        if form == "bptt":
            return _bptt_lstm(x, h0, s0, mask, kernel, recurrent_kernel, bias, keep)
        dtype = x.dtype
        k, w, b = kernel, recurrent_kernel, bias
        # Small form: tanh(a) = 2 * sigmoid(2 a) - 1, so one sigmoid covers
        # every block (fewer ops per step); the candidate's columns are
        # doubled once, here. Not in float16 (2 sigmoid - 1 loses tanh's
        # precision near 0).
        fuse_tanh = (
            form == "small"
            and default_activations
            and keras.backend.standardize_dtype(dtype) in ("float32", "float64")
        )
        if fuse_tanh:
            scale = ops.concatenate(
                [
                    ops.ones((candidate * u,), dtype),
                    ops.full((u,), 2.0, dtype),
                    ops.ones((u,), dtype),  # o
                ]
            )
            k, w = k * scale, w * scale
            b = None if b is None else b * scale
        if form == "large":
            # o_t gets its own product, run beside the one for i, f and s~.
            block_groups = [list(range(n_blocks - 1)), [n_blocks - 1]]
        else:
            block_groups = [list(range(n_blocks))]
        inputs, project = _block_input_terms(
            x, x_masks, k, b, block_groups, u, hoist=form == "small"
        )
        w_groups = _recurrent_weights(w, r_mask, block_groups, u)

        def lstm_step(carry, inputs_t, mask_t):
            h_tm1, s_tm1 = carry
            a = [
                wh + ux
                for wh, ux in zip(
                    _recurrent_terms(h_tm1, r_mask, w_groups, block_groups),
                    project(inputs_t),
                )
            ]
            if fuse_tanh:
                # sigmoid of every block: i, (f,) s~ (as 2 sigmoid(2 a) - 1), o
                blocks_t = list(ops.split(ops.sigmoid(a[0]), n_blocks, axis=-1))
                blocks_t[candidate] = 2.0 * blocks_t[candidate] - 1.0  # tanh(a_s)
            else:
                # [i, (f,) s~, o], or [i, (f,) s~] and o from its own product
                a_blocks = [*ops.split(a[0], n_blocks + 1 - len(a), axis=-1), *a[1:]]
                blocks_t = [
                    activation(a_j) if j == candidate else recurrent_activation(a_j)
                    for j, a_j in enumerate(a_blocks)
                ]
            i_t, s_tilde_t, o_t = blocks_t[0], blocks_t[candidate], blocks_t[-1]
            if forget_gate:
                f_t = blocks_t[1]
                s_t = f_t * s_tm1 + i_t * s_tilde_t
            else:
                s_t = s_tm1 + i_t * s_tilde_t
            h_t = o_t * activation(s_t)
            if mask_t is not None:
                read_t = mask_t[:, None]
                h_t = ops.where(read_t, h_t, h_tm1)
                s_t = ops.where(read_t, s_t, s_tm1)
            return h_t, s_t

        return _scan(lstm_step, (h0, s0), inputs, mask, keep, form, training)

    outputs = (return_sequences, zero_output_for_mask)
    batch_max = {"small": small_batch_max}
    if refusal is None:
        batch_max["block"] = (
            BLOCK_BATCH_MAX if block_batch_max is None else block_batch_max
        )
    batch_max["unrolled"] = UNROLLED_BATCH_MAX
    above = ABOVE_LADDER["lstm"]
    train_batch_max = {"bptt": BPTT_BATCH_MAX} if bptt_refusal is None else None
    return _dispatch(
        run, x, mask, form, LSTM_FORMS, training, batch_max, outputs, above,
        train_batch_max,
    )  # fmt: skip


def gru_sequence(
    x: Any,
    s0: Any,
    mask: Any,
    kernel: Any,
    recurrent_kernel: Any,
    bias: Any,
    *,
    activation: Callable = keras.activations.tanh,
    recurrent_activation: Callable = keras.activations.sigmoid,
    go_backwards: bool = False,
    return_sequences: bool = False,
    zero_output_for_mask: bool = False,
    input_dropout_mask: Any = None,
    recurrent_dropout_mask: Any = None,
    training: bool = False,
    form: str = "auto",
    small_batch_max: int = 8,
    block_batch_max: int | None = None,
) -> tuple[Any, Any, list]:
    """The lecture's GRU over a whole sequence (module docstring).

    Args:
        x: Inputs, (batch, time, features).
        s0: Initial state s_0, (batch, units).
        mask: Optional (batch, time) booleans; False steps keep the state.
        kernel: (features, 3 * units), blocks [U_z | U_o | U] (Keras's
            GRU(reset_after=False) [z | r | h], z = 1 - i; gru.py).
        recurrent_kernel: (units, 3 * units), [W_z | W_o | W].
        bias: (3 * units,) or None.
        Other arguments: as ``lstm_sequence`` (``form``: one of
        ``GRU_FORMS``); the recurrent dropout mask multiplies s_{t-1} where it
        meets W, never in z_t * s_{t-1}. ``block_batch_max``: as the
        LSTM's, for the GRU's ``"block"`` form (None: ``GRU_BLOCK_BATCH_MAX``).

    Returns:
        ``(last_output, outputs, [s_T])`` as ``lstm_sequence``.
    """
    u = recurrent_kernel.shape[0]

    x, mask, x_masks, r_mask = _prepare(
        x, mask, input_dropout_mask, recurrent_dropout_mask, go_backwards
    )
    keep = return_sequences or mask is not None  # stack the states
    default_activations = _is(activation, "tanh") and _is(
        recurrent_activation, "sigmoid"
    )
    refusal = gru_block_form_refusal(x.dtype, r_mask, default_activations, x_masks)
    if form == "block" and refusal is not None:
        raise ValueError(f"`form='block'` does not apply here: {refusal}.")

    def run(form):
        if form == "block":
            return _block_gru(x, s0, mask, kernel, recurrent_kernel, bias, keep)
        # Keras's blocks: 0 = z (1 - i), 1 = o (its r), 2 = the candidate's.
        # ("unrolled": the "large" form's x_t projection in the step, z and o
        # from one product, UNROLLED_STEPS steps per iteration.)
        if form == "large":
            # o_t alone feeds the candidate: its own (half as wide) product,
            # a shorter critical path; z_t's runs alongside.
            block_groups = [[0], [1], [2]]
        else:
            # z and o from one product and one activation.
            block_groups = [[0, 1], [2]]
        inputs, project = _block_input_terms(
            x, x_masks, kernel, bias, block_groups, u, hoist=form == "small"
        )
        w_candidate = recurrent_kernel[:, 2 * u :]
        w_gates = _recurrent_weights(recurrent_kernel, r_mask, block_groups[:-1], u)

        def gru_step(carry, inputs_t, mask_t):
            (s_tm1,) = carry
            *ux_gates, ux_s = project(inputs_t)
            gates = [
                recurrent_activation(ws + ux)
                for ws, ux in zip(
                    _recurrent_terms(s_tm1, r_mask, w_gates, block_groups[:-1]),
                    ux_gates,
                )
            ]
            z_t, o_t = gates if len(gates) == 2 else ops.split(gates[0], 2, axis=-1)
            i_t = 1.0 - z_t
            s_in = _dropped(s_tm1, r_mask, 2)
            s_tilde_t = activation(ops.matmul(o_t * s_in, w_candidate) + ux_s)
            # z_t * s_{t-1} (z_t = 1 - i_t) is ready before s~_t: two ops after
            # it on the critical path (s_{t-1} + i_t * (s~_t - s_{t-1}) has one
            # op fewer but three after s~_t, and measured 1.2x slower).
            s_t = z_t * s_tm1 + i_t * s_tilde_t
            if mask_t is not None:
                s_t = ops.where(mask_t[:, None], s_t, s_tm1)
            return (s_t,)

        return _scan(gru_step, (s0,), inputs, mask, keep, form, training)

    outputs = (return_sequences, zero_output_for_mask)
    batch_max = {"small": small_batch_max}
    if refusal is None:
        batch_max["block"] = (
            GRU_BLOCK_BATCH_MAX if block_batch_max is None else block_batch_max
        )
    if graph_executor():
        batch_max["unrolled"] = UNROLLED_BATCH_MAX
    above = ABOVE_LADDER["gru"]
    return _dispatch(run, x, mask, form, GRU_FORMS, training, batch_max, outputs, above)


def _is(function: Callable, name: str) -> bool:
    return function is getattr(keras.activations, name)


def _prepare(x, mask, input_dropout_mask, recurrent_dropout_mask, go_backwards):
    """Time-major inputs and mask in reading order, dropout applied.

    Returns ``(x (time, batch, features), mask (time, batch) or None, the
    per-block input dropout masks (a list) or None, the recurrent dropout
    mask (a tensor or a per-block list) in x's dtype or None)``. One input
    mask is applied to x here; per-block masks are left to the projection.
    """
    dtype = x.dtype
    x_masks = None
    if isinstance(input_dropout_mask, (list, tuple)):  # one per gate block
        x_masks = [ops.cast(m, dtype) for m in input_dropout_mask]
    elif input_dropout_mask is not None:  # one mask per sequence: (batch, features)
        x = x * ops.cast(input_dropout_mask, dtype)[:, None, :]
    r_mask = None
    if isinstance(recurrent_dropout_mask, (list, tuple)):
        r_mask = [ops.cast(m, dtype) for m in recurrent_dropout_mask]
    elif recurrent_dropout_mask is not None:
        r_mask = ops.cast(recurrent_dropout_mask, dtype)
    x = ops.transpose(x, (1, 0, 2))  # (time, batch, features)
    if mask is not None:
        mask = ops.transpose(ops.cast(mask, "bool"), (1, 0))  # (time, batch)
    if go_backwards:
        x = ops.flip(x, axis=0)
        if mask is not None:
            mask = ops.flip(mask, axis=0)
    return x, mask, x_masks, r_mask


def _columns(blocks: list[int], u: int) -> slice:
    """The columns of the consecutive gate blocks `blocks` (width u each)."""
    return slice(blocks[0] * u, (blocks[-1] + 1) * u)


def _joined(terms: list) -> Any:
    return terms[0] if len(terms) == 1 else ops.concatenate(terms, axis=-1)


def _dropped(state, r_mask, j: int):
    """The state as gate block `j` reads it: times its recurrent mask."""
    if r_mask is None:
        return state
    return state * (r_mask[j] if isinstance(r_mask, list) else r_mask)


def _recurrent_weights(w, r_mask, block_groups, u):
    """W's columns for each group of gate blocks (per block where each block
    has its own recurrent mask), sliced once, before the loop: a slice inside
    the step would copy them at every step (and its gradient accumulate)."""

    def columns(blocks):
        if blocks[0] == 0 and (blocks[-1] + 1) * u == w.shape[1]:
            return w  # every column
        return w[:, _columns(blocks, u)]

    if not isinstance(r_mask, list):
        return [columns(g) for g in block_groups]
    return [[columns([j]) for j in g] for g in block_groups]


def _recurrent_terms(state, r_mask, w_groups, block_groups):
    """W state_{t-1} for each group of gate blocks, the dropout mask applied:
    one product per group, or per block when each block has its own mask
    (``w_groups`` from ``_recurrent_weights``)."""
    if not isinstance(r_mask, list):
        s_in = _dropped(state, r_mask, 0)
        return [ops.matmul(s_in, w_g) for w_g in w_groups]
    return [
        _joined([ops.matmul(state * r_mask[j], w_j) for j, w_j in zip(g, w_g)])
        for g, w_g in zip(block_groups, w_groups)
    ]


def _block_input_terms(x, x_masks, kernel, bias, block_groups, u, hoist):
    """``_input_terms`` for groups of gate blocks; with per-block input masks
    (`x_masks`), U_j (x_t * m_j) + b_j of every step, hoisted in every form."""

    def bias_of(blocks):
        return None if bias is None else bias[_columns(blocks, u)]

    if x_masks is None:
        blocks = [(kernel[:, _columns(g, u)], bias_of(g)) for g in block_groups]
        return _input_terms(x, blocks, hoist)
    inputs = [
        _joined(
            [
                _project(x * x_masks[j], kernel[:, _columns([j], u)], bias_of([j]))
                for j in group
            ]
        )
        for group in block_groups
    ]
    return inputs, list


def _dispatch(
    run, x, mask, form, forms, training, batch_max, outputs, above, train_batch_max=None
):
    """Run the loop in ``form`` (or the one ``"auto"`` picks), read the outputs.

    ``run(form) -> (final states, the first state at every step or None)``;
    ``x`` and ``mask`` are time-major; ``forms`` the kernel's forms;
    ``batch_max`` maps the inference forms chosen by batch size (``"block"``
    where it applies, ``"small"``, ``"unrolled"`` where listed) to the
    largest batch each takes; above them the form ``above``. Under JAX on an
    accelerator (``accelerated_jax``) every call takes ``"unrolled"``.
    ``train_batch_max``: the same for training (the LSTM's ``"bptt"`` where
    it applies), above it ``"large"``.
    ``outputs`` is ``(return_sequences, zero_output_for_mask)``.
    """

    def outputs_of(form):
        final, sequence = run(form)
        last, outputs_t = _read_outputs(final, sequence, mask, *outputs)
        return last, outputs_t, list(final)

    if form != "auto":
        if form not in forms:
            raise ValueError(
                f"`form` must be 'auto' or one of {forms}; received {form!r}."
            )
        return outputs_of(form)
    if accelerated_jax():  # training too (module docstring)
        return outputs_of("unrolled")
    if training:
        if not train_batch_max or (x.shape[1] is None and compiled()):
            # (XLA cannot take the gradient of a cond over these loops.)
            return outputs_of("large")
        ladder, above = [(train_batch_max["bptt"], "bptt")], "large"
    elif "compiled" in forms and compiled():
        return outputs_of("compiled")
    else:
        # (largest batch, form), by batch size: "block" (where it applies),
        # then "small", then "unrolled" (where listed), then `above` for every
        # batch above; a form whose batches an earlier one takes drops out.
        ladder = []
        for f in ("block", "small", "unrolled"):
            if f in batch_max and (not ladder or batch_max[f] > ladder[-1][0]):
                ladder.append((batch_max[f], f))
    batch = x.shape[1]
    if batch is not None:  # known when tracing: choose now
        return outputs_of(next((f for top, f in ladder if batch <= top), above))
    # Dynamic batch (a serving signature): every form in the graph, one runs.
    names = [f for _, f in ladder] + [above]
    branches = [lambda f=f: outputs_of(f) for f in names]
    if keras.backend.backend() != "tensorflow":
        return ops.cond(ops.shape(x)[1] <= ladder[0][0], *branches)
    import tensorflow as tf

    # Each form as one function call (tf.function's documented
    # experimental_attributes; "_noinline" is on its allow-list): the
    # executor then skips the untaken forms in one node instead of
    # propagating "dead" through their ~100 ops, which cost the batch-1
    # LSTM 10% (measured 2.55 -> 2.30 ms without the cond, 2.47 with it).
    # In training, plain branches: the gradient of a cond over such calls
    # fails at run time (cond_v2's FakeParam of a branch's intermediates).
    if not training:
        branches = [
            tf.function(
                branch, autograph=False, experimental_attributes={"_noinline": True}
            )
            for branch in branches
        ]
    size = tf.shape(x)[1]
    if len(branches) == 2:
        return tf.cond(size <= ladder[0][0], *branches)
    index = tf.add_n([tf.cast(size > top, "int32") for top, _ in ladder])
    return tf.switch_case(index, branches)


def block_form_refusal(
    dtype,
    mask,
    recurrent_dropout_mask,
    default_activations,
    forget_gate,
    input_dropout_masks=None,
) -> str | None:
    """Why the LSTM's ``"block"`` form cannot run this call, or None.

    The form is one ``tf.raw_ops.BlockLSTMV2`` (TensorFlow's fused CPU LSTM
    op, a core op: TF Serving's C++ server runs it): the whole sequence in one
    op, its weight ``w = [kernel; recurrent_kernel]`` in Keras's own block
    order [i | f | c | o] (the op's "IFCO"), no peepholes, no cell clip. It
    computes exactly this package's LSTM with sigmoid gates, tanh state
    activation and the forget gate, in float32 (its other type, float16, is
    left to the other forms' precision), without a recurrent dropout mask and
    without per-gate-block input masks (one input dropout mask is applied to
    x before; per-block ones need one product per block). It takes one sequence length
    for the whole batch, not a per-example mask, so a call with a mask takes
    another form. It is TensorFlow's graph executor's form: XLA has no kernel
    for the op, and other backends do not have it.
    """
    return _fused_op_refusal(
        "BlockLSTMV2 (use 'compiled' under jit_compile)",
        default_activations,
        "sigmoid gates and a tanh state activation",
        dtype,
        recurrent_dropout_mask,
        input_dropout_masks,
        own=(
            (not forget_gate, "it computes the LSTM with a forget gate only"),
            (mask is not None, "it takes no per-step mask"),
        ),
    )


def _fused_op_refusal(
    op, default_activations, activations, dtype, recurrent_dropout_mask,
    input_dropout_masks, own=(),
) -> str | None:  # fmt: skip
    """What keeps a block form's TensorFlow op off this call, or None: the
    checks both block forms share, then the form's `own` (condition, why)."""
    dtype = keras.backend.standardize_dtype(dtype)
    checks = (
        (keras.backend.backend() != "tensorflow",
         f"it is a TensorFlow op (backend {keras.backend.backend()})"),
        (compiled(), f"XLA has no kernel for {op}"),
        (not default_activations, f"it computes {activations} only"),
        *own,
        (dtype != "float32", f"it runs float32 only (received {dtype})"),
        (recurrent_dropout_mask is not None, "it applies no recurrent dropout mask"),
        (input_dropout_masks is not None,
         "it takes one input dropout mask, not one per gate block"),
    )  # fmt: skip
    return next((why for refused, why in checks if refused), None)


def _block_lstm(x, h0, s0, kernel, recurrent_kernel, bias, keep):
    """The ``"block"`` form: the sequence through ``tf.raw_ops.BlockLSTMV2``.

    ``x`` time-major, in reading order, dropout applied. Returns ``(final
    states, h at every step or None)`` as ``_scan``. Differentiable through
    ``_block_lstm_op``.
    """
    import tensorflow as tf

    units = recurrent_kernel.shape[0]
    dtype = x.dtype
    w = tf.concat([kernel, recurrent_kernel], axis=0)
    b = tf.zeros((4 * units,), dtype) if bias is None else bias
    s, h = _block_lstm_op(x, tf.cast(s0, dtype), tf.cast(h0, dtype), w, b)

    def last(sequence, initial):  # the last step's state; the initial one if none
        return tf.concat([initial[None], sequence[-1:]], axis=0)[-1]

    final = (last(h, h0), last(s, s0))
    return final, (h if keep else None)


def _block_lstm_op(x, cs_prev, h_prev, w, b):
    """``BlockLSTMV2``'s states ``(cs, h)`` at every step, with its gradient.

    TensorFlow registers ``BlockLSTMV2``'s gradient as the first version's
    (``BlockLSTMGrad``, whose gate blocks are in the other order, i c f o):
    measured wrong, every gradient off by up to 2 on a 6-step sequence. So
    the gradient here is ``BlockLSTMGradV2``'s, the op's own, and checked
    against the loop forms' (``tests/test_kernel_functions.py``).
    """
    import tensorflow as tf

    @tf.custom_gradient
    def op(x, cs_prev, h_prev, w, b):
        no_peephole = tf.zeros(tf.shape(b)[:1] // 4, x.dtype)
        inputs = {
            "seq_len_max": tf.cast(tf.shape(x)[0], "int64"),
            "x": x,
            "cs_prev": cs_prev,
            "h_prev": h_prev,
            "w": w,
            "wci": no_peephole,
            "wcf": no_peephole,
            "wco": no_peephole,
            "b": b,
        }
        # No peepholes; no cell clipping (a negative clip turns it off).
        i, cs, f, o, ci, co, h = tf.raw_ops.BlockLSTMV2(
            **inputs, cell_clip=-1.0, use_peephole=False
        )

        def grad(cs_grad, h_grad):
            grads = tf.raw_ops.BlockLSTMGradV2(
                **inputs,
                i=i,
                cs=cs,
                f=f,
                o=o,
                ci=ci,
                co=co,
                h=h,
                cs_grad=tf.zeros_like(cs) if cs_grad is None else cs_grad,
                h_grad=tf.zeros_like(h) if h_grad is None else h_grad,
                use_peephole=False,
            )
            x_grad, cs_prev_grad, h_prev_grad, w_grad, *_, b_grad = grads
            return x_grad, cs_prev_grad, h_prev_grad, w_grad, b_grad

        return (cs, h), grad

    return op(x, cs_prev, h_prev, w, b)


def bptt_form_refusal(
    dtype, recurrent_dropout_mask, default_activations, forget_gate,
    input_dropout_masks=None,
) -> str | None:  # fmt: skip
    """Why the LSTM's ``"bptt"`` form cannot run this call, or None.

    The form is the plain step's loop with a backward pass written out
    (``_bptt_lstm``) instead of TensorFlow's differentiation of the loop:
    for sigmoid gates, a tanh state activation and the forget gate, in
    float32 or float64, without a recurrent dropout mask or per-gate-block
    input masks (one input mask is applied to x before). A per-step mask is
    kept. TensorFlow only (other backends differentiate their own scan).
    """
    dtype = keras.backend.standardize_dtype(dtype)
    checks = (
        (keras.backend.backend() != "tensorflow",
         f"it is TensorFlow's loop (backend {keras.backend.backend()})"),
        (not default_activations,
         "its backward pass is written for sigmoid gates and a tanh state activation"),
        (not forget_gate, "its backward pass is written for the forget gate"),
        (dtype not in ("float32", "float64"),
         f"it runs float32 and float64 only (received {dtype})"),
        (recurrent_dropout_mask is not None, "it applies no recurrent dropout mask"),
        (input_dropout_masks is not None,
         "it takes one input dropout mask, not one per gate block"),
    )  # fmt: skip
    return next((why for refused, why in checks if refused), None)


def _bptt_lstm(x, h0, s0, mask, kernel, recurrent_kernel, bias, keep):
    """The ``"bptt"`` form: the LSTM's plain loop with its gradient written out.

    Forward: U x_t + b for every step before the loop (one product), then per
    step a_t = W h_{t-1} + (U x_t + b), the four blocks' activations, s_t and
    h_t; the loop keeps h_t and s_t of every step. Backward, instead of
    TensorFlow's gradient of the loop (which keeps and replays every op of
    every step, and accumulates the weights' gradients step by step): every
    step's gates computed again from the kept states at once (two large
    products), then the steps in reverse, each an elementwise chain and one
    product (the pre-activation gradient times W^T), and after the loop the
    weights' and the inputs' gradients in one product each:

        dh_t = dL/dh_t + da_{t+1} W^T
        ds_t = ds_{t+1} f_{t+1} + dh_t o_t (1 - tanh^2 s_t)
        da_t = [ds_t s~_t i_t (1 - i_t) | ds_t s_{t-1} f_t (1 - f_t)
                | ds_t i_t (1 - s~_t^2) | dh_t tanh(s_t) o_t (1 - o_t)]
        dU = sum_t x_t^T da_t,  dW = sum_t h_{t-1}^T da_t,  db = sum_t da_t,
        dx_t = da_t U^T

    A masked step keeps the state, so it passes dh_t and ds_t on to the step
    before it unchanged. Returns ``(final states, h at every step or None)``
    as ``_scan``.
    """
    import tensorflow as tf

    dtype = x.dtype
    u = recurrent_kernel.shape[0]
    features = kernel.shape[0]
    b = tf.zeros((4 * u,), dtype) if bias is None else tf.convert_to_tensor(bias)

    def loop(x, h0, s0, k, w, b):
        """(h_T, s_T), (h_t, s_t at every step): the forward loop, the plain
        step's (x_t projected inside the step, off the recurrence)."""
        length = tf.shape(x)[0]
        x_ta = tf.TensorArray(dtype, size=length, element_shape=x.shape[1:])
        x_ta = x_ta.unstack(x)
        if mask is not None:
            mask_ta = tf.TensorArray(tf.bool, size=length, element_shape=mask.shape[1:])
            mask_ta = mask_ta.unstack(mask)

        def body(t, h_tm1, s_tm1, h_ta, s_ta, g_ta):
            a = tf.matmul(x_ta.read(t), k) + b + tf.matmul(h_tm1, w)
            a_i, a_f, a_c, a_o = tf.split(a, 4, axis=-1)
            i_t, f_t, o_t = tf.sigmoid(a_i), tf.sigmoid(a_f), tf.sigmoid(a_o)
            c_t = tf.tanh(a_c)
            s_t = f_t * s_tm1 + i_t * c_t
            tanh_s_t = tf.tanh(s_t)
            h_t = o_t * tanh_s_t
            g_ta = g_ta.write(t, tf.concat([i_t, f_t, c_t, o_t, tanh_s_t], axis=-1))
            if mask is not None:
                read_t = mask_ta.read(t)[:, None]
                h_t = tf.where(read_t, h_t, h_tm1)
                s_t = tf.where(read_t, s_t, s_tm1)
            return t + 1, h_t, s_t, h_ta.write(t, h_t), s_ta.write(t, s_t), g_ta

        tas = [
            tf.TensorArray(dtype, size=length, element_shape=shape)
            for shape in (h0.shape, h0.shape, (h0.shape[0], 5 * u))
        ]
        _, h_t, s_t, *tas = tf.while_loop(
            lambda *_: True,
            body,
            (0, h0, s0, *tas),
            maximum_iterations=length,
            parallel_iterations=32,
        )
        sequences = [ta.stack() for ta in tas]
        for sequence in sequences:
            sequence.set_shape((x.shape[0], *sequence.shape[1:]))
        return (h_t, s_t), sequences

    @tf.custom_gradient
    def op(x, h0, s0, k, w, b):
        length = tf.shape(x)[0]
        batch = tf.shape(x)[1]
        (h_t, s_t), (h_seq, s_seq, g_seq) = loop(x, h0, s0, k, w, b)

        def grad(d_h_final, d_s_final, d_h_seq=None):
            x_flat = tf.reshape(x, (-1, features))
            h_prev = tf.concat([h0[None], h_seq[:-1]], axis=0)
            s_prev = tf.concat([s0[None], s_seq[:-1]], axis=0)
            h_prev_flat = tf.reshape(h_prev, (-1, u))
            # the gates and tanh(s_t) of every step, as the forward loop
            # computed them (before a masked step's `where`)
            i, f, c, o, tanh_s = tf.split(g_seq, 5, axis=-1)
            # per step: ds_t += dh_t to_s; da_{i,f,c} = ds_t to_ifc; da_o = dh_t to_o
            to_s = o * (1.0 - tf.square(tanh_s))
            to_o = tanh_s * o * (1.0 - o)
            to_ifc = tf.concat(
                [c * i * (1.0 - i), s_prev * f * (1.0 - f), i * (1.0 - tf.square(c))],
                axis=-1,
            )
            d_seq = tf.zeros_like(h_seq) if d_h_seq is None else d_h_seq
            steps = [d_seq, to_s, to_o, to_ifc, f]
            if mask is not None:
                steps.append(tf.cast(mask, dtype)[:, :, None])
            tas = [
                tf.TensorArray(dtype, size=length, element_shape=t.shape[1:]).unstack(t)
                for t in steps
            ]
            w_t = tf.transpose(w)

            def body(k, d_h, d_s, d_a_ta):
                t = length - 1 - k
                d_out_t, to_s_t, to_o_t, to_ifc_t, f_t, *m_t = (
                    ta.read(t) for ta in tas
                )
                d_h = d_h + d_out_t
                if m_t:  # a masked step passes both gradients on unchanged
                    keep_h, keep_s = d_h * (1.0 - m_t[0]), d_s * (1.0 - m_t[0])
                    d_h, d_s = d_h * m_t[0], d_s * m_t[0]
                d_s = d_s + d_h * to_s_t
                d_a = tf.concat(
                    [tf.tile(d_s, (1, 3)) * to_ifc_t, d_h * to_o_t], axis=-1
                )
                d_h_prev = tf.matmul(d_a, w_t)
                d_s_prev = d_s * f_t
                if m_t:
                    d_h_prev, d_s_prev = d_h_prev + keep_h, d_s_prev + keep_s
                return k + 1, d_h_prev, d_s_prev, d_a_ta.write(t, d_a)

            d_a_ta = tf.TensorArray(
                dtype, size=length, element_shape=(h0.shape[0], 4 * u)
            )
            zeros = tf.zeros_like(h0)
            _, d_h0, d_s0, d_a_ta = tf.while_loop(
                lambda *_: True,
                body,
                (0, zeros if d_h_final is None else d_h_final,
                 zeros if d_s_final is None else d_s_final, d_a_ta),
                maximum_iterations=length,
            )  # fmt: skip
            d_a = tf.reshape(d_a_ta.stack(), (-1, 4 * u))
            d_x = tf.reshape(
                tf.matmul(d_a, k, transpose_b=True), (length, batch, features)
            )
            d_k = tf.matmul(x_flat, d_a, transpose_a=True)
            d_w = tf.matmul(h_prev_flat, d_a, transpose_a=True)
            d_b = tf.reduce_sum(d_a, axis=0)
            return d_x, d_h0, d_s0, d_k, d_w, d_b

        return (h_t, s_t, h_seq), grad

    h_t, s_t, h_seq = op(
        x, tf.cast(h0, dtype), tf.cast(s0, dtype), tf.convert_to_tensor(kernel),
        tf.convert_to_tensor(recurrent_kernel), b,
    )  # fmt: skip
    return (h_t, s_t), (h_seq if keep else None)


def gru_block_form_refusal(
    dtype, recurrent_dropout_mask, default_activations, input_dropout_masks
) -> str | None:
    """Why the GRU's ``"block"`` form cannot run this call, or None.

    The form is a loop of ``tf.raw_ops.GRUBlockCell``, TensorFlow's fused CPU
    step of the reset-before GRU (a core op: TF Serving's C++ server runs
    it), one op per step: r_t, u_t = sigmoid([x_t, s_{t-1}] W_ru + b_ru),
    c_t = tanh([x_t, r_t * s_{t-1}] W_c + b_c), s_t = u_t * s_{t-1} +
    (1 - u_t) * c_t, which is this package's GRU with u_t = z_t (Keras's
    update gate, 1 - i_t) and r_t = o_t, where the gates are sigmoid and the
    candidate tanh, in float32 (the op's CPU type), without a recurrent
    dropout mask or per-gate-block input masks (one input mask is applied to
    x before). Being one op per step, it keeps a per-step mask (the loop's
    ``where``). TensorFlow registers no gradient for the op: the form has its
    own (``_block_gru_op``). XLA has no kernel for it, and other backends do
    not have it.
    """
    return _fused_op_refusal(
        "GRUBlockCell",
        default_activations,
        "sigmoid gates and a tanh candidate",
        dtype,
        recurrent_dropout_mask,
        input_dropout_masks,
    )


def _block_gru(x, s0, mask, kernel, recurrent_kernel, bias, keep):
    """The GRU's ``"block"`` form: one ``tf.raw_ops.GRUBlockCell`` per step.

    The op's weights from Keras's blocks [z | r | h]: ``w_ru = [kernel;
    recurrent_kernel]`` columns [r | z] (its u is z), ``w_c`` the candidate's
    columns. ``x`` time-major, in reading order, dropout applied; returns
    ``(final states, s at every step or None)`` as ``_scan``.
    """
    import tensorflow as tf

    u = recurrent_kernel.shape[0]
    dtype = x.dtype
    w = tf.concat([kernel, recurrent_kernel], axis=0)
    w_ru = tf.concat([w[:, u : 2 * u], w[:, :u]], axis=1)
    w_c = w[:, 2 * u :]
    if bias is None:
        b_ru, b_c = tf.zeros((2 * u,), dtype), tf.zeros((u,), dtype)
    else:
        b_ru, b_c = tf.concat([bias[u : 2 * u], bias[:u]], axis=0), bias[2 * u :]
    final, sequence = _block_gru_op(
        x, tf.cast(s0, dtype), w_ru, w_c, b_ru, b_c, mask=mask, keep=keep
    )
    return (final,), sequence


def _gru_block_loop(x, s0, weights, mask, keep):
    """The GRU's block loop: ``(s_T, s at every step or None)``."""

    def gru_step(carry, inputs_t, mask_t):
        import tensorflow as tf

        (s_tm1,) = carry
        *_, s_t = tf.raw_ops.GRUBlockCell(x=inputs_t[0], h_prev=s_tm1, **weights)
        if mask_t is not None:
            s_t = tf.where(mask_t[:, None], s_t, s_tm1)
        return (s_t,)

    (final,), sequence = _scan(gru_step, (s0,), [x], mask, keep, "block", False)
    return final, sequence


def _block_gru_op(x, s0, w_ru, w_c, b_ru, b_c, *, mask, keep):
    """``_gru_block_loop`` with a gradient (TensorFlow registers none for
    ``GRUBlockCell``).

    The gradient runs the loop again, keeping every state; computes every
    step's gates r_t, u_t and candidate c_t from those states at once (as
    the op does); then goes back through the steps with the op's own
    ``GRUBlockCellGrad``, one op per step, and takes the weights' gradients
    from its pre-activation gradients after the loop, in one product each.
    A masked step passes its gradient to the state before it unchanged.
    """
    import tensorflow as tf

    @tf.custom_gradient
    def op(x, s0, w_ru, w_c, b_ru, b_c):
        weights = {"w_ru": w_ru, "w_c": w_c, "b_ru": b_ru, "b_c": b_c}
        final, sequence = _gru_block_loop(x, s0, weights, mask, keep)

        def grad(d_final, d_sequence=None):
            _, states = _gru_block_loop(x, s0, weights, mask, True)
            h_prev = tf.concat([s0[None], states], axis=0)[:-1]
            x_h = tf.concat([x, h_prev], axis=-1)
            r, u = tf.split(
                tf.sigmoid(tf.einsum("tbk,kn->tbn", x_h, w_ru) + b_ru), 2, -1
            )
            x_rh = tf.concat([x, r * h_prev], axis=-1)
            c = tf.tanh(tf.einsum("tbk,kn->tbn", x_rh, w_c) + b_c)
            d_states = tf.zeros_like(states) if d_sequence is None else d_sequence
            length = tf.shape(x)[0]
            steps = [x, h_prev, r, u, c, d_states]
            if mask is not None:
                steps.append(tf.cast(mask, x.dtype)[:, :, None])
            tas = [
                tf.TensorArray(t.dtype, size=length, element_shape=t.shape[1:]).unstack(
                    t
                )
                for t in steps
            ]
            d_x_ta, d_c_ta, d_ru_ta = (
                tf.TensorArray(x.dtype, size=length, element_shape=shape)
                for shape in (x.shape[1:], c.shape[1:], (c.shape[1], 2 * w_c.shape[1]))
            )

            def body(k, d_h, d_x_ta, d_c_ta, d_ru_ta):
                t = length - 1 - k
                x_t, h_t, r_t, u_t, c_t, d_s_t, *m_t = (ta.read(t) for ta in tas)
                d_h = d_h + d_s_t
                d_op = d_h if not m_t else d_h * m_t[0]
                d_x_t, d_h_prev, d_c_bar, d_ru_bar = tf.raw_ops.GRUBlockCellGrad(
                    x=x_t, h_prev=h_t, **weights, r=r_t, u=u_t, c=c_t, d_h=d_op
                )
                if m_t:
                    d_h_prev = d_h_prev + d_h * (1.0 - m_t[0])
                return (
                    k + 1,
                    d_h_prev,
                    d_x_ta.write(t, d_x_t),
                    d_c_ta.write(t, d_c_bar),
                    d_ru_ta.write(t, d_ru_bar),
                )

            _, d_s0, d_x_ta, d_c_ta, d_ru_ta = tf.while_loop(
                lambda *_: True,
                body,
                (0, tf.zeros_like(s0) if d_final is None else d_final, d_x_ta,
                 d_c_ta, d_ru_ta),
                maximum_iterations=length,
            )  # fmt: skip
            d_c_bar, d_ru_bar = d_c_ta.stack(), d_ru_ta.stack()
            d_w_ru = tf.einsum("tbk,tbn->kn", x_h, d_ru_bar)
            d_w_c = tf.einsum("tbk,tbn->kn", x_rh, d_c_bar)
            d_b_ru = tf.reduce_sum(d_ru_bar, axis=(0, 1))
            d_b_c = tf.reduce_sum(d_c_bar, axis=(0, 1))
            return d_x_ta.stack(), d_s0, d_w_ru, d_w_c, d_b_ru, d_b_c

        if sequence is None:
            return final, grad
        return (final, sequence), grad

    result = op(x, s0, w_ru, w_c, b_ru, b_c)
    if keep:
        return result
    return result, None


def _read_outputs(final, sequence, mask, return_sequences, zero_output_for_mask):
    """``(last_output, outputs)`` from the loop's states.

    The output at each step is the first state (h_t, or s_t for the GRU);
    masked steps repeat the last unmasked output (zeros before it) or are
    zeros with zero_output_for_mask. ``sequence`` is None when only the last
    output is wanted and there is no mask (nothing was stacked).
    """
    if sequence is None:
        last_output = final[0]
        return last_output, last_output[:, None, :]
    outputs = sequence  # (time, batch, units)
    if mask is not None:
        if zero_output_for_mask:
            shown = mask
        else:
            # seen_t: some step up to t was unmasked; the state has not moved
            # since the last unmasked step, so it is that step's output.
            shown = ops.cumsum(ops.cast(mask, "int32"), axis=0) > 0
        outputs = ops.where(shown[:, :, None], outputs, ops.zeros_like(outputs))
    last_output = outputs[-1]
    if return_sequences:
        return last_output, ops.transpose(outputs, (1, 0, 2))  # (batch, time, u)
    return last_output, last_output[:, None, :]


def _input_terms(x, blocks, hoist):
    """The loop's per-step inputs, and how a step turns them into U x_t + b.

    ``blocks`` is a list of (kernel, bias) column blocks; the step gets one
    pre-activation per block. Hoisted (the small form): U x_t + b of every
    step before the loop, one large matmul per block. Otherwise x_t is read
    and projected inside the step: in TensorFlow's executor at batch 64 these
    products for coming steps run alongside the recurrence (parallel
    iterations), off its critical path; under XLA this measured faster than
    hoisting.

    Returns ``(sequences, project)``: the time-major tensors the loop reads,
    and ``project(step_inputs) -> [U x_t + b per block]``.
    """
    if hoist:
        return [_project(x, k, b) for k, b in blocks], list

    def project(step_inputs):
        (x_t,) = step_inputs
        terms = []
        for k, b in blocks:
            ux_t = ops.matmul(x_t, k)
            terms.append(ux_t if b is None else ux_t + b)
        return terms

    return [x], project


def _project(x, kernel, bias):
    """U x_t + b for every step at once: (time, batch, features) -> (.., width).

    One 2-D matmul over time * batch rows (a 3-D matmul becomes a batched
    matmul in TensorFlow, which is slower on CPU).
    """
    shape = ops.shape(x)
    ux = ops.matmul(ops.reshape(x, (-1, shape[-1])), kernel)
    if bias is not None:
        ux = ux + bias
    return ops.reshape(ux, (shape[0], shape[1], kernel.shape[-1]))


def _scan(step, init, inputs, mask, keep_sequence, form, training):
    """Run ``step`` over the time-major tensors ``inputs`` (and ``mask``).

    ``step(carry, inputs_t, mask_t) -> new_carry``: ``inputs_t`` a list (one
    slice per tensor of ``inputs``), mask_t None without a mask; ``carry`` a
    tuple of states whose first element is the output. Returns
    ``(final carry, the first state at every step or None)``.
    """
    # Steps per loop iteration: UNROLLED_STEPS in the "unrolled" form, and in
    # TensorFlow's graph executor also in the small-batch forms, whose steps
    # are a few small ops each beside the loop's own (module docstring).
    unroll = 1
    if form == "unrolled" or (form in UNROLLED_LOOP_FORMS and graph_executor()):
        unroll = UNROLLED_STEPS
    if keras.backend.backend() == "tensorflow":
        return _while_loop_tf(
            step, init, inputs, mask, keep_sequence, form, training, unroll
        )
    return _scan_ops(step, init, inputs, mask, keep_sequence, unroll)


def _while_loop_tf(step, init, inputs, mask, keep_sequence, form, training, unroll):
    """The TensorFlow loop: a ``tf.while_loop`` over TensorArrays, as
    ``keras.layers.RNN``'s own. (``keras.ops.scan`` round-trips its carry
    through a TensorArray at every step and its gradient does not compile
    under XLA.)

    Iterations overlap (``parallel_iterations``) except in the small and
    block forms, where everything off the recurrence is already out of the
    loop (or in one op) and one at a time measured faster. The trip count is
    ``maximum_iterations`` alone (XLA needs it to differentiate the loop; a
    condition on top would add ops to every step). With ``unroll`` > 1, each
    iteration runs that many steps and a second loop the last
    ``length % unroll``, one each.
    """
    import tensorflow as tf

    length = tf.shape(inputs[0])[0]
    static_length = inputs[0].shape[0]
    inputs_ta = [
        tf.TensorArray(t.dtype, size=length, element_shape=t.shape[1:]).unstack(t)
        for t in inputs
    ]
    mask_ta = None
    if mask is not None:
        mask_ta = tf.TensorArray(
            tf.bool, size=length, element_shape=mask.shape[1:]
        ).unstack(mask)

    def steps(k):
        def body(t, *loop_vars):
            sequence_ta = loop_vars[0] if keep_sequence else None
            carry = loop_vars[-len(init) :]
            for j in range(k):
                mask_t = None if mask_ta is None else mask_ta.read(t + j)
                carry = tuple(step(carry, [ta.read(t + j) for ta in inputs_ta], mask_t))
                if keep_sequence:
                    sequence_ta = sequence_ta.write(t + j, carry[0])
            if keep_sequence:
                return (t + k, sequence_ta, *carry)
            return (t + k, *carry)

        return body

    loop_vars = (tf.constant(0, "int32"), *init)
    if keep_sequence:
        outputs_ta = tf.TensorArray(
            init[0].dtype, size=length, element_shape=init[0].shape
        )
        loop_vars = (loop_vars[0], outputs_ta, *init)

    def loop(k, trips, loop_vars):
        return tuple(
            tf.while_loop(
                lambda *_: True,
                steps(k),
                loop_vars,
                maximum_iterations=trips,
                parallel_iterations=1 if form in ("small", "block") else 32,
                swap_memory=training,
            )
        )

    if static_length is None and compiled():
        unroll = 1  # XLA cannot differentiate a loop that may run no iteration
    result = loop_vars
    if unroll == 1 or static_length is None or static_length >= unroll:
        result = loop(unroll, length // unroll, result)
    if unroll > 1 and (static_length is None or static_length % unroll):
        result = loop(1, length % unroll, result)  # the last steps, one each
    carry = tuple(result[-len(init) :])
    if not keep_sequence:
        return carry, None
    sequence = result[1].stack()
    sequence.set_shape((static_length, *init[0].shape))
    return carry, sequence


def _scan_ops(step, init, inputs, mask, keep_sequence, unroll=1):
    """The other backends: ``keras.ops.scan`` (``jax.lax.scan`` in JAX).

    The inputs and the mask (1.0 = keep) ride along as one tensor: Keras's
    scan takes one sequence reliably.
    """
    widths = [t.shape[-1] for t in inputs]
    columns = list(inputs)
    if mask is not None:
        columns.append(ops.cast(mask, inputs[0].dtype)[:, :, None])
    packed = ops.concatenate(columns, axis=-1) if len(columns) > 1 else columns[0]

    def scan_step(carry, xs_t):
        parts, offset = [], 0
        for width in widths:
            parts.append(xs_t[:, offset : offset + width])
            offset += width
        mask_t = None if mask is None else xs_t[:, offset] > 0.5
        new_carry = tuple(step(carry, parts, mask_t))
        return new_carry, new_carry[0]

    length = packed.shape[0] if isinstance(packed.shape[0], int) else None
    carry, sequence = ops.scan(
        scan_step, tuple(init), packed, length=length, unroll=unroll
    )
    return carry, (sequence if keep_sequence else None)
