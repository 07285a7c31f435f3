"""What the LSTM and GRU share: argument handling, dropout masks, the RNN layer.

The cells (``lstm.py``, ``gru.py``) hold the equations; this module holds the
plumbing around them so each cell's ``call`` reads like its equations:

- ``GatedCell``: resolves and validates the constructor arguments that
  ``keras.layers.LSTMCell`` / ``GRUCell`` take, creates ``kernel``,
  ``recurrent_kernel`` and ``bias`` exactly as the built-in cell does (same
  names, shapes and gate-block order, lstm.py / gru.py), loads checkpoints with checks
  that say why one does not fit (and converts files written in this package's
  earlier "lecture" block order), and keeps one dropout mask per sequence
  (fixed across time steps, as in Keras).
- ``GatedRNN``: a ``keras.layers.RNN`` subclass that checks its inputs, masks
  and initial states before the loop runs and exposes the cell's arguments as
  layer attributes, as ``keras.layers.LSTM`` does.
"""

from __future__ import annotations

import contextlib
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_gates import keras_internals, validation

# The argument names a gated cell shares with keras.layers.LSTMCell/GRUCell;
# the layers expose each of them as a read-only attribute.
CELL_ARGUMENTS = (
    "units",
    "activation",
    "recurrent_activation",
    "use_bias",
    "kernel_initializer",
    "recurrent_initializer",
    "bias_initializer",
    "kernel_regularizer",
    "recurrent_regularizer",
    "bias_regularizer",
    "kernel_constraint",
    "recurrent_constraint",
    "bias_constraint",
    "dropout",
    "recurrent_dropout",
    "seed",
    "weight_layout",
)

# How the gate blocks of `kernel`, `recurrent_kernel` and `bias` are ordered:
# "keras", the built-ins' order (what every cell builds and saves), or
# "lecture", the order keras_gates used before it stored the built-ins'
# variables (read once on load, converted; see GatedCell.load_own_variables).
WEIGHT_LAYOUTS = ("keras", "lecture")


class DropoutMasks:
    """The input and recurrent dropout masks of a sequence, reused at every step.

    Variational dropout (Gal & Ghahramani, 2016), as Keras does it: the masks
    are drawn once per call of the RNN layer and applied at every time step;
    one mask each, or one per gate block when ``recurrent_dropout > 0``
    (``dropout_mask_count``), the draws of ``keras.layers.LSTMCell`` /
    ``GRUCell`` with the same seed. The
    RNN layer asks for the masks before its loop (``get_dropout_mask``) and
    drops them after (``reset_dropout_mask``); a cell never draws inside the
    loop, which keeps the loop body free of random ops and side effects.
    At inference the layers draw nothing (``masks_off``).
    """

    @contextlib.contextmanager
    def masks_off(self):
        """Within it, no mask is drawn and ``get_*_mask`` return None.

        ``keras.layers.RNN`` asks a dropout cell for its masks before every
        loop, training or not. Each draw advances the cell's seed generator,
        so an inference call (a validation pass, a trace, an export) between
        training steps would change the masks of every later step; the
        layers run inference inside this instead.
        """
        self._masks_off = True
        try:
            yield
        finally:
            self._masks_off = False

    def get_dropout_mask(self, step_input):
        if getattr(self, "_masks_off", False):
            return None
        if getattr(self, "_dropout_mask", None) is None and self.dropout > 0:
            self._dropout_mask = self._draw_mask(step_input, self.dropout)
        return getattr(self, "_dropout_mask", None)

    def get_recurrent_dropout_mask(self, step_state):
        if getattr(self, "_masks_off", False):
            return None
        if (
            getattr(self, "_recurrent_dropout_mask", None) is None
            and self.recurrent_dropout > 0
        ):
            self._recurrent_dropout_mask = self._draw_mask(
                step_state, self.recurrent_dropout
            )
        return getattr(self, "_recurrent_dropout_mask", None)

    def reset_dropout_mask(self):
        self._dropout_mask = None

    def reset_recurrent_dropout_mask(self):
        self._recurrent_dropout_mask = None

    @property
    def dropout_mask_count(self) -> int | None:
        """How many masks each draw makes: one per gate block, or None for one.

        As ``keras.layers.LSTMCell`` / ``GRUCell``: with ``recurrent_dropout
        > 0`` they switch to implementation 1 and draw, for the input and for
        the recurrent state each, one mask per gate block (in the weights'
        block order: LSTM i, f, c, o; GRU z, r, h), the input's first. With
        the same seed the masks are then the built-ins' own, and a model
        trains as the built-in model does.
        """
        return self.num_gate_blocks if self.recurrent_dropout > 0 else None

    def _draw_mask(self, like, rate):
        # Inverted dropout: kept units are scaled by 1 / (1 - rate). The same
        # draws, in the same order, as Keras's DropoutRNNCell.
        ones = ops.ones_like(like)
        count = self.dropout_mask_count
        if count is None:
            return keras.random.dropout(ones, rate=rate, seed=self.seed_generator)
        return [
            keras.random.dropout(ones, rate=rate, seed=self.seed_generator)
            for _ in range(count)
        ]


