"""Look inside a trained LSTM or GRU: its gates at every step, and its gradients.

Two questions the "selective read, write and forget" lectures answer with
pictures, answered here with numbers:

- What did each gate do at each step? ``trace_gates`` runs a keras_gates
  layer over a batch and returns, for every step t and unit, the LSTM's
  o_t, i_t, f_t, s~_t, s_t, h_t or the GRU's o_t, i_t, s~_t, s_t (lstm.py, gru.py).
  The numbers come from the layer's own cell (its ``call(...,
  return_gates=True)``) run by ``keras.layers.RNN``'s own loop, with the
  layer's weights, ``go_backwards``, ``unroll`` and initial state (in a
  model: the state the model feeds the layer, e.g. an encoder's final
  [h, s]), and the RNN's mask rule (a masked step keeps the state): the same
  arithmetic as the layer's step, not a re-implementation that can drift.
- Do gradients survive the distance? ``gradient_flow`` measures
  ||d loss_T / d x_k|| for every earlier step k: the vanishing-gradient
  picture (Bengio et al., 1994; Pascanu et al., 2013), measured on any
  Keras sequence model, ``keras.layers.SimpleRNN`` included.

Conventions of a trace (dict of NumPy arrays, each (batch, time, units)):

- Time is the input's time axis: ``trace["i"][:, t]`` is the input gate when
  the layer read ``inputs[:, t]``, also with ``go_backwards=True`` (where the
  layer's own ``return_sequences`` output is in reading order, reversed).
- A masked step is reported as the layer treats it: it reads nothing and
  keeps its state, so ``s`` (and the LSTM's ``h``) hold the carried state
  (the initial state before the first unmasked step), and the gates
  ``o``, ``i``, ``f``, ``s_tilde``, which the layer computes but discards
  there, are ``masked_value`` (NaN by default: blank in a heatmap).

References: Hochreiter & Schmidhuber (1997); Cho et al. (2014);
Mitesh M. Khapra, CS7015 Deep Learning, lecture 14.
"""

from __future__ import annotations

import weakref
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_gates import checks, keras_internals
from keras_gates.base import GatedCell

__all__ = ["gate_names", "gate_sequences", "gradient_flow", "trace_gates"]


def gate_names(layer: Any) -> tuple[str, ...]:
    """The names of a trace's entries for `layer`, in the order they are stacked.

    Args:
        layer: A keras_gates ``LSTM``/``GRU`` layer, a ``keras.layers.RNN``
            over a keras_gates cell, or the cell itself.

    Returns:
        ``("o", "i", "f", "s_tilde", "s", "h")`` for the LSTM (no ``"f"`` with
        ``forget_gate=False``), ``("o", "i", "s_tilde", "s")`` for the GRU.

    Example:

    >>> keras_gates.introspection.gate_names(keras_gates.GRU(4))
    ('o', 'i', 's_tilde', 's')
    """
    return _gated_cell(layer, "layer").trace_names  # the cell's own declaration


class _GateTracingCell(keras.layers.Layer):
    """Wraps a keras_gates cell so each step's output is all its gates, stacked.

    ``keras.layers.RNN`` runs this cell as it runs the wrapped one (same
    states, ``go_backwards``, initial state, unrolling); only the per-step
    output changes, from h_t to [o_t | i_t | f_t | s~_t | s_t | h_t]
    (batch, names * units).

    With ``masked=True`` the step's input carries the mask as its last
    feature and the cell applies keras.layers.RNN's rule itself: a masked
    step keeps the previous state (s_t = s_{t-1}, h_t = h_{t-1}). Doing it
    here, not through the loop's ``mask``, keeps the carried state in the
    output on every backend (JAX's loop repeats ``states[0]`` as the output
    of a masked step, TensorFlow's the previous output).
    """

    def __init__(self, cell: GatedCell, names: tuple[str, ...], masked: bool):
        super().__init__(dtype=cell.dtype_policy, name=f"{cell.name}_gate_trace")
        self.traced_cell = cell
        self.names = names
        self.masked = masked
        self.state_size = cell.state_size
        self.output_size = len(names) * cell.units
        self.built = True

    def call(self, inputs, states, training=False):
        states_tm1 = _as_state_list(states)
        x_t = inputs[:, :-1] if self.masked else inputs
        _, states_t, gates = self.traced_cell(
            x_t, states_tm1, training=training, return_gates=True
        )
        states_t = _as_state_list(states_t)
        if self.masked:
            keep_t = inputs[:, -1:] > 0.5  # (batch, 1): this step is read
            states_t = [
                ops.where(keep_t, new, old)
                for new, old in zip(states_t, states_tm1, strict=True)
            ]
        # The carried state, after the mask: LSTM [h_t, s_t], GRU [s_t].
        gates = {**gates, **dict(zip(self.traced_cell.state_names, states_t))}
        stacked = ops.concatenate([gates[name] for name in self.names], axis=-1)
        return stacked, states_t


