"""What a model is, for serving: a pure analysis that changes nothing.

`describe(model)` answers with a frozen `Description` (or raises a ValueError /
TypeError naming the reason the model cannot be served at all):

- the input: `float` (batch, time, features), `tokens` (batch, time) of
  integers, or `text` (batch,) / (batch, 1) strings through a TextVectorization;
- the model's keras_gates layers;
- whether it is a chain (`pre` layers -> one forward keras_gates LSTM/GRU at
  the top level -> `post` layers), which the `gates` signature needs, and
  whether that chain acts step by step, which the `step` signature needs:
  every `pre` layer, and with `return_sequences=True` every `post` layer, must
  act on each time step alone (`PER_STEP_LAYERS`). A layer that mixes time
  steps (Conv1D, pooling, attention, Flatten, another recurrent layer) or that
  is not known to act per step is refused, with its name in the reason.

Which signatures are finally written is decided by their proofs
(`keras_gates.serving.proofs`), which run them; this module only says which
ones can be built at all, and why not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import keras

from keras_gates import keras_internals


def as_float32(x):
    """A floating tensor as float32: signatures take and return float32, also
    for a model computing in float16/bfloat16 (mixed precision)."""
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    return tf.cast(x, tf.float32) if x.dtype.is_floating else x


def is_gated(layer) -> bool:
    """A keras.layers.RNN whose cell (or one of its stacked cells) is ours."""
    from keras_gates.base import GatedCell

    if not isinstance(layer, keras.layers.RNN):
        return False
    cells = getattr(layer.cell, "cells", [layer.cell])
    return any(isinstance(cell, GatedCell) for cell in cells)


def sublayers(model: keras.Model) -> list:
    """Every layer inside `model`, wrapped and nested ones included, once each."""
    seen, layers = set(), []

    def visit(layer):
        if id(layer) in seen or isinstance(layer, keras.layers.InputLayer):
            return
        seen.add(id(layer))
        layers.append(layer)
        if isinstance(layer, keras.Model):
            children = layer.layers
        elif isinstance(layer, keras.layers.Bidirectional):
            children = [layer.forward_layer, layer.backward_layer]
        elif isinstance(layer, keras.layers.Wrapper):  # TimeDistributed, ...
            children = [layer.layer]
        else:
            children = []
        for child in children:
            visit(child)

    for layer in model.layers:
        visit(layer)
    return layers


# Layers that act on each time step alone (at inference), whatever the length:
# running them on one step gives that step of running them on the sequence.
_PER_STEP_NAMES = (
    "Dense",
    "EinsumDense",
    "Embedding",
    "Dropout",
    "SpatialDropout1D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "Activation",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "PReLU",
    "Identity",
    "Masking",
    "Rescaling",
    "TimeDistributed",
)
PER_STEP_LAYERS = tuple(
    getattr(keras.layers, name)
    for name in _PER_STEP_NAMES
    if hasattr(keras.layers, name)
)
# Per step only when they act on the feature axis (the last one).
_FEATURE_AXIS_LAYERS = tuple(
    getattr(keras.layers, name)
    for name in (
        "LayerNormalization",
        "BatchNormalization",
        "UnitNormalization",
        "Softmax",
        "Normalization",
    )
    if hasattr(keras.layers, name)
)


def per_step_reason(layer) -> str | None:
    """None if `layer` acts on each time step alone, else why not (its name in it)."""
    if isinstance(layer, keras.layers.RNN) or isinstance(
        layer, keras.layers.Bidirectional
    ):
        return f"'{layer.name}' ({type(layer).__name__}) is another recurrent layer"
    if isinstance(layer, PER_STEP_LAYERS):
        return None
    if isinstance(layer, _FEATURE_AXIS_LAYERS):
        axis = getattr(layer, "axis", -1)
        axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
        rank = len(getattr(layer, "input", None).shape) if _has_input(layer) else 3
        if all(a in (-1, rank - 1) for a in axes):
            return None
        return (
            f"'{layer.name}' ({type(layer).__name__}) acts over axis {axis}, not "
            "the feature axis alone"
        )
    return (
        f"'{layer.name}' ({type(layer).__name__}) is not known to act on each "
        "time step alone (Conv1D, pooling, attention, Flatten and Reshape mix "
        "time steps)"
    )


def _has_input(layer) -> bool:
    try:
        return layer.input is not None and hasattr(layer.input, "shape")
    except (AttributeError, ValueError):
        return False


@dataclass(frozen=True)
class Chain:
    """input -> `pre` -> one forward keras_gates RNN -> `post`.

    Attributes:
        pre: The layers before the RNN, in order (TextVectorization first for
            text models).
        rnn: The keras_gates layer.
        post: The layers after it (the head).
        step_pre: `pre` without the TextVectorization: what `step` runs on one
            token (text models stream token ids).
        step_dtype: The dtype `step` takes (the tokens' for text models).
        state_names: ("h", "s") for the LSTM, ("s",) for the GRU.
        gate_names: The trace's entries, e.g. ("o", "i", "f", "s_tilde", "s", "h").
        step_reason: None if `step` can be built, else why not.
        per_step_pre: Every `pre` layer acts per step (padding never reaches a
            real step: `with_lengths` can mask by length).
    """

    pre: tuple
    rnn: Any
    post: tuple
    step_pre: tuple
    step_dtype: str
    state_names: tuple[str, ...]
    gate_names: tuple[str, ...]
    step_reason: str | None
    per_step_pre: bool

    @property
    def cell(self):
        return self.rnn.cell


@dataclass(frozen=True)
class Description:
    """What `describe` found: everything export, proofs and warmup need.

    Attributes:
        model: The keras.Model.
        kind: "float", "tokens" or "text".
        input_name: The signatures' sequence input name ("inputs", "tokens",
            "text").
        input_dtype: Its dtype ("float32" for float models whatever their
            compute dtype).
        input_shape: The model's input shape (batch first).
        time_steps: The model's fixed sequence length, or None (dynamic).
        features: The feature size of a float input, else None.
        vocabulary_size: The token range of an Embedding or TextVectorization.
        sample_words: Words from the TextVectorization's vocabulary.
        padding_token: The token id the model masks (Embedding(mask_zero=True):
            0), or None.
        mask_value: A float model's Masking value, or None.
        gated: The model's keras_gates layers (anywhere in it).
        chain: The `Chain`, or None.
        chain_reason: Why the model is not a chain (None for a chain).
        vectorizer: The TextVectorization layer, if any.
    """

    model: Any
    kind: str
    input_name: str
    input_dtype: str
    input_shape: tuple
    time_steps: int | None
    features: int | None
    vocabulary_size: int | None
    sample_words: tuple[str, ...]
    padding_token: int | None
    mask_value: float | None
    gated: tuple
    chain: Chain | None
    chain_reason: str | None
    vectorizer: Any = field(default=None, repr=False)

    def metadata(self) -> dict[str, Any]:
        """The JSON-able facts the loader child needs to feed the export."""
        chain = self.chain
        return {
            "kind": self.kind,
            "input_name": self.input_name,
            "input_dtype": self.input_dtype,
            "time_steps": self.time_steps,
            "features": self.features,
            "vocabulary_size": self.vocabulary_size,
            "sample_words": list(self.sample_words),
            "padding_token": self.padding_token,
            "mask_value": self.mask_value,
            "structure": "chain" if chain else "graph",
            "cell": type(chain.cell).__name__ if chain else None,
            "units": int(chain.cell.units) if chain else None,
            "states": list(chain.state_names) if chain else [],
            "return_sequences": bool(chain.rnn.return_sequences) if chain else None,
            "recurrent_layers": [
                {
                    "name": layer.name,
                    "cell": type(layer.cell).__name__,
                    "units": int(getattr(layer.cell, "units", 0)) or None,
                    "go_backwards": bool(layer.go_backwards),
                    "return_sequences": bool(layer.return_sequences),
                }
                for layer in self.gated
            ],
        }


def describe(model: Any) -> Description:
    """What `model` is, for serving.

    Args:
        model: A built keras.Model with one input, one output tensor and
            keras_gates layers, none of them stateful.

    Returns:
        A frozen `Description`.

    Raises:
        TypeError, ValueError: The model cannot be served; the message says why.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`model` must be a keras.Model; received {type(model).__name__}."
        )
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        raise ValueError(
            "`model` must be a built model with one input (use keras.Input); "
            f"received inputs {[tuple(i.shape) for i in inputs or []]}."
        )
    try:
        output = model.output  # the structure: a tensor, a list, a dict
    except AttributeError:  # a Sequential model keeps only `outputs`
        output = model.outputs[0] if len(model.outputs) == 1 else model.outputs
    if not hasattr(output, "shape") or len(model.outputs) != 1:
        structure = (
            f"a dict with keys {sorted(output)}"
            if isinstance(output, dict)
            else f"a {type(output).__name__} of {len(model.outputs)} tensors"
        )
        raise ValueError(
            "`model` must have one output tensor (the signatures return it as "
            f"`outputs`); received {structure}. Build the model with "
            "outputs=<one tensor>, or export each output as its own model."
        )
    every = sublayers(model)
    recurrent = [layer for layer in every if isinstance(layer, keras.layers.RNN)]
    gated = [layer for layer in recurrent if is_gated(layer)]
    if not gated:
        raise ValueError(
            "`model` must contain a keras_gates.LSTM or keras_gates.GRU layer "
            "(or keras.layers.RNN over a keras_gates cell, alone or inside "
            "Bidirectional); received layers "
            f"{[type(layer).__name__ for layer in every]}."
        )
    for layer in recurrent + [
        w for w in every if isinstance(w, keras.layers.Bidirectional)
    ]:
        if getattr(layer, "stateful", False):
            raise ValueError(
                f"`model`: the recurrent layer '{layer.name}' has stateful=True; "
                "a servable export needs stateful=False (TF Serving keeps no "
                "state: stream with the `step` signature instead)."
            )

    spec = inputs[0]
    dtype = keras.backend.standardize_dtype(spec.dtype)
    input_shape = tuple(spec.shape)
    vectorizers = [
        layer for layer in every if isinstance(layer, keras.layers.TextVectorization)
    ]
    vectorizer = vectorizers[0] if vectorizers else None
    if dtype == "string":
        kind, input_name, input_dtype = "text", "text", "string"
        if vectorizer is None or len(input_shape) not in (1, 2):
            raise ValueError(
                "`model`: a string input must be (batch,) or (batch, 1) and go "
                "through a keras.layers.TextVectorization; received shape "
                f"{input_shape} and layers {[type(x).__name__ for x in every]}."
            )
    elif "int" in dtype:
        kind, input_name, input_dtype = "tokens", "tokens", dtype
        if len(input_shape) != 2:
            raise ValueError(
                "`model`: a token input must be (batch, time); received shape "
                f"{input_shape}."
            )
    elif "float" in dtype:
        # float32 whatever the model's input or compute dtype; the layers cast.
        kind, input_name, input_dtype = "float", "inputs", "float32"
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(
                "`model`: a float input must be (batch, time, features) with a "
                f"known feature size; received shape {input_shape}."
            )
    else:
        raise TypeError(
            f"`model`: input dtype must be float, int or string; received {dtype}."
        )
    time_steps = input_shape[1] if kind != "text" else None
    for layer in recurrent:
        if getattr(layer, "unroll", False) and time_steps is None:
            raise ValueError(
                f"`model`: the recurrent layer '{layer.name}' has unroll=True, "
                "which needs a fixed sequence length, and the model's input has "
                f"shape {input_shape} (time None). Give keras.Input a fixed "
                "length (the export then takes that length) or use unroll=False."
            )

    embedding = next(
        (layer for layer in every if isinstance(layer, keras.layers.Embedding)),
        None,
    )
    masking = next(
        (layer for layer in every if isinstance(layer, keras.layers.Masking)), None
    )
    vocabulary_size = None
    if embedding is not None:
        vocabulary_size = int(embedding.input_dim)
    elif vectorizer is not None:
        vocabulary_size = int(vectorizer.vocabulary_size())
    sample_words: tuple[str, ...] = ()
    if vectorizer is not None:
        vocabulary = [str(w) for w in vectorizer.get_vocabulary()]
        words = [w for w in vocabulary[2:] if w.strip()]  # skip "" and [UNK]
        sample_words = tuple(words[:20] or ["text"])
    chain, chain_reason = _chain(model, kind, input_dtype, recurrent, vectorizer)
    return Description(
        model=model,
        kind=kind,
        input_name=input_name,
        input_dtype=input_dtype,
        input_shape=input_shape,
        time_steps=time_steps,
        features=input_shape[-1] if kind == "float" else None,
        vocabulary_size=vocabulary_size,
        sample_words=sample_words,
        padding_token=(0 if embedding is not None and embedding.mask_zero else None),
        mask_value=float(masking.mask_value) if masking is not None else None,
        gated=tuple(gated),
        chain=chain,
        chain_reason=chain_reason,
        vectorizer=vectorizer,
    )


