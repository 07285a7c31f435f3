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
- Which layer? In a model, ``trace_gates``, ``gate_statistics`` and
  ``GateMonitor`` find a layer one way (``find_gated_layers``): by name, by
  its tag under sub-models (``"encoder/lstm"``), each direction of a
  ``keras.layers.Bidirectional`` (``"bi/forward"``, ``"bi/backward"``), by
  index or object, and feed it what the model feeds it (sequences, mask,
  initial state).
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

import dataclasses
import weakref
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_gates import keras_internals, validation
from keras_gates.base import GatedCell

__all__ = [
    "GatedLayer",
    "find_gated_layer",
    "find_gated_layers",
    "gate_names",
    "gate_sequences",
    "gated_layers",
    "gradient_flow",
    "trace_gates",
]


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
            f"Bidirectional wrapper '{layer.name}', which holds two. Pass a model "
            f"holding it with layer='{layer.name}/forward' or "
            f"'{layer.name}/backward' (the model feeds it its mask and state), "
            f"or its `forward_layer` / `backward_layer` with their inputs."
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
            A stateful layer's state has its fixed batch B: other numbers of
            sequences are traced B at a time, sequence n from row n mod B of
            the state (the stream it would continue).
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
    return _gate_sequences(layer, inputs, mask, initial_state, masked_value)[0]


def _stateful_states(layer: Any) -> list | None:
    """A stateful layer's carried states, or None."""
    if getattr(layer, "stateful", False) and getattr(layer, "states", None):
        return [ops.convert_to_tensor(state) for state in layer.states]
    return None


def _gate_sequences(
    layer: Any, inputs: Any, mask: Any, initial_state: Any, masked_value: float
) -> tuple[dict[str, Any], list]:
    """``gate_sequences``, and the initial states it started from."""
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
    validation.sequence_inputs(
        shape,
        keras.backend.standardize_dtype(inputs.dtype),
        int(cell.kernel.shape[0]),
        token_hint="Token ids go through the model's Embedding: call "
        "trace_gates(model, tokens, layer=...).",
    )
    inputs = ops.cast(inputs, cell.compute_dtype)
    batch = ops.shape(inputs)[0]
    if mask is not None:
        mask = ops.cast(ops.convert_to_tensor(mask), "bool")
        validation.sequence_mask(tuple(mask.shape), shape)

    if initial_state is None:
        carried = _stateful_states(layer)
        fixed = None if carried is None else int(carried[0].shape[0])
        if fixed is not None and shape[0] is not None and shape[0] != fixed:
            # The state's fixed batch: B sequences at a time, each chunk from
            # the carried state's first rows.
            pieces = []
            for start in range(0, shape[0], fixed):
                stop = min(start + fixed, shape[0])
                pieces.append(
                    _gate_sequences(
                        layer,
                        inputs[start:stop],
                        None if mask is None else mask[start:stop],
                        [state[: stop - start] for state in carried],
                        masked_value,
                    )
                )
            trace = {
                name: ops.concatenate([piece[0][name] for piece in pieces], axis=0)
                for name in pieces[0][0]
            }
            states = [
                ops.concatenate([piece[1][k] for piece in pieces], axis=0)
                for k in range(len(carried))
            ]
            return trace, states
        if carried is not None:
            initial_state = carried
        else:
            initial_state = [
                ops.zeros((batch, cell.units), dtype=cell.compute_dtype)
                for _ in range(len(_as_state_list(cell.state_size)))
            ]
    initial_state = [
        ops.cast(ops.convert_to_tensor(s), cell.compute_dtype)
        for s in _as_state_list(initial_state)
    ]
    validation.initial_states(
        [tuple(state.shape) for state in initial_state],
        len(_as_state_list(cell.state_size)),
        shape[0],
        cell.units,
    )
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
        return trace, initial_state
    # The gates of a masked step are computed but not used: say so.
    keep = mask[:, :, None]  # (batch, time, 1)
    for name in names:
        if name not in cell.state_names:
            fill = ops.full_like(trace[name], masked_value)
            trace[name] = ops.where(keep, trace[name], fill)
    return trace, initial_state