# One tracing loop per traced layer and mask use, so repeated traces (and
# tf.function retracing) reuse it instead of creating layers every time.
_TRACERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _gated_cell(layer: Any, argument: str) -> GatedCell:
    if isinstance(layer, GatedCell):
        return layer
    cell = getattr(layer, "cell", None)
    if isinstance(layer, keras.layers.RNN) and isinstance(cell, GatedCell):
        return cell
    if isinstance(layer, keras.layers.RNN) and isinstance(
        cell, keras.layers.StackedRNNCells
    ):
        kinds = ", ".join(type(c).__name__ for c in cell.cells)
        raise TypeError(
            f"`{argument}` is a keras.layers.RNN '{layer.name}' over "
            f"{len(cell.cells)} stacked cells ({kinds}), and a trace follows one "
            "cell's loop. Give each cell its own layer (e.g. keras_gates.LSTM(..., "
            "return_sequences=True) then keras_gates.GRU(...)) and trace them one "
            "at a time."
        )
    if isinstance(layer, keras.layers.Bidirectional):
        raise TypeError(
            f"`{argument}` must be one keras_gates LSTM/GRU layer; received a "
            f"Bidirectional wrapper '{layer.name}'. Trace its `forward_layer` and "
            f"`backward_layer` one at a time."
        )
    raise TypeError(
        f"`{argument}` must be a keras_gates LSTM/GRU layer (or a keras.layers.RNN "
        f"over a keras_gates cell); received {type(layer).__name__}"
        f"{' ' + repr(layer.name) if hasattr(layer, 'name') else ''}. Only these "
        f"cells can report their gates."
    )


def _tracer(layer: Any, masked: bool) -> keras.layers.RNN:
    tracers = _TRACERS.setdefault(layer, {})
    if masked not in tracers:
        cell = _gated_cell(layer, "layer")
        tracers[masked] = keras.layers.RNN(
            _GateTracingCell(cell, gate_names(cell), masked),
            return_sequences=True,
            go_backwards=bool(getattr(layer, "go_backwards", False)),
            unroll=bool(getattr(layer, "unroll", False)),
            dtype=cell.dtype_policy,
        )
    return tracers[masked]


def _as_state_list(initial_state: Any) -> list:
    if isinstance(initial_state, (list, tuple)):
        return list(initial_state)
    return [initial_state]