def _chain(model, kind, input_dtype, recurrent, vectorizer):
    """(Chain, None) for a chain around one forward gated RNN, else (None, why)."""
    from keras_gates.base import GatedCell

    # `step` and `gates` run one recurrent cell forward in time, step by step.
    why = "`step` and `gates` follow one forward cell step by step"
    layers = [
        layer
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]
    for layer in layers:
        if isinstance(layer, keras.layers.Bidirectional):
            return None, (
                f"the model has a Bidirectional layer '{layer.name}' (its "
                f"backward half reads each sequence from its end); {why}"
            )
    if len(recurrent) != 1:
        names = ", ".join(f"'{layer.name}'" for layer in recurrent)
        return None, (
            f"the model has {len(recurrent)} recurrent layers ({names}); {why}"
        )
    rnn = recurrent[0]
    if rnn not in layers or not isinstance(rnn.cell, GatedCell):
        return None, (
            f"the recurrent layer '{rnn.name}' is not a keras_gates layer at the "
            f"top level of the model (it is wrapped, nested or stacked); {why}"
        )
    for flag in ("go_backwards", "return_state"):
        if getattr(rnn, flag):
            return None, f"the recurrent layer '{rnn.name}' has {flag}=True; {why}"
    path_break = _path_break(model, layers)
    if path_break is not None:
        return None, f"{path_break}; {why}"
    position = layers.index(rnn)
    pre, post = tuple(layers[:position]), tuple(layers[position + 1 :])
    step_pre, step_dtype = pre, input_dtype
    if kind == "text":
        if not pre or pre[0] is not vectorizer:
            return None, (
                f"the string input does not go through a TextVectorization first; {why}"
            )
        step_pre, step_dtype = pre[1:], "int64"  # TextVectorization's output
    reasons = [per_step_reason(layer) for layer in step_pre]
    per_step_pre = not any(reasons)
    step_reason = None
    if not per_step_pre:
        step_reason = next(r for r in reasons if r) + " before the recurrent layer"
    elif rnn.return_sequences:
        head = [per_step_reason(layer) for layer in post]
        if any(head):
            step_reason = (
                next(r for r in head if r)
                + " after the recurrent layer (which returns sequences)"
            )
    if step_reason is not None:
        step_reason += "; `step` streams one step at a time"
    return (
        Chain(
            pre=pre,
            rnn=rnn,
            post=post,
            step_pre=step_pre,
            step_dtype=step_dtype,
            # What the cell carries, as the cell declares it (GatedCell).
            state_names=tuple(rnn.cell.state_names),
            gate_names=rnn.cell.trace_names,
            step_reason=step_reason,
            per_step_pre=per_step_pre,
        ),
        None,
    )


def _path_break(model, layers) -> str | None:
    """None if each layer takes exactly the previous layer's output (and its
    mask, as Keras hands it on), else why not, naming the layer."""
    if isinstance(model, keras.Sequential):
        return None
    previous, previous_name = model.inputs[0], "the model's input"
    for layer in layers:
        try:
            fed = layer.input
            output = layer.output
        except (AttributeError, ValueError):  # a layer called several times
            fed, output = [None], None
        fed = list(fed) if isinstance(fed, (list, tuple)) else [fed]
        # A masked tensor's mask goes along as the `mask` argument.
        extra = [
            tensor
            for tensor in fed[1:]
            if tensor is not keras_internals.keras_mask(previous)
        ]
        if fed[0] is not previous or extra:
            return (
                f"layer '{layer.name}' does not take just {previous_name} (the "
                "model's layers branch or skip there)"
            )
        previous, previous_name = output, f"the output of '{layer.name}'"
    if previous is not model.outputs[0]:
        return (
            f"the model's output is not just {previous_name}, its last layer "
            "(the model's layers branch or skip)"
        )
    return None