class _SeedStateSaver(keras.layers.Layer):
    """Saves a cell's dropout seed state beside its weights, not among them.

    The dropout SeedGenerator's state is a variable that Keras leaves out of
    a layer's weights, so `save_weights` (hence BackupAndRestore) would not
    keep it, and a resumed run would draw other dropout masks than an
    uninterrupted one (measured 0.29 apart after 4 epochs). Stored as the
    cell's own variables it would break the drop-in promise: the built-in
    cell refuses a store with a fourth entry. As this child layer (path
    ``.../cell/dropout_seed``) it travels with keras_gates checkpoints, and
    a built-in reading them never visits it; a checkpoint without it (the
    built-in's) leaves the seed state as it is.
    """

    def __init__(self, seed_state, **kwargs):
        super().__init__(**kwargs)
        self._seed_state = seed_state  # a function: Keras tracks no functions
        self.built = True

    def save_own_variables(self, store):
        store["0"] = self._seed_state()

    def load_own_variables(self, store):
        if "0" in store:
            self._seed_state().assign(store["0"])


# keras.layers.RNN prepares dropout masks only for subclasses of Keras's
# private DropoutRNNCell (keras_internals.dropout_cell_marker says why).
class GatedCell(
    DropoutMasks, *keras_internals.dropout_cell_marker(), keras.layers.Layer
):
    """Base of ``LSTMCell`` and ``GRUCell``: arguments, weights and config.

    Subclasses say once what the cell carries (read by the layers' loop,
    ``trace_gates``, the serving signatures and the plots):

    - ``state_names``: the states, in the order of ``states`` (the first is
      the output, as in Keras): ``("h", "s")`` for the LSTM, ``("s",)`` for
      the GRU;
    - ``gate_names``: the gates a trace reports, in the lecture's names;
    - ``weight_blocks``: the built-in's gate blocks of ``kernel``, in order
      (lstm.py, gru.py).

    They implement ``call`` (one step, the readable equations) and
    ``lecture_to_keras`` (the earlier block order, converted), and may add a
    sequence kernel: ``sequence`` (the whole loop, ``keras_gates/kernels.py``)
    with ``sequence_kernel_call = call`` beside it, the ``call`` whose
    equations it runs. A subclass that writes its own ``call`` does not match
    that and runs Keras's loop over its ``call`` (``has_sequence_kernel``).
    """

    state_names: tuple[str, ...] = ()
    gate_names: tuple[str, ...] = ()
    weight_blocks: tuple[str, ...] = ()
    sequence_kernel_call = None

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
        # Validate everything before touching Keras state, so a bad argument
        # leaves nothing half-built.
        kwargs.pop("implementation", None)  # Keras's deprecated layout switch
        if weight_layout not in WEIGHT_LAYOUTS:
            raise ValueError(
                f"`weight_layout` must be one of {WEIGHT_LAYOUTS}; received "
                f"{weight_layout!r}."
            )
        units = validation.positive_int("units", units)
        use_bias = validation.boolean("use_bias", use_bias)
        dropout = validation.rate("dropout", dropout)
        recurrent_dropout = validation.rate("recurrent_dropout", recurrent_dropout)
        seed = validation.optional_seed("seed", seed)
        resolved = {
            "activation": (activation, keras.activations.get),
            "recurrent_activation": (recurrent_activation, keras.activations.get),
            "kernel_initializer": (kernel_initializer, keras.initializers.get),
            "recurrent_initializer": (recurrent_initializer, keras.initializers.get),
            "bias_initializer": (bias_initializer, keras.initializers.get),
            "kernel_regularizer": (kernel_regularizer, keras.regularizers.get),
            "recurrent_regularizer": (recurrent_regularizer, keras.regularizers.get),
            "bias_regularizer": (bias_regularizer, keras.regularizers.get),
            "kernel_constraint": (kernel_constraint, keras.constraints.get),
            "recurrent_constraint": (recurrent_constraint, keras.constraints.get),
            "bias_constraint": (bias_constraint, keras.constraints.get),
        }
        resolved = {
            name: validation.resolved(name, value, getter)
            for name, (value, getter) in resolved.items()
        }
        super().__init__(**kwargs)
        self.units = units
        self.use_bias = use_bias
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.seed = seed
        for name, value in resolved.items():
            setattr(self, name, value)
        self.weight_layout = weight_layout
        self.seed_generator = keras.random.SeedGenerator(seed=seed)
        self.dropout_seed = _SeedStateSaver(
            lambda: self.seed_generator.state, name="dropout_seed"
        )
        self.output_size = units

    def load_own_variables(self, store):
        """Load ``kernel``, ``recurrent_kernel``, ``bias`` from a checkpoint.

        The built-in cell's checkpoints load as they are (same variables).
        A store that does not fit is refused with the reason (a
        ``GRU(reset_after=True)`` bias, an LSTM with/without its forget
        gate, another feature size), never assigned in part.

        Files written by keras_gates 0.1, before it stored the built-ins'
        variables, hold the blocks in the lecture's order; their blocks are
        reordered once, here, and the cell is "keras" from then on, as
        everything it saves. Such a file is known by its config (a ``.keras``
        file without ``weight_layout``: the cell was made with
        ``weight_layout="lecture"``), or by the dropout seed state that 0.1
        stored as one more entry among the cell's variables (every 0.1 file
        but the earliest; never written since).
        """
        weights = self.weights  # kernel, recurrent_kernel[, bias]
        self.check_stored_weights(store)
        values = [np.asarray(store[str(index)]) for index in range(len(weights))]
        legacy_seed = str(len(weights))  # checked by check_stored_weights
        if self.weight_layout == "lecture" or legacy_seed in store:
            values = [self.lecture_to_keras(value) for value in values]
        for variable, value in zip(weights, values, strict=True):
            variable.assign(value)
        self.weight_layout = "keras"
        if legacy_seed in store:
            self.seed_generator.state.assign(store[legacy_seed])

    def check_stored_weights(self, store) -> None:
        """Raise a ValueError saying why ``store`` cannot load into this cell."""
        weights = self.weights
        owner = f"{type(self).__name__} '{self.name}'"
        keys = set(store.keys())
        seed_key = str(len(weights))
        if seed_key in keys:
            seed_shape = tuple(self.seed_generator.state.shape)
            if tuple(store[seed_key].shape) == seed_shape:
                keys.discard(seed_key)  # a keras_gates file from before
        wanted = [str(index) for index in range(len(weights))]
        if sorted(keys) != wanted:
            raise ValueError(
                f"{owner} has {len(weights)} weights "
                f"({', '.join(w.name for w in weights)}; use_bias={self.use_bias}) "
                f"and the checkpoint holds {len(keys)} for it: was it written "
                f"with use_bias={not self.use_bias}?"
            )
        for key, variable in zip(wanted, weights, strict=True):
            got = tuple(store[key].shape)
            want = tuple(variable.shape)
            if got != want:
                message = (
                    f"{owner} cannot load this checkpoint: its "
                    f"`{variable.name}` has shape {got} and this cell's has "
                    f"shape {want} (blocks [{' | '.join(self.weight_blocks)}] "
                    f"of {self.units} units). {self.mismatch_reason(key, got)}"
                )
                raise ValueError(message.rstrip())

    def mismatch_reason(self, key: str, stored_shape: tuple) -> str:
        """Why a stored weight of this shape does not fit (subclasses say)."""
        if key == "0" and stored_shape[-1] == self.kernel.shape[-1]:
            return (
                f"It was built for {stored_shape[0]} input features, this cell "
                f"for {self.kernel.shape[0]}."
            )
        return ""

    def lecture_to_keras(self, array: np.ndarray) -> np.ndarray:
        """A weight in the earlier "lecture" block order, in Keras's order."""
        raise NotImplementedError

    @property
    def num_gate_blocks(self) -> int:
        return len(self.weight_blocks)

    @property
    def trace_names(self) -> tuple[str, ...]:
        """A gate trace's entries: the gates, then the states in the order
        the step computes them (s_t before h_t: the reverse of ``states``)."""
        return tuple(self.gate_names) + tuple(reversed(self.state_names))

    @property
    def has_sequence_kernel(self) -> bool:
        """Whether ``sequence`` runs the equations of the ``call`` in effect.

        True for ``LSTMCell`` and ``GRUCell`` and subclasses that keep their
        ``call``; False for a cell that writes its own ``call`` (and did not
        write a ``sequence`` for it), whose layer then runs Keras's loop over
        that ``call``.
        """
        kernel_call = type(self).sequence_kernel_call
        return kernel_call is not None and type(self).call is kernel_call

    def sequence(self, sequences, states, mask=None, **options):
        """This cell over a whole sequence (cells with a sequence kernel).

        Args:
            sequences: (batch, time, features).
            states: The initial states, as ``state_names``.
            mask: Optional (batch, time) booleans.
            **options: ``go_backwards``, ``return_sequences``,
                ``zero_output_for_mask``, ``training``, ``form``,
                ``small_batch_max``: see ``keras_gates.kernels``.

        Returns:
            ``(last_output, outputs, final states)`` as
            ``keras.layers.RNN.inner_loop``.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no sequence kernel; its layer runs "
            "Keras's loop over its `call`."
        )

    def sequence_weights(self, dtype) -> list:
        """[kernel, recurrent_kernel, bias or None], read and cast once."""
        bias = ops.cast(self.bias, dtype) if self.use_bias else None
        return [
            ops.cast(self.kernel, dtype),
            ops.cast(self.recurrent_kernel, dtype),
            bias,
        ]

    def sequence_dropout_masks(self, sequences, states, training) -> dict:
        """This sequence's dropout masks, as the kernels take them."""
        if not training:
            return {"input_dropout_mask": None, "recurrent_dropout_mask": None}
        return {
            "input_dropout_mask": self.get_dropout_mask(sequences[:, 0, :]),
            "recurrent_dropout_mask": self.get_recurrent_dropout_mask(states[0]),
        }

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                f"{type(self).__name__} needs a known feature size (the last axis "
                f"of the input); received input shape {tuple(input_shape)}."
            )
        width = self.num_gate_blocks * self.units
        self.kernel = self.add_weight(
            shape=(input_dim, width),  # the U blocks, Keras's order
            name="kernel",
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, width),  # the W blocks
            name="recurrent_kernel",
            initializer=self.recurrent_initializer,
            regularizer=self.recurrent_regularizer,
            constraint=self.recurrent_constraint,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(width,),  # the b blocks
                name="bias",
                initializer=self.make_bias_initializer(),
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        else:
            self.bias = None

    def make_bias_initializer(self):
        return self.bias_initializer

    def dropped_inputs(self, inputs, training):
        """x_t with this sequence's input dropout mask applied (training only).

        A list (one x_t per gate block, block order) when the masks are drawn
        per block (``dropout_mask_count``), else one tensor.
        """
        if training and self.dropout > 0:
            mask = self.get_dropout_mask(inputs)
            if mask is not None:
                return _apply_masks(inputs, mask)
        return inputs

    def dropped_state(self, state, training):
        """The recurrent input (h_{t-1} or s_{t-1}) with its dropout mask(s),
        as ``dropped_inputs`` (a list per gate block, or one tensor)."""
        if training and self.recurrent_dropout > 0:
            mask = self.get_recurrent_dropout_mask(state)
            if mask is not None:
                return _apply_masks(state, mask)
        return state

    def block_columns(self, j: int) -> slice:
        """The columns of gate block `j` in kernel, recurrent_kernel and bias."""
        return slice(j * self.units, (j + 1) * self.units)

    def gate_blocks(self, x_t, state_tm1):
        """U x_t + W state_{t-1} + b for every gate block, split by gate.

        `x_t` and `state_tm1` are tensors, or lists with one (dropped) tensor
        per gate block (``dropped_inputs``); then each block takes its own.
        """
        if not isinstance(x_t, list) and not isinstance(state_tm1, list):
            z = ops.matmul(x_t, self.kernel) + ops.matmul(
                state_tm1, self.recurrent_kernel
            )
            if self.use_bias:
                z = z + self.bias
            return ops.split(z, self.num_gate_blocks, axis=-1)  # (batch, units) each
        n = self.num_gate_blocks
        xs = x_t if isinstance(x_t, list) else [x_t] * n
        hs = state_tm1 if isinstance(state_tm1, list) else [state_tm1] * n
        blocks = []
        for j in range(n):
            c = self.block_columns(j)
            a = ops.matmul(xs[j], self.kernel[:, c])
            a = a + ops.matmul(hs[j], self.recurrent_kernel[:, c])
            blocks.append(a + self.bias[c] if self.use_bias else a)
        return blocks

    def get_config(self):
        config = {
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "recurrent_activation": keras.activations.serialize(
                self.recurrent_activation
            ),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": keras.initializers.serialize(
                self.recurrent_initializer
            ),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "recurrent_regularizer": keras.regularizers.serialize(
                self.recurrent_regularizer
            ),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
            "recurrent_constraint": keras.constraints.serialize(
                self.recurrent_constraint
            ),
            "bias_constraint": keras.constraints.serialize(self.bias_constraint),
            "dropout": self.dropout,
            "recurrent_dropout": self.recurrent_dropout,
            "seed": self.seed,
            # What this cell saves; a config without it is a file written
            # before keras_gates stored the built-ins' block order.
            "weight_layout": "keras",
        }
        return {**super().get_config(), **config}

    @classmethod
    def from_config(cls, config):
        return cls(**{"weight_layout": "lecture", **config})