def gate_sequences(
    layer: Any,
    inputs: Any,
    mask: Any = None,
    initial_state: Any = None,
    masked_value: float = float("nan"),
) -> dict[str, Any]:
    """Every gate of `layer` at every step, as backend tensors (traceable).

    The backend-tensor twin of ``trace_gates`` for a single layer: no NumPy
    conversion, so it runs inside ``tf.function`` (a serving signature) or
    ``jax.jit``. Conventions (time axis, masked steps) as in ``trace_gates``.

    Args:
        layer: A built keras_gates ``LSTM``/``GRU`` (or ``keras.layers.RNN``
            over a keras_gates cell).
        inputs: (batch, time, features) floating-point tensor.
        mask: Optional (batch, time) booleans; False steps keep the state.
        initial_state: Optional list of (batch, units) tensors, as the layer
            takes it ([h_0, s_0] for the LSTM, [s_0] for the GRU). Default:
            zeros, or the current state of a stateful layer (left unchanged).
            (``trace_gates`` on a model passes the state the model feeds.)
        masked_value: What the gates (not ``s``/``h``) read at masked steps.
            Default NaN; use 0.0 where NaN cannot travel (JSON).

    Returns:
        A dict name -> tensor (batch, time, units), names as ``gate_names``.

    Example:

    >>> layer = keras_gates.LSTM(4)
    >>> layer.build((None, None, 3))
    >>> gates = gate_sequences(layer, np.zeros((2, 5, 3), "float32"))
    >>> tuple(gates["f"].shape)
    (2, 5, 4)
    """
    cell = _gated_cell(layer, "layer")
    if not cell.built:
        raise ValueError(
            f"`layer` must be built (called once, or `build((None, None, "
            f"features))`) so its weights exist; received unbuilt layer "
            f"'{layer.name}'."
        )
    names = gate_names(cell)
    inputs = ops.convert_to_tensor(inputs)
    shape = tuple(inputs.shape)
    checks.sequence_inputs(
        shape,
        keras.backend.standardize_dtype(inputs.dtype),
        int(cell.kernel.shape[0]),
        token_hint="Token ids go through the model's Embedding: call "
        "trace_gates(model, tokens, layer=...).",
    )
    inputs = ops.cast(inputs, cell.compute_dtype)
    batch = ops.shape(inputs)[0]

    if initial_state is None:
        if getattr(layer, "stateful", False) and getattr(layer, "states", None):
            initial_state = [ops.convert_to_tensor(s) for s in layer.states]
        else:
            initial_state = [
                ops.zeros((batch, cell.units), dtype=cell.compute_dtype)
                for _ in range(len(_as_state_list(cell.state_size)))
            ]
    initial_state = [
        ops.cast(ops.convert_to_tensor(s), cell.compute_dtype)
        for s in _as_state_list(initial_state)
    ]
    checks.initial_states(
        [tuple(state.shape) for state in initial_state],
        len(_as_state_list(cell.state_size)),
        shape[0],
        cell.units,
    )
    if mask is not None:
        mask = ops.cast(ops.convert_to_tensor(mask), "bool")
        checks.sequence_mask(tuple(mask.shape), shape)

    masked = mask is not None
    if masked:
        # The mask travels as the last feature; the tracing cell applies it.
        mask_feature = ops.cast(mask, inputs.dtype)[:, :, None]
        inputs = ops.concatenate([inputs, mask_feature], axis=-1)
    tracer = _tracer(layer, masked)
    # (batch, time, len(names) * units), in reading order (reversed when the
    # layer goes backwards).
    stacked = tracer(inputs, initial_state=initial_state)
    if tracer.go_backwards:
        stacked = ops.flip(stacked, axis=1)
    pieces = ops.split(stacked, len(names), axis=-1)
    trace = dict(zip(names, pieces, strict=True))
    if not masked:
        return trace
    # The gates of a masked step are computed but not used: say so.
    keep = mask[:, :, None]  # (batch, time, 1)
    for name in names:
        if name not in cell.state_names:
            fill = ops.full_like(trace[name], masked_value)
            trace[name] = ops.where(keep, trace[name], fill)
    return trace


def _find_layer(model: keras.Model, layer: Any) -> Any:
    if isinstance(layer, str):
        try:
            return model.get_layer(name=layer)
        except ValueError:
            names = [sub.name for sub in model.layers]
            raise ValueError(
                f"`layer` must name a layer of model '{model.name}' (one of "
                f"{names}); received {layer!r}."
            ) from None
    if isinstance(layer, int) and not isinstance(layer, bool):
        if not -len(model.layers) <= layer < len(model.layers):
            raise ValueError(
                f"`layer` must be an index into model.layers (length "
                f"{len(model.layers)}); received {layer}."
            )
        return model.layers[layer]
    if isinstance(layer, keras.layers.Layer):
        if not any(sub is layer for sub in model.layers):
            raise ValueError(
                f"`layer` must be one of model '{model.name}'s layers; received "
                f"layer '{layer.name}', which is not in it."
            )
        return layer
    raise TypeError(
        f"`layer` must be a layer name (str), an index (int) or a layer of the "
        f"model; received {type(layer).__name__} {layer!r}."
    )


def _call_argument(args: list, kwargs: dict, name: str, position: int) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else None


