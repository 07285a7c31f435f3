"""The fast sequence path: the cell's equations, with the loop written for speed.

``keras.layers.RNN`` calls the cell once per time step, and each call does all
of its work inside the loop: it reads and casts the weights, slices the
recurrent kernel into gate blocks, projects x_t, splits the pre-activations.
Every layer of this package runs this module's loop instead (except with
``unroll``): the same equations, with everything that does not depend on the
state done once, before the loop. It has two forms, chosen by batch size
(``GatedRNN.inner_loop``; measured with ``keras-gates bench``):

Small batches, inference (up to ``fused_max_batch``; serving is often batch
1): a step costs what its ops cost to launch (~5-10 us each in TensorFlow's
while loop), not what they compute, so the step has as few ops as possible:

    before the loop, all steps at once (one large matmul; the weights'
    blocks in Keras's order, SPEC §1):
        Ux_t + b = [U_i x_t + b_i | U_f x_t + b_f | U x_t + b | U_o x_t + b_o]
    inside the loop, per step (LSTM):
        a_t  = W h_{t-1} + (Ux_t + b)                 one matmul, one add
        i_t, f_t, s~_t, o_t = one sigmoid over a_t, with
                              tanh(a) = 2 * sigmoid(2 a) - 1 for s~_t (the
                              factor 2 folded into W, U and b once)
        s_t  = f_t * s_{t-1} + i_t * s~_t
        h_t  = o_t * tanh(s_t)

and iterations run one at a time (nothing is left to overlap).

Larger batches and training: the matmuls are the cost. x_t is projected
inside the step again, where TensorFlow overlaps the products of coming steps
with the recurrence (32 parallel iterations, as Keras's loop), off its
critical path; each gate keeps its own activation (one wide sigmoid with the
tanh identity measured slower than three sigmoids and a tanh at batch 64);
and the output gate o_t, needed only at the end of the step, gets its own
product beside the one for i_t, f_t and s~_t, so the two run side by side.
What it still saves over Keras's loop: no per-step variable reads, casts or
kernel slices, whose gradients Keras's loop accumulates at every step (the
GRU's sliced recurrent kernel most: its training step measured 1.5x faster).
Dropout applies here as in the cell: one input mask and one recurrent mask
per sequence, drawn before the loop (the input mask is applied to the whole
sequence at once).

The GRU cannot fuse its candidate with its gates (s~_t needs o_t first); its
weights hold Keras's update gate z_t = 1 - i_t (SPEC §1):

    a_t^{zo} = W_{zo} s_{t-1} + (U_{zo} x_t + b_{zo})    small batches: one
    z_t, o_t = sigmoid(a_t^{zo}),  i_t = 1 - z_t          matmul, one sigmoid
    s~_t     = tanh(W (o_t * s_{t-1}) + (U x_t + b))
    s_t      = z_t * s_{t-1} + i_t * s~_t                 (z_t = 1 - i_t)

At larger batches o_t and z_t get a matmul each instead: only o_t is on the
way to s~_t, and its product is half as wide. The state update is written so
that z_t * s_{t-1} is computed while s~_t is: two ops after s~_t on the
critical path. (These choices are per-op measurements, benchmarks/.)

Semantics are those of ``keras.layers.RNN`` (and ``tests/reference.py``):
a masked step keeps the state; the output of a masked step repeats the last
unmasked output (zeros before the first one), or is zeros with
``zero_output_for_mask``; ``go_backwards`` reads from the end and returns the
outputs in reading order. Because a gated layer's output is its (first)
state, the loop carries only the state, and the outputs are read off the
stacked states afterwards with the mask: one vectorised ``where`` instead of
one per step; without a mask or ``return_sequences`` nothing is stacked.

Under TensorFlow the loop is a ``tf.while_loop`` over TensorArrays (it traces
under ``tf.function`` and ``jit_compile``, differentiates under XLA, and
exports to a SavedModel of core ops); under other backends it is
``keras.ops.scan`` (``jax.lax.scan``).
"""

from __future__ import annotations

import keras
from keras import ops


def supports(layer) -> bool:
    """Whether ``layer`` (a ``GatedRNN``) can run on this fast path.

    ``unroll`` keeps the generic path: it exists for short fixed-length
    sequences (and TFLite), where a Python loop of cell calls is what users
    ask for.
    """
    return not layer.unroll and getattr(layer.cell, "gate_names", None) is not None