@dataclasses.dataclass(frozen=True, eq=False)
class GatedLayer:
    """A keras_gates layer found in a model, and the way the model reaches it.

    Attributes:
        tag: Its unique name in the model: the layer's name, under its
            sub-models' names (``"encoder/lstm"``); a direction of a
            ``keras.layers.Bidirectional`` is ``"<wrapper>/<its layer>"``
            (``"bi/forward_lstm"``).
        layer: The ``keras.layers.RNN`` over a keras_gates cell.
        wrapper: Its ``Bidirectional``, or None.
        direction: ``"forward"`` or ``"backward"`` in a wrapper, else None.
        path: The sub-models from the model down to the layer (or wrapper).
    """

    tag: str
    layer: Any
    wrapper: Any = None
    direction: str | None = None
    path: tuple = ()

    @property
    def called(self) -> Any:
        """The layer the model calls: the wrapper, or the layer itself."""
        return self.layer if self.wrapper is None else self.wrapper

    def names(self) -> set[str]:
        """Every string that selects this target (``find_gated_layers``)."""
        names = {self.tag, self.layer.name}
        if self.wrapper is not None:
            prefix = self.tag.rsplit("/", 1)[0]  # the wrapper's tag
            for head in (prefix, self.wrapper.name):
                names |= {f"{head}/{self.direction}", f"{head}/{self.layer.name}"}
        return names


def _is_gated(layer: Any) -> bool:
    return isinstance(layer, keras.layers.RNN) and isinstance(
        getattr(layer, "cell", None), GatedCell
    )


def _is_container(layer: Any) -> bool:
    return isinstance(layer, keras.Model) and not isinstance(layer, keras.layers.RNN)


def gated_layers(model: keras.Model) -> list[GatedLayer]:
    """Every keras_gates layer of `model`, in layer order: at its top level,
    in each direction of a ``keras.layers.Bidirectional``, and in nested
    sub-models (to any depth).

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((None, 3)),
    ...     keras.layers.Bidirectional(keras_gates.LSTM(4, name="lstm"), name="bi"),
    ... ])
    >>> [target.tag for target in gated_layers(model)]
    ['bi/forward_lstm', 'bi/backward_lstm']
    """

    def walk(container, path, prefix):
        for sub in container.layers:
            if _is_gated(sub):
                yield GatedLayer(prefix + sub.name, sub, path=path)
            elif isinstance(sub, keras.layers.Bidirectional):
                for direction in ("forward", "backward"):
                    inner = getattr(sub, f"{direction}_layer")
                    if _is_gated(inner):
                        yield GatedLayer(
                            f"{prefix}{sub.name}/{inner.name}",
                            inner,
                            sub,
                            direction,
                            path,
                        )
            elif _is_container(sub):
                yield from walk(sub, (*path, sub), f"{prefix}{sub.name}/")

    return list(walk(model, (), ""))