def _layer_feed(model: keras.Model, target: Any, inputs: Any):
    """What `model` hands `target`: its sequences, mask and initial state.

    Returns ``(sequences, mask or None, initial_state list or None)`` for
    ``inputs``, computed by the model's own layers up to `target`.
    """
    call = keras_internals.symbolic_call_arguments(target)  # private Keras
    if call is None:
        raise ValueError(
            f"`layer` '{target.name}' has never been called inside model "
            f"'{model.name}', so there is no path from the model's inputs to it; "
            f"build the model on a keras.Input first."
        )
    args, kwargs = call
    # keras.layers.RNN.call(sequences, initial_state=None, mask=None, ...)
    sequences = args[0]
    upstream_mask = _call_argument(args, kwargs, "mask", 2)
    upstream_state = _call_argument(args, kwargs, "initial_state", 1)
    if upstream_state is not None:
        upstream_state = _as_state_list(upstream_state)
    wanted = [sequences]
    if upstream_mask is not None:
        wanted.append(upstream_mask)
    wanted += upstream_state or []
    model_inputs = model.inputs
    feeder = keras.Model(
        model_inputs[0] if len(model_inputs) == 1 else model_inputs, wanted
    )
    fed = feeder(inputs, training=False)
    fed = list(fed) if isinstance(fed, (list, tuple)) else [fed]
    sequences = fed.pop(0)
    mask = fed.pop(0) if upstream_mask is not None else None
    return sequences, mask, (fed or None)


def trace_gates(
    layer_or_model: Any,
    inputs: Any,
    mask: Any = None,
    initial_state: Any = None,
    layer: Any = None,
    masked_value: float = float("nan"),
) -> dict[str, np.ndarray]:
    """Run a keras_gates LSTM/GRU and return every gate at every step.

    The layer's own cell computes the numbers, in ``keras.layers.RNN``'s own
    loop (masks, ``go_backwards``, initial state), with training off.

    Args:
        layer_or_model: A built keras_gates ``LSTM``/``GRU`` layer, or a Keras
            model containing one (then pass ``layer``).
        inputs: For a layer, (batch, time, features) floats. For a model,
            what the model takes (token ids for an Embedding model): they go
            through the model's own layers up to ``layer``.
        mask: Optional (batch, time) booleans; False steps keep the state.
            For a model, the mask the model itself makes upstream (e.g.
            ``Embedding(mask_zero=True)``) is used unless this is given.
        initial_state: Optional list of (batch, units) arrays: [h_0, s_0] for
            the LSTM, [s_0] for the GRU. Default: for a model, the state the
            model feeds the layer (another layer's final state, an Input),
            as the layer's own call gets it; otherwise zeros (or the current
            state of a stateful layer, which is not changed).
        layer: With a model: the traced layer's name, index in
            ``model.layers``, or the layer object.
        masked_value: The value of ``o``, ``i``, ``f``, ``s_tilde`` at masked
            steps (default NaN); ``s`` and ``h`` always hold the carried state.

    Returns:
        A dict of float32 NumPy arrays, each (batch, time, units), indexed by
        the input's time axis: for the LSTM ``o``, ``i``, ``f`` (absent with
        ``forget_gate=False``), ``s_tilde``, ``s``, ``h``; for the GRU ``o``,
        ``i``, ``s_tilde``, ``s`` (gru.py; the GRU's forget gate is 1 - i).

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((None,), dtype="int32"),
    ...     keras.layers.Embedding(100, 8, mask_zero=True),
    ...     keras_gates.LSTM(16, name="lstm"),
    ...     keras.layers.Dense(1),
    ... ])
    >>> trace = keras_gates.trace_gates(model, np.array([[0, 5, 7, 9]]), layer="lstm")
    >>> trace["f"].shape
    (1, 4, 16)
    """
    if isinstance(layer_or_model, keras.Model) and not isinstance(
        layer_or_model, keras.layers.RNN
    ):
        if layer is None:
            gated = [
                sub
                for sub in layer_or_model.layers
                if isinstance(getattr(sub, "cell", None), GatedCell)
            ]
            if len(gated) != 1:
                raise ValueError(
                    "`layer` must name the layer to trace when the model has "
                    f"{len(gated)} keras_gates layers "
                    f"({[sub.name for sub in gated]}); received layer=None."
                )
            layer = gated[0]
        target = _find_layer(layer_or_model, layer)
        _gated_cell(target, "layer")
        sequences, upstream_mask, upstream_state = _layer_feed(
            layer_or_model, target, inputs
        )
        if mask is None:
            mask = upstream_mask
        if initial_state is None:
            initial_state = upstream_state
    else:
        if layer is not None:
            raise ValueError(
                "`layer` selects a layer inside a model; received "
                f"layer={layer!r} with a {type(layer_or_model).__name__} as "
                "`layer_or_model`. Pass the model, or drop `layer`."
            )
        target = layer_or_model
        _gated_cell(target, "layer_or_model")
        sequences = inputs
    if isinstance(sequences, np.ndarray) and sequences.dtype == np.float64:
        sequences = sequences.astype("float32")
    trace = gate_sequences(
        target,
        sequences,
        mask=mask,
        initial_state=initial_state,
        masked_value=masked_value,
    )
    return {
        name: np.asarray(keras.ops.convert_to_numpy(value), dtype="float32")
        for name, value in trace.items()
    }


