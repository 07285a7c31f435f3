"""The serving signatures, one small factory each.

    serving_default   the model itself: `inputs` (batch, time, features) float32,
                      `tokens` (batch, time) int or `text` (batch,) string ->
                      `outputs`
    with_lengths      token models: `tokens`, `lengths` (batch,) int32 ->
                      `outputs`; the first lengths[b] steps of row b are real,
                      whatever the rest holds (TF Serving's batching pads with
                      the tensor's first element, not 0)
    step              chains that act step by step: one step, the state in and
                      out (`inputs` (batch, features) or `tokens` (batch,), and
                      `h`, `s` (LSTM) or `s` (GRU)) -> `outputs` and the new state
    gates             chains: the sequence input -> every gate at every step
                      (batch, time, units) and `mask` (batch, time)

`FACTORIES` maps each name to its factory; `applicable(description)` says which
can be built for a model and why the others cannot. Each factory returns a
`Signature` whose `function` is a traced `tf.function` (XLA-compiled with
`jit_compile=True`); its Python argument names become the signature's input
names. Float inputs, states and outputs are float32 in every signature, also
under a mixed-precision policy.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keras_gates.introspection import gate_sequences
from keras_gates.serving.analysis import Description, as_float32

# TensorFlow is imported inside the functions that use it, so that `import
# keras_gates` on the JAX or torch backend does not load it (seconds; tested in
# tests/test_packaging.py).


@dataclass(frozen=True)
class Signature:
    """One signature, ready for `ExportArchive.add_endpoint(name, function)`."""

    name: str
    function: Any
    inputs: tuple[str, ...]
    outputs: tuple[str, ...] | None  # None: one per gate, named by the cell

    def described(self) -> dict[str, Any]:
        return {
            "inputs": list(self.inputs),
            "outputs": list(self.outputs) if self.outputs is not None else None,
        }


def _traced(name, inputs, specs, body, jit_compile, outputs) -> Signature:
    """A tf.function of `body` whose parameters are named `inputs`, traced."""
    import tensorflow as tf

    def call(*args):
        return body(*args)

    # The parameter names become the SavedModel signature's input names.
    call.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in inputs]
    )
    call.__name__ = name
    function = tf.function(
        call,
        input_signature=[
            tf.TensorSpec(spec.shape, spec.dtype, name=n)
            for n, spec in zip(inputs, specs)
        ],
        jit_compile=bool(jit_compile),
        autograph=False,
    )
    function.get_concrete_function()  # traced now: errors surface here
    return Signature(name, function, tuple(inputs), outputs)


def sequence_spec(description: Description):
    import tensorflow as tf

    time = description.time_steps
    if description.kind == "text":
        return tf.TensorSpec((None,), tf.string)
    if description.kind == "tokens":
        return tf.TensorSpec((None, time), description.input_dtype)
    return tf.TensorSpec((None, time, description.features), tf.float32)


EMPTY_TEXT = (
    "`text`: a request needs at least one string with a word the model reads; "
    "received only empty strings (or only words its vocabulary drops)"
)


def _text_input(description: Description, text):
    """The strings as the model takes them; a request of only empty strings
    (zero steps once vectorized: no output is defined for it) is refused with
    a message the client sees, not an error from deep inside the loop."""
    import tensorflow as tf

    if len(description.input_shape) == 2:  # the model takes (batch, 1)
        text = tf.expand_dims(text, -1)
    vectorizer = description.vectorizer
    if vectorizer.get_config().get("output_sequence_length"):
        return text  # padded to a fixed length: never empty
    steps = tf.shape(vectorizer(text))[-1]
    check = tf.debugging.assert_positive(steps, message=EMPTY_TEXT)
    with tf.control_dependencies([check]):
        return tf.identity(text)


def _run_layers(layers, x, mask=None):
    """Run `layers` in order, tracking the mask they compute."""
    for layer in layers:
        y = layer(x, training=False) if _takes_training(layer) else layer(x)
        mask = layer.compute_mask(x, mask)
        x = y
    return x, mask


def _takes_training(layer) -> bool:
    return "training" in inspect.signature(layer.call).parameters


def serving_default(description: Description, jit_compile: bool = False):
    """The model itself, on the sequence input."""
    model = description.model

    def body(x):
        if description.kind == "text":
            x = _text_input(description, x)
        return {"outputs": as_float32(model(x, training=False))}

    return _traced(
        "serving_default",
        [description.input_name],
        [sequence_spec(description)],
        body,
        jit_compile,
        ("outputs",),
    )


def with_lengths(description: Description, jit_compile: bool = False):
    """Token models: only the first lengths[b] steps of row b are real.

    A chain whose layers before the RNN act per step gets the mask from the
    lengths (the padding's values never reach a real step); any other model
    runs whole with the padding set to its padding token (0), which it masks.
    """
    import tensorflow as tf

    chain = description.chain
    model = description.model

    def body(tokens, lengths):
        real = tf.sequence_mask(lengths, maxlen=tf.shape(tokens)[1])
        if chain is not None and chain.per_step_pre:
            features, _ = _run_layers(chain.pre, tokens)
            y = chain.rnn(features, mask=real, training=False)
            y, _ = _run_layers(chain.post, y)
        else:
            padding = tf.cast(description.padding_token or 0, tokens.dtype)
            y = model(tf.where(real, tokens, padding), training=False)
        return {"outputs": as_float32(y)}

    return _traced(
        "with_lengths",
        ["tokens", "lengths"],
        [sequence_spec(description), tf.TensorSpec((None,), tf.int32)],
        body,
        jit_compile,
        ("outputs",),
    )


def step_function(description: Description) -> Callable:
    """(x_t, [state...]) -> (output, [new state...]), all float32 outside.

    The cell runs in its compute dtype (float16 under a mixed-precision policy):
    called as a layer, so Keras autocasts. A masked step (padding token, Masking
    value) leaves the state unchanged and outputs what keras.layers.RNN outputs
    there: zeros with zero_output_for_mask=True, else the carried output.
    """
    import tensorflow as tf

    chain = description.chain
    cell, rnn = chain.cell, chain.rnn

    def run(x_t, states):
        features, mask = _run_layers(chain.step_pre, x_t[:, None])
        dtype = cell.compute_dtype
        inputs_t = tf.cast(features[:, 0], dtype)  # (batch, features)
        states = [tf.cast(state, dtype) for state in states]
        out, new_states = cell(inputs_t, states, training=False)[:2]
        new_states = (
            list(new_states) if isinstance(new_states, (list, tuple)) else [new_states]
        )
        if mask is not None:
            keep = tf.cast(mask[:, 0:1], "bool")
            new_states = [
                tf.where(keep, new, old) for new, old in zip(new_states, states)
            ]
            carried = tf.zeros_like(out) if rnn.zero_output_for_mask else new_states[0]
            out = tf.where(keep, out, carried)
        if rnn.return_sequences:
            y, _ = _run_layers(chain.post, out[:, None])
            y = y[:, 0]
        else:
            y, _ = _run_layers(chain.post, out)
        return as_float32(y), [as_float32(state) for state in new_states]

    return run


def step(description: Description, jit_compile: bool = False):
    """One time step with the state in and out (no state variables)."""
    import tensorflow as tf

    chain = description.chain
    run = step_function(description)
    names = chain.state_names
    if description.kind == "float":
        input_name = "inputs"
        input_spec = tf.TensorSpec((None, description.features), tf.float32)
    else:
        input_name = "tokens"
        input_spec = tf.TensorSpec((None,), chain.step_dtype)
    state_spec = tf.TensorSpec((None, chain.cell.units), tf.float32)

    def body(x_t, *states):
        y, new_states = run(x_t, list(states))
        return {"outputs": y, **dict(zip(names, new_states))}

    return _traced(
        "step",
        [input_name, *names],
        [input_spec] + [state_spec] * len(names),
        body,
        jit_compile,
        ("outputs", *names),
    )


def gates(description: Description, jit_compile: bool = False):
    """Every gate at every step: `keras_gates.gate_sequences` on the chain's RNN,
    gates at masked steps 0 (JSON has no NaN), `s`/`h` there the carried state."""
    import tensorflow as tf

    chain = description.chain

    def body(x):
        if description.kind == "text":
            x = _text_input(description, x)
        features, mask = _run_layers(chain.pre, x)
        traces = gate_sequences(chain.rnn, features, mask=mask, masked_value=0.0)
        result = {name: as_float32(value) for name, value in traces.items()}
        if mask is None:
            mask = tf.ones(tf.shape(features)[:2], "bool")
        result["mask"] = tf.cast(mask, tf.float32)
        return result

    return _traced(
        "gates",
        [description.input_name],
        [sequence_spec(description)],
        body,
        jit_compile,
        (*chain.gate_names, "mask"),
    )


FACTORIES: dict[str, Callable] = {
    "serving_default": serving_default,
    "with_lengths": with_lengths,
    "step": step,
    "gates": gates,
}


def applicable(description: Description) -> dict[str, str | None]:
    """{signature: None if it can be built for the model, else why not}."""
    chain = description.chain
    reasons: dict[str, str | None] = {"serving_default": None}
    # `lengths` exists for token inputs only; other models never list it.
    if description.kind == "tokens":
        if description.time_steps is not None:
            reasons["with_lengths"] = (
                f"the model takes a fixed length ({description.time_steps} steps); "
                "`lengths` needs a dynamic time dimension"
            )
        elif not (chain is not None and chain.per_step_pre) and (
            description.padding_token is None
        ):
            reasons["with_lengths"] = (
                "the model does not mask a padding token (read the tokens with "
                "Embedding(mask_zero=True)), and its layers before the recurrent "
                "layer do not all act step by step"
            )
        else:
            reasons["with_lengths"] = None
    reasons["step"] = description.chain_reason if chain is None else chain.step_reason
    reasons["gates"] = description.chain_reason
    return reasons
