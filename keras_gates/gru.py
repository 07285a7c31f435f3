"""The GRU of the "selective read, write and forget" lectures, as a Keras layer.

State s (no separate h). At step t, with x_t the input and s_{t-1} the state:

    o_t  = sigmoid(W_o s_{t-1} + U_o x_t + b_o)      output gate: what of s_{t-1}
                                                     reaches the candidate
    i_t  = 1 - z_t,                                  input gate, where
    z_t  = sigmoid(W_z s_{t-1} + U_z x_t + b_z)      (Keras's update gate)
    s~_t = tanh(W (o_t * s_{t-1}) + U x_t + b)       candidate state
    s_t  = (1 - i_t) * s_{t-1} + i_t * s~_t          the forget gate is 1 - i_t

The lecture writes i_t = sigmoid(W_i s_{t-1} + U_i x_t + b_i): the same gate,
with W_i = -W_z, U_i = -U_z, b_i = -b_z (sigmoid(-a) = 1 - sigmoid(a)). The
cell stores z's blocks, as ``keras.layers.GRU(reset_after=False)`` does, so
the weights are exactly the built-in's (names, shapes, order z, r, h, with
Keras's reset gate r = o and its h = the candidate):

    kernel            (input_dim, 3 * units) = [U_z | U_o | U]
    recurrent_kernel  (units, 3 * units)     = [W_z | W_o | W]
    bias              (3 * units,)           = [b_z | b_o | b]

The maths equals ``keras.layers.GRU(reset_after=False)``, for any
``recurrent_activation``. cuDNN's GRU (Keras's default ``reset_after=True``)
applies r after the W product and has two biases (bias shape (2, 3 * units)):
a different model, whose checkpoints are refused with that reason.

References: Cho et al. (2014), "Learning phrase representations using RNN
encoder-decoder"; Mitesh M. Khapra, CS7015 Deep Learning, lecture 14.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_gates import kernels
from keras_gates.base import GatedCell, GatedRNN


@keras.saving.register_keras_serializable(package="keras_gates")
class GRUCell(GatedCell):
    """One step of the lecture's GRU, for use in ``keras.layers.RNN``.

    Args:
        units: Positive integer, the size of s_t.
        activation: The candidate's nonlinearity (tanh). Default ``"tanh"``.
        recurrent_activation: The gates' nonlinearity (sigmoid). Default
            ``"sigmoid"``.
        use_bias, kernel_initializer, recurrent_initializer, bias_initializer,
        kernel_regularizer, recurrent_regularizer, bias_regularizer,
        kernel_constraint, recurrent_constraint, bias_constraint: As in
            ``keras.layers.GRUCell``.
        dropout: Fraction in [0, 1) of x_t to drop, one mask per sequence
            (one per gate block when ``recurrent_dropout > 0``).
        recurrent_dropout: Fraction in [0, 1) of s_{t-1} to drop where it
            enters the gates and the candidate (never in the carry
            (1 - i_t) * s_{t-1}), one mask per gate block and sequence.
        seed: Integer seed for the dropout masks. The masks are drawn as
            ``keras.layers.GRUCell`` draws them (the input's, then
            s_{t-1}'s; with ``recurrent_dropout > 0`` one per block z, r, h
            each), so with the same seed and weights training equals the
            built-in ``GRU(reset_after=False)``'s. Where it does not: an
            inference call between training steps (e.g. ``fit``'s
            validation) moves the built-in's seed state and not this cell's;
            and ``implementation=1`` with ``recurrent_dropout=0`` (the
            built-in then draws per-block input masks, this cell one).
        weight_layout: The block order of the weights this cell loads next:
            ``"keras"`` (default; what it builds and saves) or ``"lecture"``
            for files written by keras_gates 0.1 ([o | i | s~], i's blocks
            stored instead of z's); converted on load. A ``.keras`` file
            says which in its config, and 0.1's weights-only files are
            recognised by the seed-state entry they hold.

    Call arguments:
        inputs: x_t, shape (batch, input_dim).
        states: s_{t-1}, (batch, units), or a list holding it.
        training: Whether dropout applies.
        return_gates: Also return a dict of this step's o_t, i_t, s_tilde_t
            and s_t (what ``keras_gates.trace_gates`` reads).

    Returns:
        ``(s_t, s_t)``, the second in a list when ``states`` was one; plus
        the gate dict with ``return_gates``.

    Example:

    >>> layer = keras.layers.RNN(keras_gates.GRUCell(8))
    >>> layer(np.zeros((2, 5, 3), "float32")).shape
    (2, 8)
    """

    # What the cell carries (GatedCell): one state, s, which is the output.
    state_names = ("s",)
    gate_names = ("o", "i", "s_tilde")
    # keras.layers.GRU's order: update gate z = 1 - i, reset gate r = o, and
    # h, the candidate.
    weight_blocks = ("z", "r", "h")

    def __init__(
        self,
        units: int,
        activation: Any = "tanh",
        recurrent_activation: Any = "sigmoid",
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        recurrent_initializer: Any = "orthogonal",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        recurrent_regularizer: Any = None,
        bias_regularizer: Any = None,
        kernel_constraint: Any = None,
        recurrent_constraint: Any = None,
        bias_constraint: Any = None,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        seed: int | None = None,
        weight_layout: str = "keras",
        **kwargs,
    ):
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
        self.state_size = self.units

    def lecture_to_keras(self, array):
        # keras_gates 0.1 stored [o | i | s~], i's blocks: z's are their
        # negatives, exactly so only where g(-a) = 1 - g(a).
        name = keras.activations.serialize(self.recurrent_activation)
        if name not in ("sigmoid", "hard_sigmoid"):
            raise ValueError(
                f"GRUCell '{self.name}' cannot convert weights saved by "
                "keras_gates 0.1 (weight_layout='lecture'): they hold the input "
                "gate i's blocks, and i = 1 - z is exact only for a gate "
                "activation g with g(-a) = 1 - g(a) (sigmoid, hard_sigmoid); "
                f"received recurrent_activation={name!r}."
            )
        o, i, s_tilde = np.split(np.asarray(array), 3, axis=-1)
        return np.concatenate([-i, o, s_tilde], axis=-1)

    def mismatch_reason(self, key, stored_shape):
        if key == "2" and len(stored_shape) == 2:
            return (
                "It is a keras.layers.GRU(reset_after=True) checkpoint (Keras's "
                "default, cuDNN's GRU: separate input and recurrent biases, "
                "shape (2, 3 * units)), which applies the reset gate after the "
                "W product: another model than this GRU (reset_after=False), "
                "so its weights cannot be used here. Keep keras.layers.GRU for "
                "it, or train keras.layers.GRU(reset_after=False)."
            )
        return super().mismatch_reason(key, stored_shape)

    def call(self, inputs, states, training=False, return_gates=False):
        nested = isinstance(states, (list, tuple))
        s_tm1 = states[0] if nested else states  # (batch, units)
        x_t = self.dropped_inputs(inputs, training)
        s_tm1_in = self.dropped_state(s_tm1, training)
        u = self.units

        # The weights' (Keras's) blocks: [z | o | s~] (Keras's z, r, h).
        if isinstance(x_t, list) or isinstance(s_tm1_in, list):
            # One dropout mask per block (recurrent_dropout > 0, as Keras's
            # implementation 1): each block reads its own dropped x_t, s_{t-1}.
            xs = x_t if isinstance(x_t, list) else [x_t] * 3
            ss = s_tm1_in if isinstance(s_tm1_in, list) else [s_tm1_in] * 3
            ux_z, ux_o, ux_s = (
                ops.matmul(xs[j], self.kernel[:, self.block_columns(j)])
                + (self.bias[self.block_columns(j)] if self.use_bias else 0.0)
                for j in range(3)
            )
            ws_z, ws_o = (
                ops.matmul(ss[j], self.recurrent_kernel[:, self.block_columns(j)])
                for j in range(2)
            )
            s_in_candidate = ss[2]
        else:
            ux = ops.matmul(x_t, self.kernel)  # (batch, 3 * units): U_z x, U_o x, U x
            if self.use_bias:
                ux = ux + self.bias
            ux_z, ux_o, ux_s = ops.split(ux, 3, axis=-1)
            ws_z, ws_o = ops.split(
                ops.matmul(s_tm1_in, self.recurrent_kernel[:, : 2 * u]), 2, axis=-1
            )
            s_in_candidate = s_tm1_in

        o_t = self.recurrent_activation(ws_o + ux_o)
        z_t = self.recurrent_activation(ws_z + ux_z)
        i_t = 1 - z_t
        s_tilde_t = self.activation(
            ops.matmul(o_t * s_in_candidate, self.recurrent_kernel[:, 2 * u :]) + ux_s
        )
        s_t = z_t * s_tm1 + i_t * s_tilde_t  # z_t = 1 - i_t, the forget gate
        new_states = [s_t] if nested else s_t
        if return_gates:  # keras_gates.trace_gates reads the step through here
            return s_t, new_states, {"o": o_t, "i": i_t, "s_tilde": s_tilde_t, "s": s_t}
        return s_t, new_states

    def sequence(self, sequences, states, mask=None, **options):
        """This cell over a whole sequence: ``kernels.gru_sequence`` with its
        weights, options and dropout masks (``GatedCell.sequence``)."""
        (s_0,) = states
        training = options.get("training", False)
        return kernels.gru_sequence(
            sequences,
            s_0,
            mask,
            *self.sequence_weights(sequences.dtype),
            activation=self.activation,
            recurrent_activation=self.recurrent_activation,
            **self.sequence_dropout_masks(sequences, states, training),
            **options,
        )

    # `sequence` runs the equations of this `call` (GatedCell.has_sequence_kernel).
    sequence_kernel_call = call

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, self.units), dtype=self.compute_dtype)]


@keras.saving.register_keras_serializable(package="keras_gates")
class GRU(GatedRNN):
    """The lecture's GRU over a sequence: a drop-in for ``keras.layers.GRU``.

    Same maths as ``keras.layers.GRU(reset_after=False)`` (see the module
    docstring); Keras's default ``reset_after=True`` is another model.

    Args:
        units, activation, recurrent_activation, use_bias, *_initializer,
        *_regularizer, *_constraint, dropout, recurrent_dropout, seed,
        weight_layout: See ``GRUCell``.
        activity_regularizer, return_sequences, return_state, go_backwards,
        stateful, unroll, zero_output_for_mask: As in ``keras_gates.LSTM``.
        reset_after: Accepted for drop-in compatibility, and must be False
            (the lecture's GRU is ``keras.layers.GRU(reset_after=False)``).
        use_cudnn: ``"auto"`` or False; cuDNN has no kernel for this GRU.

    Call arguments:
        inputs: (batch, time, features), floating point.
        mask: Optional (batch, time) booleans, any pattern.
        training: Whether dropout applies.
        initial_state: Optional s_0, (batch, units) (or a list holding it).

    Returns:
        s_T (batch, units), or every s_t with ``return_sequences``; followed by
        the final s with ``return_state``.

    Example:

    >>> layer = keras_gates.GRU(16, return_sequences=True)
    >>> layer(np.zeros((2, 7, 3), "float32")).shape
    (2, 7, 16)
    """

    # Inference up to this batch takes the kernel's small-batch form where
    # the "block" form (kernels.GRU_BLOCK_BATCH_MAX) does not apply (mixed
    # precision, other activations; under XLA and JAX, which have no block
    # form, always): above it the "unrolled" form (TensorFlow's graph
    # executor) or the large-batch form (XLA: batch 16 0.66 vs 0.73, 32 0.65
    # vs 0.75 of Keras) measured faster (benchmarks/README.md).
    fused_max_batch = 8

    def __init__(
        self,
        units: int,
        activation: Any = "tanh",
        recurrent_activation: Any = "sigmoid",
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        recurrent_initializer: Any = "orthogonal",
        bias_initializer: Any = "zeros",
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
        weight_layout: str = "keras",
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
        unroll: bool = False,
        zero_output_for_mask: bool = False,
        reset_after: bool = False,
        use_cudnn: bool | str = "auto",
        **kwargs,
    ):
        if reset_after is not False:
            raise ValueError(
                "`reset_after` must be False: keras_gates.GRU is the lecture's GRU, "
                "with the reset (output) gate applied before the W product, i.e. "
                "keras.layers.GRU(reset_after=False); received "
                f"reset_after={reset_after!r}. Keras's default reset_after=True is "
                "another model (keep keras.layers.GRU for it)."
            )
        if not (use_cudnn is False or use_cudnn == "auto"):
            raise ValueError(
                "`use_cudnn` must be 'auto' or False (no cuDNN kernel exists for the "
                f"reset-before GRU); received {use_cudnn!r}."
            )
        cell = GRUCell(
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
            dtype=kwargs.get("dtype"),
            trainable=kwargs.get("trainable", True),
            name="gru_cell",
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

    @property
    def reset_after(self) -> bool:
        """Always False: the reset (output) gate acts before the W product, as
        in ``keras.layers.GRU(reset_after=False)``."""
        return False