def gradient_flow(
    model: keras.Model,
    inputs: Any,
    targets: Any = None,
    loss: Any = "mse",
) -> dict[str, np.ndarray]:
    """How much of the last step's loss gradient reaches each earlier input.

    For each example b and step k, ||d L_b / d x_{b,k}|| (the Euclidean norm
    over features), where L_b is the loss at the model's last step. Plotted
    against the distance T - 1 - k, a vanilla RNN's curve falls
    exponentially; a gated one stays up (the forget gate keeps the path
    through s_t open).

    Args:
        model: A Keras model taking (batch, time, features) floats; its
            output at the last step is used (a (batch, time, ...) output is
            cut to ``[:, -1]``). Any layers: ``keras.layers.SimpleRNN``,
            ``LSTM``, ``GRU``, keras_gates.
        inputs: (batch, time, features) floats.
        targets: Optional targets of the last step. Given: L_b is ``loss``
            of (targets_b, output_b). None: L_b is the sum of the output
            (the gradient of the prediction itself).
        loss: A Keras loss identifier or function, used with ``targets``.

    Returns:
        A dict of NumPy arrays: ``distance`` (time,) = 0, 1, ..., T - 1;
        ``norm`` (time,), the mean over the batch of the gradient norm at that
        distance from the last step; ``per_example`` (batch, time), the same
        before the mean. The TensorFlow backend is needed (GradientTape).

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((None, 2)), keras.layers.SimpleRNN(16), keras.layers.Dense(1)
    ... ])
    >>> flow = gradient_flow(model, np.random.rand(8, 60, 2).astype("float32"))
    >>> flow["norm"][50] < flow["norm"][0]
    True
    """
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "gradient_flow needs the TensorFlow backend (it uses tf.GradientTape); "
            f"received KERAS_BACKEND={keras.backend.backend()!r}."
        )
    import tensorflow as tf

    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            f"`model` must be a Keras model or layer; received {type(model).__name__}."
        )
    x = tf.convert_to_tensor(inputs)
    if x.shape.rank != 3:
        raise ValueError(
            "`inputs` must have rank 3 (batch, time, features); received shape "
            f"{tuple(x.shape)}."
        )
    if not x.dtype.is_floating:
        raise TypeError(
            "`inputs` must be floating point: gradients with respect to token ids "
            f"do not exist; received dtype {x.dtype.name}."
        )
    loss_fn = keras.losses.get(loss) if targets is not None else None
    with tf.GradientTape() as tape:
        tape.watch(x)
        output = model(x, training=False)
        if isinstance(output, (list, tuple)):
            output = output[0]
        if output.shape.rank == 3:
            output = output[:, -1]
        if targets is None:
            # Examples do not interact at inference, so the gradient of the
            # batch sum is each example's own gradient.
            objective = tf.reduce_sum(output)
        else:
            y = tf.cast(tf.convert_to_tensor(targets), output.dtype)
            y = tf.reshape(y, tf.shape(output))
            objective = tf.reduce_sum(loss_fn(y, output))
    grads = tape.gradient(objective, x)
    if grads is None:
        raise ValueError(
            f"`model` '{model.name}' output does not depend on `inputs`; no "
            "gradient to measure."
        )
    per_step = tf.norm(tf.cast(grads, "float64"), axis=-1).numpy()  # (batch, time)
    per_example = per_step[:, ::-1]  # distance 0 = the last step
    return {
        "distance": np.arange(per_example.shape[1]),
        "norm": per_example.mean(axis=0),
        "per_example": per_example,
    }