def find_gated_layers(
    model: keras.Model, selector: Any, argument: str = "layer", several: bool = False
) -> list[GatedLayer]:
    """The keras_gates layer(s) of `model` that `selector` picks.

    The one way ``trace_gates``, ``gate_statistics`` and ``GateMonitor`` find
    a layer, with one set of errors (each offers only choices that work).

    Args:
        model: A Keras model.
        selector: None (the model's only keras_gates layer), a tag of
            ``gated_layers`` (``"bi/forward_lstm"``, ``"encoder/lstm"``), a
            Bidirectional wrapper's name plus ``"/forward"`` or
            ``"/backward"``, a layer's own name (``"forward_lstm"``), an index
            into ``model.layers``, or the layer object (a wrapper's
            ``forward_layer`` / ``backward_layer`` too). With `several`, a
            wrapper (its name or object) picks both directions.
        argument: The argument's name, for the errors.
        several: Whether one selector may pick several layers.

    Returns:
        A list of ``GatedLayer`` (exactly one unless `several`).
    """
    targets = gated_layers(model)
    tags = [target.tag for target in targets]
    if not targets:
        raise ValueError(
            f"`{argument}` must select a keras_gates LSTM/GRU layer of model "
            f"'{model.name}', which has none (at its top level, in a "
            f"Bidirectional or in a sub-model; layers: "
            f"{[sub.name for sub in model.layers]})."
        )
    if selector is None:
        if len(targets) != 1 and not several:
            raise ValueError(
                f"`{argument}` must name the layer to trace when the model has "
                f"{len(targets)} keras_gates layers (one of {tags}); received "
                f"{argument}=None."
            )
        return targets
    what = None
    if isinstance(selector, str):
        matches = [t for t in targets if selector in t.names()]
        if several:
            matches += [
                t
                for t in targets
                if t.wrapper is not None
                and selector in (t.wrapper.name, t.tag.rsplit("/", 1)[0])
            ]
        what = repr(selector)
    elif isinstance(selector, int) and not isinstance(selector, bool):
        if not -len(model.layers) <= selector < len(model.layers):
            raise ValueError(
                f"`{argument}` must be an index into model.layers (length "
                f"{len(model.layers)}) or one of the keras_gates layers {tags}; "
                f"received {selector}."
            )
        picked = model.layers[selector]
        matches = [t for t in targets if picked in (t.layer, t.wrapper)]
        what = f"index {selector} ({type(picked).__name__} '{picked.name}')"
    elif isinstance(selector, keras.layers.Layer):
        matches = [t for t in targets if selector in (t.layer, t.wrapper)]
        what = f"{type(selector).__name__} '{selector.name}'"
    else:
        raise TypeError(
            f"`{argument}` must be a layer name (str), an index (int) or a layer "
            f"of the model (one of the keras_gates layers {tags}); received "
            f"{type(selector).__name__} {selector!r}."
        )
    unique = []
    for target in matches:
        if target not in unique:
            unique.append(target)
    if not unique:
        kinds = {sub.name: type(sub).__name__ for sub in model.layers}
        found = (
            f", a {kinds[selector]}, not a keras_gates LSTM/GRU"
            if isinstance(selector, str) and selector in kinds
            else ""
        )
        raise ValueError(
            f"`{argument}` must name a layer of model '{model.name}' that is a "
            f"keras_gates LSTM/GRU: one of {tags}; received {what}{found}."
        )
    if len(unique) > 1 and not several:
        raise ValueError(
            f"`{argument}` must select one keras_gates layer; {what} selects "
            f"{len(unique)}: {[t.tag for t in unique]}. Pass one of these."
        )
    return unique


def find_gated_layer(model: keras.Model, selector: Any, argument: str = "layer"):
    """The one ``GatedLayer`` `selector` picks (``find_gated_layers``)."""
    return find_gated_layers(model, selector, argument)[0]


def _call_argument(args: list, kwargs: dict, name: str, position: int) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else None


def _call_arguments(container: keras.Model, layer: Any) -> tuple[list, dict]:
    call = keras_internals.symbolic_call_arguments(layer)  # private Keras
    if call is None:
        raise ValueError(
            f"`layer` '{layer.name}' has never been called inside model "
            f"'{container.name}', so there is no path from the model's inputs to "
            f"it; build the model on a keras.Input first."
        )
    return call


def _feeder(container: keras.Model, wanted: list) -> keras.Model:
    model_inputs = container.inputs
    return keras.Model(
        model_inputs[0] if len(model_inputs) == 1 else model_inputs, wanted
    )


