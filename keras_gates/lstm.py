"""The LSTM of the "selective read, write and forget" lectures, as a Keras layer.

State (h, s). At step t, with x_t the input and h_{t-1}, s_{t-1} the state:

    o_t  = sigmoid(W_o h_{t-1} + U_o x_t + b_o)      output gate   (selective write)
    i_t  = sigmoid(W_i h_{t-1} + U_i x_t + b_i)      input gate    (selective read)
    f_t  = sigmoid(W_f h_{t-1} + U_f x_t + b_f)      forget gate   (selective forget)
    s~_t = tanh(W h_{t-1} + U x_t + b)               candidate state
    s_t  = f_t * s_{t-1} + i_t * s~_t
    h_t  = o_t * tanh(s_t)

With ``forget_gate=False`` (the lecture's variant with output and input gates
only) there is no f_t and s_t = s_{t-1} + i_t * s~_t. ``sigmoid`` is
``recurrent_activation`` and ``tanh`` is ``activation``, as in Keras.

Weights: exactly ``keras.layers.LSTM``'s variables (names, shapes, and its
gate-block order i, f, c, o, where Keras's c is the candidate s~), so the
built-in's checkpoints load here and ours there, unchanged:

    kernel            (input_dim, 4 * units) = [U_i | U_f | U | U_o]
    recurrent_kernel  (units, 4 * units)     = [W_i | W_f | W | W_o]
    bias              (4 * units,)           = [b_i | b_f | b | b_o]

With ``forget_gate=False`` the f blocks are absent: [U_i | U | U_o] (3 units
wide), and no built-in LSTM checkpoint fits it. The maths equals
``keras.layers.LSTM`` (``unit_forget_bias`` included).

References: Hochreiter & Schmidhuber (1997), "Long short-term memory";
Mitesh M. Khapra, CS7015 Deep Learning, lecture 14 (LSTMs and GRUs).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_gates import cudnn, kernels, validation
from keras_gates.base import GatedCell, GatedRNN


@keras.saving.register_keras_serializable(package="keras_gates")
class LSTMCell(GatedCell):
    """One step of the lecture's LSTM, for use in ``keras.layers.RNN``.

    Args:
        units: Positive integer, the size of h_t and s_t.
        activation: The state nonlinearity (tanh in the equations). Default
            ``"tanh"``.
        recurrent_activation: The gate nonlinearity (sigmoid in the
            equations). Default ``"sigmoid"``.
        use_bias: Whether the gates and candidate have biases. Default True.
        kernel_initializer, recurrent_initializer, bias_initializer:
            Initializers for ``kernel`` (the U blocks), ``recurrent_kernel``
            (the W blocks) and ``bias``. Defaults ``"glorot_uniform"``,
            ``"orthogonal"``, ``"zeros"``.
        unit_forget_bias: If True (default, as in Keras), b_f starts at 1 so
            the cell remembers by default (Jozefowicz et al., 2015). Ignored
            with ``forget_gate=False``.
        kernel_regularizer, recurrent_regularizer, bias_regularizer,
        kernel_constraint, recurrent_constraint, bias_constraint: As in
            ``keras.layers.LSTMCell``.
        dropout: Fraction in [0, 1) of the inputs x_t to drop, one mask per
            sequence (one per gate block when ``recurrent_dropout > 0``).
            Default 0.
        recurrent_dropout: Fraction in [0, 1) of h_{t-1} to drop in the gate
            and candidate pre-activations, one mask per gate block and
            sequence. Default 0.
        seed: Integer seed for the dropout masks. The masks are drawn as
            ``keras.layers.LSTMCell`` draws them (the input's, then h_{t-1}'s;
            with ``recurrent_dropout > 0`` one per block i, f, c, o each), so
            with the same seed and weights training equals the built-in's.
            Where it does not: an inference call between training steps
            (e.g. ``fit``'s validation) moves the built-in's seed state and
            not this cell's; ``implementation=1`` with ``recurrent_dropout=0``
            (the built-in then draws per-block input masks, this cell one);
            and ``forget_gate=False`` (no built-in: masks per block i, c, o).
        forget_gate: False for the lecture's variant without a forget gate:
            s_t = s_{t-1} + i_t * s~_t. Default True.
        weight_layout: The block order of the weights this cell loads next:
            ``"keras"`` (default; what it builds and saves) or ``"lecture"``
            for files written by keras_gates 0.1 before it used Keras's
            order ([o | i | f | s~]); converted on load. A ``.keras`` file
            says which in its config, and 0.1's weights-only files are
            recognised by the seed-state entry they hold.

    Call arguments:
        inputs: x_t, shape (batch, input_dim).
        states: [h_{t-1}, s_{t-1}], each (batch, units).
        training: Whether dropout applies.
        return_gates: Also return a dict of this step's o_t, i_t, f_t,
            s_tilde_t, s_t and h_t (what ``keras_gates.trace_gates`` reads).

    Returns:
        ``(h_t, [h_t, s_t])``, plus the gate dict with ``return_gates``.

    Example:

    >>> cell = keras_gates.LSTMCell(8)
    >>> layer = keras.layers.RNN(cell)
    >>> layer(np.zeros((2, 5, 3), "float32")).shape
    (2, 8)
    """

    def __init__(
        self,
        units: int,
        activation: Any = "tanh",
        recurrent_activation: Any = "sigmoid",
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        recurrent_initializer: Any = "orthogonal",
        bias_initializer: Any = "zeros",
        unit_forget_bias: bool = True,
        kernel_regularizer: Any = None,
        recurrent_regularizer: Any = None,
        bias_regularizer: Any = None,
        kernel_constraint: Any = None,
        recurrent_constraint: Any = None,
        bias_constraint: Any = None,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        seed: int | None = None,
        forget_gate: bool = True,
        weight_layout: str = "keras",
        **kwargs,
    ):
        unit_forget_bias = validation.boolean("unit_forget_bias", unit_forget_bias)
        forget_gate = validation.boolean("forget_gate", forget_gate)
        super().__init__(
            units,
            activation=activation,
            recurrent_activation=recurrent_activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            recurrent_regularizer=recurrent_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            recurrent_constraint=recurrent_constraint,
            bias_constraint=bias_constraint,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            seed=seed,
            weight_layout=weight_layout,
            **kwargs,
        )
        self.unit_forget_bias = unit_forget_bias
        self.forget_gate = forget_gate
        self.state_size = [self.units, self.units]  # h, s

    # What the cell carries (GatedCell): the states [h, s], h the output.
    state_names = ("h", "s")

    @property
    def gate_names(self) -> tuple[str, ...]:
        if self.forget_gate:
            return ("o", "i", "f", "s_tilde")
        return ("o", "i", "s_tilde")

    @property
    def weight_blocks(self) -> tuple[str, ...]:
        # keras.layers.LSTM's order; its c is the candidate s~.
        return ("i", "f", "c", "o") if self.forget_gate else ("i", "c", "o")

    def lecture_to_keras(self, array):
        # keras_gates 0.1 stored [o | i | f | s~] ([o | i | s~] without f).
        blocks = np.split(np.asarray(array), self.num_gate_blocks, axis=-1)
        if self.forget_gate:
            o, i, f, s_tilde = blocks
            return np.concatenate([i, f, s_tilde, o], axis=-1)
        o, i, s_tilde = blocks
        return np.concatenate([i, s_tilde, o], axis=-1)

    def mismatch_reason(self, key, stored_shape):
        u = self.units
        if key in ("0", "1") and stored_shape[-1] in (3 * u, 4 * u):
            if self.forget_gate and stored_shape[-1] == 3 * u:
                return (
                    "The checkpoint has 3 gate blocks [i | c | o]: it was "
                    "written by keras_gates.LSTM(forget_gate=False). Build this "
                    "layer with forget_gate=False to load it."
                )
            if not self.forget_gate and stored_shape[-1] == 4 * u:
                return (
                    "The checkpoint has 4 gate blocks [i | f | c | o]: an LSTM "
                    "with a forget gate (keras.layers.LSTM, or keras_gates.LSTM "
                    "with forget_gate=True), and this layer has "
                    "forget_gate=False, so there is no f block to put it in. "
                    "Build the layer with forget_gate=True to load it."
                )
        return super().mismatch_reason(key, stored_shape)

    def make_bias_initializer(self):
        if not (self.unit_forget_bias and self.forget_gate):
            return self.bias_initializer

        def bias_with_forget_ones(shape, dtype=None):
            # [b_i | b_f = 1 | b | b_o], as keras.layers.LSTM
            u = self.units
            return ops.concatenate(
                [
                    self.bias_initializer((u,), dtype=dtype),
                    ops.ones((u,), dtype=dtype),
                    self.bias_initializer((2 * u,), dtype=dtype),
                ]
            )

        return bias_with_forget_ones

    def call(self, inputs, states, training=False, return_gates=False):
        h_tm1, s_tm1 = states  # (batch, units) each
        x_t = self.dropped_inputs(inputs, training)
        h_tm1_in = self.dropped_state(h_tm1, training)
        # One pre-activation per block, in the weights' (Keras's) order:
        # a_i = W_i h_{t-1} + U_i x_t + b_i, ..., a_s = W h_{t-1} + U x_t + b.
        if self.forget_gate:
            a_i, a_f, a_s, a_o = self.gate_blocks(x_t, h_tm1_in)
        else:
            a_i, a_s, a_o = self.gate_blocks(x_t, h_tm1_in)

        o_t = self.recurrent_activation(a_o)
        i_t = self.recurrent_activation(a_i)
        s_tilde_t = self.activation(a_s)
        if self.forget_gate:
            f_t = self.recurrent_activation(a_f)
            s_t = f_t * s_tm1 + i_t * s_tilde_t
        else:
            s_t = s_tm1 + i_t * s_tilde_t
        h_t = o_t * self.activation(s_t)
        if return_gates:  # keras_gates.trace_gates reads the step through here
            gates = {"o": o_t, "i": i_t, "s_tilde": s_tilde_t, "s": s_t, "h": h_t}
            if self.forget_gate:
                gates["f"] = f_t
            return h_t, [h_t, s_t], gates
        return h_t, [h_t, s_t]

    def sequence(self, sequences, states, mask=None, **options):
        """This cell over a whole sequence: ``kernels.lstm_sequence`` with its
        weights, options and dropout masks (``GatedCell.sequence``)."""
        h_0, s_0 = states
        training = options.get("training", False)
        return kernels.lstm_sequence(
            sequences,
            h_0,
            s_0,
            mask,
            *self.sequence_weights(sequences.dtype),
            activation=self.activation,
            recurrent_activation=self.recurrent_activation,
            forget_gate=self.forget_gate,
            **self.sequence_dropout_masks(sequences, states, training),
            **options,
        )

    # `sequence` runs the equations of this `call` (GatedCell.has_sequence_kernel).
    sequence_kernel_call = call

    def get_initial_state(self, batch_size=None):
        return [
            ops.zeros((batch_size, self.units), dtype=self.compute_dtype)
            for _ in range(2)
        ]

    def get_config(self):
        config = {
            "unit_forget_bias": self.unit_forget_bias,
            "forget_gate": self.forget_gate,
        }
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="keras_gates")
class LSTM(GatedRNN):
    """The lecture's LSTM over a sequence: a drop-in for ``keras.layers.LSTM``.

    Takes every argument of ``LSTMCell`` (see there, and the equations at the
    top of this module) plus the ``keras.layers.RNN`` ones below.

    Args:
        units, activation, recurrent_activation, use_bias, *_initializer,
        unit_forget_bias, *_regularizer, *_constraint, dropout,
        recurrent_dropout, seed, forget_gate, weight_layout: See
            ``LSTMCell``.
        activity_regularizer: Regularizer on the layer's output.
        return_sequences: Return h_t at every step (batch, time, units)
            instead of the last one. Default False.
        return_state: Also return the final h and s. Default False.
        go_backwards: Read the sequence from its end, and return the outputs
            in that (reversed) order. Default False.
        stateful: Carry the final state of batch k into batch k + 1 (fixed
            batch size; ``reset_state()`` zeroes it). Default False.
        unroll: Unroll the time loop (short, fixed-length sequences only).
        zero_output_for_mask: Masked steps output zeros instead of repeating
            the previous output (return_sequences only). Default False.
        use_cudnn: Whether to run cuDNN's LSTM on a GPU, as
            ``keras.layers.LSTM`` does (the same kernel: the layers share
            their variables and maths). ``"auto"`` (default): cuDNN where it
            can run (``keras_gates.cudnn`` says when), the package's kernel
            elsewhere, e.g. on a CPU; True: cuDNN, or a ValueError naming what
            prevents it; False: never. Where cuDNN can run, the layer tells
            Keras it does not support XLA (as the built-in does), so
            ``jit_compile="auto"`` leaves XLA off and Keras turns an explicit
            ``model.compile(jit_compile=True)`` off with a warning; with
            ``use_cudnn=False`` XLA compiles the package's kernel. A bare
            ``tf.function(jit_compile=True)`` always runs the package's
            compiled kernel. Traces and serving exports always run the
            package's kernels (exports load on any device).

    Call arguments:
        inputs: (batch, time, features), floating point.
        mask: Optional (batch, time) booleans; False steps leave the state
            unchanged. Any pattern works: right or left padding, gaps.
        training: Whether dropout applies.
        initial_state: Optional [h_0, s_0], each (batch, units).

    Returns:
        h_T (batch, units), or every h_t (batch, time, units) with
        ``return_sequences``; followed by the final h and s with
        ``return_state``.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((None, 3)),
    ...     keras_gates.LSTM(16),
    ...     keras.layers.Dense(1),
    ... ])
    >>> model(np.zeros((2, 7, 3), "float32")).shape
    (2, 1)
    """

    # Inference up to this batch takes the fast path's small-batch form where
    # the "block" form (kernels.BLOCK_BATCH_MAX) does not apply (a mask, mixed
    # precision): above it the plain step measured faster
    # (benchmarks/README.md, "CPU matrix").
    fused_max_batch = 2

    def __init__(
        self,
        units: int,
        activation: Any = "tanh",
        recurrent_activation: Any = "sigmoid",
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        recurrent_initializer: Any = "orthogonal",
        bias_initializer: Any = "zeros",
        unit_forget_bias: bool = True,
        kernel_regularizer: Any = None,
        recurrent_regularizer: Any = None,
        bias_regularizer: Any = None,
        activity_regularizer: Any = None,
        kernel_constraint: Any = None,
        recurrent_constraint: Any = None,
        bias_constraint: Any = None,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        seed: int | None = None,
        forget_gate: bool = True,
        weight_layout: str = "keras",
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
        unroll: bool = False,
        zero_output_for_mask: bool = False,
        use_cudnn: bool | str = "auto",
        **kwargs,
    ):
        use_cudnn = cudnn.check_use_cudnn(use_cudnn)
        cell = LSTMCell(
            units,
            activation=activation,
            recurrent_activation=recurrent_activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer,
            unit_forget_bias=unit_forget_bias,
            kernel_regularizer=kernel_regularizer,
            recurrent_regularizer=recurrent_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            recurrent_constraint=recurrent_constraint,
            bias_constraint=bias_constraint,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            seed=seed,
            forget_gate=forget_gate,
            weight_layout=weight_layout,
            dtype=kwargs.get("dtype"),
            trainable=kwargs.get("trainable", True),
            name="lstm_cell",
        )
        super().__init__(
            cell,
            activity_regularizer=activity_regularizer,
            return_sequences=return_sequences,
            return_state=return_state,
            go_backwards=go_backwards,
            stateful=stateful,
            unroll=unroll,
            zero_output_for_mask=zero_output_for_mask,
            **kwargs,
        )
        self.use_cudnn = use_cudnn
        if use_cudnn is True and (reason := self.cudnn_blocker()):
            raise ValueError(
                f"`use_cudnn=True` cannot be honoured: {reason}. Change that "
                "option, or pass use_cudnn='auto' to run the package's kernel."
            )
        if (
            use_cudnn is not False
            and keras.backend.backend() == "tensorflow"
            and self.cudnn_blocker() is None
            and cudnn.gpu_available()
        ):
            # cuDNN ops are not XLA ops: keep jit_compile="auto" off, as
            # keras.layers.LSTM does.
            self.supports_jit = False

    # LSTM-only cell arguments, read-only like the others (GatedRNN)
    @property
    def unit_forget_bias(self):
        return self.cell.unit_forget_bias

    @property
    def forget_gate(self):
        return self.cell.forget_gate

    def cudnn_blocker(self) -> str | None:
        """The option that keeps this layer off cuDNN, or None
        (``keras_gates.cudnn.blocker``)."""
        return cudnn.blocker(
            activation=self.cell.activation,
            recurrent_activation=self.cell.recurrent_activation,
            use_bias=self.cell.use_bias,
            recurrent_dropout=self.cell.recurrent_dropout,
            unroll=self.unroll,
            forget_gate=self.cell.forget_gate,
            own_equations=self.cell.has_sequence_kernel,
        )

    def inner_loop(self, sequences, initial_state, mask, training=False):
        def own_kernel():
            return super(LSTM, self).inner_loop(
                sequences, initial_state, mask, training=training
            )

        if self.use_cudnn is False or cudnn.in_portable():
            return own_kernel()
        reason = self.cudnn_blocker() or cudnn.loop_blocker()
        if reason is None:
            try:
                result = self._cudnn_sequence(
                    sequences, initial_state, mask, training, own_kernel
                )
            except NotImplementedError as error:
                reason = (
                    f"Keras's {keras.backend.backend()} LSTM kernel cannot run "
                    f"it ({error or 'it raised NotImplementedError'})"
                )
            else:
                if keras.backend.backend() == "tensorflow":
                    self.supports_jit = False
                return result
        if self.use_cudnn is True:
            raise ValueError(
                f"`use_cudnn=True` cannot be honoured by layer '{self.name}': "
                f"{reason}. Pass use_cudnn='auto' to run the package's kernel."
            )
        return own_kernel()

    def _cudnn_sequence(self, sequences, initial_state, mask, training, own_kernel):
        if training and self.cell.dropout > 0:
            # Input dropout before the kernel, with the cell's one mask per
            # sequence: drawn as the package's kernel draws it.
            dropout_mask = self.cell.get_dropout_mask(sequences[:, 0, :])
            if dropout_mask is not None:
                sequences = (
                    sequences * ops.cast(dropout_mask, sequences.dtype)[:, None, :]
                )
        kernel, recurrent_kernel, bias = self.cell.sequence_weights(sequences.dtype)
        return cudnn.sequence(
            sequences,
            initial_state[0],
            initial_state[1],
            mask,
            kernel,
            recurrent_kernel,
            bias,
            activation=self.cell.activation,
            recurrent_activation=self.cell.recurrent_activation,
            go_backwards=self.go_backwards,
            return_sequences=self.return_sequences,
            zero_output_for_mask=self.zero_output_for_mask,
            fallback=own_kernel,
            required=self.use_cudnn is True,
        )

    def get_config(self):
        return {**super().get_config(), "use_cudnn": self.use_cudnn}