def _has_default_activations(cell) -> bool:
    return (
        cell.activation is keras.activations.tanh
        and cell.recurrent_activation is keras.activations.sigmoid
    )


def run(layer, sequences, initial_state, mask=None, training=False, small=False):
    """``inner_loop`` of ``layer`` on the fast path.

    Args:
        layer: a built ``keras_gates.LSTM`` or ``GRU``.
        sequences: (batch, time, features).
        initial_state: list of (batch, units) states ([h, s] or [s]).
        mask: optional (batch, time) booleans.
        training: whether dropout applies (the cell's per-sequence masks,
            prepared by ``GatedRNN.inner_loop`` before this is called).
        small: the small-batch form (inference only): every input
            projection before the loop, the LSTM's gates under one sigmoid,
            iterations one at a time. Measured faster at batch 1, slower from
            batch 4 (benchmarks/), where the per-step ops are no longer the
            cost.

    Returns:
        ``(last_output, outputs, states)`` as ``keras.layers.RNN.inner_loop``:
        last_output (batch, units), outputs (batch, time, units) (or
        (batch, 1, units) without ``return_sequences``), the final states.
    """
    cell = layer.cell
    dtype = sequences.dtype
    x = sequences
    kernel = ops.cast(cell.kernel, dtype)
    recurrent_kernel = ops.cast(cell.recurrent_kernel, dtype)
    bias = ops.cast(cell.bias, dtype) if cell.use_bias else None
    recurrent_mask = None
    if training:
        input_mask = cell.get_dropout_mask(x[:, 0, :])
        if input_mask is not None:  # one mask per sequence: (batch, features)
            x = x * ops.cast(input_mask, dtype)[:, None, :]
        recurrent_mask = cell.get_recurrent_dropout_mask(initial_state[0])
        if recurrent_mask is not None:
            recurrent_mask = ops.cast(recurrent_mask, dtype)

    # Time-major, in reading order: the loop walks axis 0 forwards.
    x = ops.transpose(x, (1, 0, 2))  # (time, batch, features)
    if mask is not None:
        mask = ops.transpose(ops.cast(mask, "bool"), (1, 0))  # (time, batch)
    if layer.go_backwards:
        x = ops.flip(x, axis=0)
        if mask is not None:
            mask = ops.flip(mask, axis=0)

    # Without a mask and without return_sequences only the final state
    # matters: the loop then carries the state alone (no per-step writes of a
    # stacked sequence), which is the common serving case.
    keep_sequence = layer.return_sequences or mask is not None
    from keras_gates.lstm import LSTMCell  # here: lstm.py imports this module

    loop = _lstm_loop if isinstance(cell, LSTMCell) else _gru_loop
    states_seq, final_states = loop(
        cell,
        x,
        initial_state,
        mask,
        (kernel, recurrent_kernel, bias),
        keep_sequence=keep_sequence,
        small=small and not training,
        recurrent_mask=recurrent_mask,
        training=training,
    )
    if states_seq is None:
        last_output = final_states[0]
        return last_output, last_output[:, None, :], final_states

    # The output at each step is the first state (h_t, or s_t for the GRU);
    # masked steps repeat the last unmasked output (zeros before it) or are
    # zeros with zero_output_for_mask.
    outputs = states_seq  # (time, batch, units)
    if mask is not None:
        if layer.zero_output_for_mask:
            shown = mask
        else:
            # seen_t: some step up to t was unmasked; the state has not moved
            # since the last unmasked step, so it is that step's output.
            shown = ops.cumsum(ops.cast(mask, "int32"), axis=0) > 0
        outputs = ops.where(shown[:, :, None], outputs, ops.zeros_like(outputs))
    last_output = outputs[-1]
    if layer.return_sequences:
        outputs = ops.transpose(outputs, (1, 0, 2))  # (batch, time, units)
    else:
        outputs = last_output[:, None, :]
    return last_output, outputs, final_states