# Feeder models per (model, traced layer), so repeated traces (GateMonitor's
# every epoch) build them once.
_FEEDERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _layer_feed(model: keras.Model, target: GatedLayer, inputs: Any):
    """What `model` hands `target`: its sequences, mask and initial state.

    Returns ``(sequences, mask or None, initial_state list or None)`` for
    ``inputs``, computed by the model's own layers up to `target` (through
    its sub-models; for a direction of a Bidirectional, what the wrapper
    gets, with its half of the wrapper's initial state).
    """
    feeders = _FEEDERS.setdefault(model, {})
    container, values = model, inputs
    for sub in target.path:  # what each sub-model is handed, down to the layer
        key = ("sub", id(sub))
        if key not in feeders:
            args, _ = _call_arguments(container, sub)
            feeders[key] = _feeder(container, args[0])
        values = feeders[key](values, training=False)
        container = sub
    called = target.called
    key = ("layer", id(called))
    if key not in feeders:
        args, kwargs = _call_arguments(container, called)
        # keras.layers.RNN.call / Bidirectional.call(sequences, initial_state=
        # None, mask=None, ...)
        upstream_mask = _call_argument(args, kwargs, "mask", 2)
        upstream_state = _call_argument(args, kwargs, "initial_state", 1)
        upstream_state = (
            [] if upstream_state is None else _as_state_list(upstream_state)
        )
        wanted = [args[0]]
        if upstream_mask is not None:
            wanted.append(upstream_mask)
        feeders[key] = (
            _feeder(container, wanted + upstream_state),
            upstream_mask is not None,
            len(upstream_state),
        )
    feeder, has_mask, n_states = feeders[key]
    fed = feeder(values, training=False)
    fed = list(fed) if isinstance(fed, (list, tuple)) else [fed]
    sequences = fed.pop(0)
    mask = fed.pop(0) if has_mask else None
    states = fed or None
    if states is not None and target.wrapper is not None:
        half = n_states // 2  # Bidirectional: the forward half, then the backward
        states = states[:half] if target.direction == "forward" else states[half:]
    return sequences, mask, states


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
            state of a stateful layer, which is not changed; other numbers of
            sequences than its fixed batch B are traced B at a time, sequence
            n from row n mod B of that state).
        layer: With a model: which keras_gates layer (``find_gated_layers``):
            its name, its tag under sub-models (``"encoder/lstm"``), a
            ``Bidirectional`` direction (``"bi/forward"``, ``"bi/backward"``,
            ``"bi/forward_lstm"``, or the inner layer's own name), an index in
            ``model.layers``, or the layer object (``bi.backward_layer``
            too); in nested sub-models too. The model feeds it its mask and
            state (a wrapper's direction gets its half of the wrapper's
            initial state). None: the model's only keras_gates layer.
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
    trace, _, _ = _trace(
        layer_or_model, inputs, mask, initial_state, layer, masked_value
    )
    return trace


def _traced_layer(layer_or_model: Any, layer: Any) -> Any:
    """The layer ``trace_gates(layer_or_model, ..., layer=layer)`` traces."""
    if _is_container(layer_or_model):
        return find_gated_layer(layer_or_model, layer).layer
    return layer_or_model


def _trace(
    layer_or_model: Any,
    inputs: Any,
    mask: Any = None,
    initial_state: Any = None,
    layer: Any = None,
    masked_value: float = float("nan"),
) -> tuple[dict[str, np.ndarray], Any, list[np.ndarray]]:
    """``trace_gates``, with the traced layer and the states it started from
    (float32 NumPy, [h_0, s_0] or [s_0]): what ``gate_statistics`` takes the
    first step's s_{t-1} from."""
    if _is_container(layer_or_model):
        found = find_gated_layer(layer_or_model, layer)
        target = found.layer
        sequences, upstream_mask, upstream_state = _layer_feed(
            layer_or_model, found, inputs
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
    trace, states = _gate_sequences(
        target, sequences, mask, initial_state, masked_value
    )

    def to_numpy(value):
        return np.asarray(keras.ops.convert_to_numpy(value), dtype="float32")

    trace = {name: to_numpy(value) for name, value in trace.items()}
    return trace, target, [to_numpy(state) for state in states]


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