def _apply_masks(value, mask):
    """`value` times a dropout mask, or one product per mask of a list."""
    if isinstance(mask, (list, tuple)):
        return [value * ops.cast(m, value.dtype) for m in mask]
    return value * ops.cast(mask, value.dtype)


def _cell_attribute(name: str) -> property:
    return property(
        lambda self: getattr(self.cell, name),
        doc=f"The cell's `{name}` (read-only; set it through the constructor).",
    )


class GatedRNN(keras.layers.RNN):
    """Base of ``LSTM`` and ``GRU``: a ``keras.layers.RNN`` over a gated cell.

    Adds what ``keras.layers.RNN`` leaves to chance: checks of the inputs,
    the mask and the initial states with errors that name the argument, and
    per-sequence dropout masks even where Keras would not prepare them.
    """

    cell_class: type[GatedCell]
    # Largest batch for which inference in TensorFlow's graph executor takes
    # the kernels' "small" form (keras_gates/kernels.py); subclasses set theirs.
    fused_max_batch: int = 1
    layer_arguments = (
        "return_sequences",
        "return_state",
        "go_backwards",
        "stateful",
        "unroll",
        "zero_output_for_mask",
    )

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in CELL_ARGUMENTS + getattr(cls, "extra_cell_arguments", ()):
            setattr(cls, name, _cell_attribute(name))

    def __init__(self, cell: GatedCell, activity_regularizer=None, **kwargs):
        # Keras's deprecated kernel-layout switch: accepted for drop-in use, and
        # meaningless here (the built-ins' variables: lstm.py, gru.py).
        kwargs.pop("implementation", None)
        for name in self.layer_arguments:
            if name in kwargs:
                kwargs[name] = validation.boolean(name, kwargs[name])
        super().__init__(
            cell,
            activity_regularizer=validation.resolved(
                "activity_regularizer", activity_regularizer, keras.regularizers.get
            ),
            **kwargs,
        )
        # Rank only: the feature size is checked in `call` against the built
        # kernel, with a message that says which size the layer was built for.
        self.input_spec = keras.InputSpec(ndim=3)

    @property
    def num_states(self) -> int:
        return len(self.cell.state_names)

    def runs_sequence_kernel(self) -> bool:
        """Whether the loop is the cell's sequence kernel (keras_gates/kernels.py)
        rather than Keras's loop over ``cell.call``: always, except with
        ``unroll`` (a Python loop of cell calls, for short fixed-length
        sequences and TFLite) or for a cell without a kernel of its own
        (``GatedCell.has_sequence_kernel``)."""
        return not self.unroll and self.cell.has_sequence_kernel

    def _check_call(self, sequences, initial_state, mask):
        name = f"{type(self).__name__} layer '{self.name}'"
        shape = tuple(sequences.shape)
        validation.sequence_inputs(
            shape,
            keras.backend.standardize_dtype(sequences.dtype),
            self.cell.kernel.shape[0] if self.cell.built else None,
            owner=name,
        )
        if mask is not None:
            validation.sequence_mask(tuple(mask.shape), shape, owner=name)
        if initial_state is not None:
            states = (
                list(initial_state)
                if isinstance(initial_state, (list, tuple))
                else [initial_state]
            )
            validation.initial_states(
                [tuple(ops.shape(state)) for state in states],
                self.num_states,
                shape[0],
                self.cell.units,
                owner=name,
            )

    def call(self, sequences, initial_state=None, mask=None, training=False):
        self._check_call(sequences, initial_state, mask)
        if mask is not None:
            mask = ops.cast(mask, "bool")
        if training:
            result = super().call(
                sequences, initial_state=initial_state, mask=mask, training=training
            )
        else:  # draw no dropout masks: the seed state stays as it is
            with self.cell.masks_off():
                result = super().call(
                    sequences, initial_state=initial_state, mask=mask, training=False
                )
        # keras.layers.RNN resets the masks only for cells it recognises.
        self.cell.reset_dropout_mask()
        self.cell.reset_recurrent_dropout_mask()
        return result

    def inner_loop(self, sequences, initial_state, mask, training=False):
        # Prepare the masks outside the loop whether or not keras.layers.RNN
        # recognised the cell (idempotent when it did).
        if training:
            self.cell.get_dropout_mask(sequences[:, 0, :])
            self.cell.get_recurrent_dropout_mask(initial_state[0])
        if not self.runs_sequence_kernel():
            return super().inner_loop(sequences, initial_state, mask, training=training)
        # The cell's sequence kernel (keras_gates/kernels.py): its equations
        # with the weights read, cast and split once before the loop, in the
        # form that is fastest for who runs it (XLA, or TensorFlow's executor
        # by batch size: up to `fused_max_batch` the small-batch form).
        return self.cell.sequence(
            sequences,
            list(initial_state),
            mask,
            go_backwards=self.go_backwards,
            return_sequences=self.return_sequences,
            zero_output_for_mask=self.zero_output_for_mask,
            training=training,
            small_batch_max=self.fused_max_batch,
        )

    def get_config(self):
        base = super().get_config()
        del base["cell"]
        cell_config = self.cell.get_config()
        # The layer's own name, dtype and trainable stand; the cell's follow it.
        for key in ("name", "dtype", "trainable"):
            cell_config.pop(key, None)
        config = {
            "activity_regularizer": keras.regularizers.serialize(
                self.activity_regularizer
            )
        }
        return {**base, **cell_config, **config}

    @classmethod
    def from_config(cls, config):
        # A config without `weight_layout` was written before keras_gates
        # stored the built-ins' block order: its weights are converted on load.
        return cls(**{"weight_layout": "lecture", **config})