def _input_terms(x, blocks, hoist):
    """The loop's per-step inputs, and how a step turns them into U x_t + b.

    ``blocks`` is a list of (kernel, bias) column blocks; the step gets one
    pre-activation per block. Hoisted (small batches): U x_t + b of every
    step before the loop, one large matmul per block. Otherwise x_t is read
    and projected inside the step: at batch 64 TensorFlow runs these products
    for the coming steps alongside the recurrence (parallel iterations), off
    its critical path, and their weight gradients accumulate there too.

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


def _scan(step, init, inputs, mask, keep_sequence, small, training):
    """Run ``step`` over the time-major tensors ``inputs`` (and ``mask``).

    ``step(carry, inputs_t, mask_t) -> new_carry``: ``inputs_t`` a list (one
    slice per tensor of ``inputs``), mask_t None without a mask; ``carry`` a
    tuple of states whose first element is the output. Returns
    ``(final carry, the first state at every step)``, the sequence None when
    ``keep_sequence`` is False and there is no mask.
    """
    if keras.backend.backend() == "tensorflow":
        return _while_loop_tf(step, init, inputs, mask, keep_sequence, small, training)
    return _scan_ops(step, init, inputs, mask, keep_sequence)


def _while_loop_tf(step, init, inputs, mask, keep_sequence, small, training):
    """The TensorFlow loop: a ``tf.while_loop`` over TensorArrays, as
    ``keras.layers.RNN``'s own. (``keras.ops.scan`` round-trips its carry
    through a TensorArray at every step and its gradient does not compile
    under XLA.)

    Iterations overlap (``parallel_iterations``) except in the small-batch
    form, where everything off the recurrence is already out of the loop and
    one at a time measured faster. The trip count is ``maximum_iterations``
    alone (XLA needs it to differentiate the loop; a condition on top would
    add ops to every step).
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
    keep = keep_sequence or mask is not None

    def body(t, *loop_vars):
        carry = loop_vars[-len(init) :]
        mask_t = None if mask_ta is None else mask_ta.read(t)
        new_carry = tuple(step(carry, [ta.read(t) for ta in inputs_ta], mask_t))
        if keep:
            return (t + 1, loop_vars[0].write(t, new_carry[0]), *new_carry)
        return (t + 1, *new_carry)

    loop_vars = (tf.constant(0, "int32"), *init)
    if keep:
        outputs_ta = tf.TensorArray(
            init[0].dtype, size=length, element_shape=init[0].shape
        )
        loop_vars = (loop_vars[0], outputs_ta, *init)
    result = tf.while_loop(
        lambda *_: True,
        body,
        loop_vars,
        maximum_iterations=length,
        parallel_iterations=1 if small else 32,
        swap_memory=training,
    )
    carry = tuple(result[-len(init) :])
    if not keep:
        return carry, None
    sequence = result[1].stack()
    sequence.set_shape((static_length, *init[0].shape))
    return carry, sequence


def _scan_ops(step, init, inputs, mask, keep_sequence):
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
    carry, sequence = ops.scan(scan_step, tuple(init), packed, length=length)
    return carry, (sequence if keep_sequence or mask is not None else None)


def _lstm_loop(
    cell,
    x,
    initial_state,
    mask,
    weights,
    keep_sequence,
    small,
    recurrent_mask,
    training,
):
    kernel, recurrent_kernel, bias = weights
    u = cell.units
    n_gates = cell.num_gate_blocks  # Keras's order: i, (f,) s~ (its c), o
    candidate = n_gates - 2  # the s~ block
    # Small batches: tanh(a) = 2 * sigmoid(2 a) - 1, so one sigmoid covers
    # every block (fewer ops per step); the candidate block's columns are
    # doubled once, here. Not in float16 (2 sigmoid - 1 loses tanh's
    # precision near 0) and not at larger batches, where the one wide
    # sigmoid measured slower than three sigmoids and a tanh.
    fuse_tanh = (
        small
        and _has_default_activations(cell)
        and keras.backend.standardize_dtype(x.dtype) in ("float32", "float64")
    )
    if fuse_tanh:
        scale = ops.concatenate(
            [
                ops.ones((candidate * u,), x.dtype),
                ops.full((u,), 2.0, x.dtype),
                ops.ones((u,), x.dtype),  # o
            ]
        )
        kernel = kernel * scale
        recurrent_kernel = recurrent_kernel * scale
        if bias is not None:
            bias = bias * scale

    if small:
        # Per-op bound: every block from one matmul.
        groups = [(kernel, recurrent_kernel, bias)]
    else:
        # Matmul bound: o_t is needed only at the end of the step, so it gets
        # its own product, which runs alongside the one for i, f and s~ (a
        # shorter critical path: measured 0.89x instead of 0.97x of Keras's
        # LSTM at batch 64, both shapes of the benchmark). o is the last block.
        groups = [
            (
                kernel[:, cols],
                recurrent_kernel[:, cols],
                None if bias is None else bias[cols],
            )
            for cols in (slice(0, (n_gates - 1) * u), slice((n_gates - 1) * u, None))
        ]
    inputs, project = _input_terms(x, [(k, b) for k, _, b in groups], hoist=small)
    recurrent = [w for _, w, _ in groups]

    def lstm_step(carry, inputs_t, mask_t):
        h_tm1, s_tm1 = carry
        h_in = h_tm1 if recurrent_mask is None else h_tm1 * recurrent_mask
        pre = [ops.matmul(h_in, w) + ux for w, ux in zip(recurrent, project(inputs_t))]
        if fuse_tanh:
            # sigmoid of every block: i, (f,) s~ (as 2 sigmoid(2 a) - 1), o
            blocks_t = ops.split(ops.sigmoid(pre[0]), n_gates, axis=-1)
            s_tilde_t = 2.0 * blocks_t[candidate] - 1.0  # = tanh(a_s)
        else:
            if small:
                a_blocks = ops.split(pre[0], n_gates, axis=-1)
            else:
                a_blocks = [*ops.split(pre[0], n_gates - 1, axis=-1), pre[1]]
            blocks_t = [
                cell.activation(a) if j == candidate else cell.recurrent_activation(a)
                for j, a in enumerate(a_blocks)
            ]
            s_tilde_t = blocks_t[candidate]
        i_t, o_t = blocks_t[0], blocks_t[-1]
        if cell.forget_gate:
            f_t = blocks_t[1]
            s_t = f_t * s_tm1 + i_t * s_tilde_t
        else:
            s_t = s_tm1 + i_t * s_tilde_t
        h_t = o_t * cell.activation(s_t)
        if mask_t is not None:
            keep = mask_t[:, None]
            h_t = ops.where(keep, h_t, h_tm1)
            s_t = ops.where(keep, s_t, s_tm1)
        return h_t, s_t

    carry, h_seq = _scan(
        lstm_step,
        (initial_state[0], initial_state[1]),
        inputs,
        mask,
        keep_sequence,
        small,
        training,
    )
    return h_seq, list(carry)


def _gru_loop(
    cell,
    x,
    initial_state,
    mask,
    weights,
    keep_sequence,
    small,
    recurrent_mask,
    training,
):
    kernel, recurrent_kernel, bias = weights
    u = cell.units

    def block(j, k=1):  # gate blocks j .. j + k - 1 of (U, W, b), split once
        cols = slice(j * u, (j + k) * u)
        b = None if bias is None else bias[cols]
        return kernel[:, cols], recurrent_kernel[:, cols], b

    # Keras's blocks: 0 = z (1 - i), 1 = o (its r), 2 = the candidate's.
    if small:
        # Per-op bound: z and o from one matmul and one sigmoid.
        groups = [block(0, 2), block(2)]
    else:
        # Matmul bound: o_t alone feeds the candidate, so it gets its own
        # (half as wide) product and the critical path is shorter; z_t's
        # runs alongside. Measured 0.83x instead of 1.08x of Keras's GRU at
        # 64 x 200 x 64 -> 256.
        groups = [block(0), block(1), block(2)]
    inputs, project = _input_terms(x, [(k, b) for k, _, b in groups], hoist=small)
    recurrent = [w for _, w, _ in groups]

    def gru_step(carry, inputs_t, mask_t):
        (s_tm1,) = carry
        s_in = s_tm1 if recurrent_mask is None else s_tm1 * recurrent_mask
        *ux_gates, ux_s = project(inputs_t)
        gates = [
            cell.recurrent_activation(ops.matmul(s_in, w) + ux)
            for w, ux in zip(recurrent[:-1], ux_gates)
        ]
        z_t, o_t = ops.split(gates[0], 2, axis=-1) if small else gates
        i_t = 1.0 - z_t
        s_tilde_t = cell.activation(ops.matmul(o_t * s_in, recurrent[-1]) + ux_s)
        # z_t * s_{t-1} (z_t = 1 - i_t) is ready before s~_t: two ops after it
        # on the critical path (s_{t-1} + i_t * (s~_t - s_{t-1}) has one op
        # fewer but three after s~_t, and measured 1.2x slower at batch 64).
        s_t = z_t * s_tm1 + i_t * s_tilde_t
        if mask_t is not None:
            s_t = ops.where(mask_t[:, None], s_t, s_tm1)
        return (s_t,)

    carry, s_seq = _scan(
        gru_step, (initial_state[0],), inputs, mask, keep_sequence, small, training
    )
    return s_seq, list(carry)
