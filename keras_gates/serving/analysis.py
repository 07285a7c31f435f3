"""What a model is, for serving: its input kind, and whether it is a chain.

A chain is `pre` layers, one gated RNN layer and `post` layers: the `step` and
`gates` signatures follow its one cell. Any other model with keras_gates layers
is exported whole.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np


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


class Plan:
    """How a model is exported: as a chain, or as a whole graph.

    A chain is `pre` layers, one gated RNN layer and `post` layers (a
    Sequential, or a functional model with one path): the `step` and `gates`
    signatures need the recurrent cell itself, so they are written for chains
    only (checked against the model's own output before anything is written).
    Any other single-input model with keras_gates layers (Bidirectional,
    stacked, go_backwards, branches) is exported whole: `serving_default` runs
    the model itself, and `with_lengths` (token inputs) zeroes the padding
    before it, where the model's masking makes that exact (checked too).
    `self.omitted` says, per signature not written, why.
    """

    def __init__(self, model: keras.Model):
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"`model` must be a keras.Model; received {type(model).__name__}."
            )
        inputs = getattr(model, "inputs", None)
        if not inputs or len(inputs) != 1 or len(model.outputs) != 1:
            raise ValueError(
                "`model` must be a built model with one input and one output (use "
                "keras.Input); received inputs "
                f"{[tuple(i.shape) for i in inputs or []]}."
            )
        self.model = model
        every = sublayers(model)
        recurrent = [layer for layer in every if isinstance(layer, keras.layers.RNN)]
        self.gated = [layer for layer in recurrent if is_gated(layer)]
        if not self.gated:
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
        self.input_shape = tuple(spec.shape)
        vectorizers = [
            layer
            for layer in every
            if isinstance(layer, keras.layers.TextVectorization)
        ]
        self.vectorizer = vectorizers[0] if vectorizers else None
        if dtype == "string":
            self.kind = "text"
            if self.vectorizer is None or len(self.input_shape) not in (1, 2):
                raise ValueError(
                    "`model`: a string input must be (batch,) or (batch, 1) and go "
                    "through a keras.layers.TextVectorization; received shape "
                    f"{self.input_shape} and layers "
                    f"{[type(layer).__name__ for layer in every]}."
                )
            self.input_name = "text"
            self.input_dtype = "string"
        elif "int" in dtype:
            self.kind = "tokens"
            self.input_name = "tokens"
            self.input_dtype = dtype
            if len(self.input_shape) != 2:
                raise ValueError(
                    "`model`: a token input must be (batch, time); received shape "
                    f"{self.input_shape}."
                )
        elif "float" in dtype:
            self.kind = "float"
            self.input_name = "inputs"
            # float32 whatever the model's input or compute dtype; the layers cast.
            self.input_dtype = "float32"
            if len(self.input_shape) != 3 or self.input_shape[-1] is None:
                raise ValueError(
                    "`model`: a float input must be (batch, time, features) with a "
                    f"known feature size; received shape {self.input_shape}."
                )
        else:
            raise TypeError(
                f"`model`: input dtype must be float, int or string; received {dtype}."
            )
        self.embedding = next(
            (layer for layer in every if isinstance(layer, keras.layers.Embedding)),
            None,
        )
        self.omitted: dict[str, str] = {}
        reason = self._chain_reason(recurrent)
        self.chain = reason is None
        if not self.chain:
            self.omitted["step"] = reason
            self.omitted["gates"] = reason
            self.rnn = self.cell = None
            self.state_names = ()
            if self.kind == "tokens":
                reason = self._lengths_reason()
                if reason is not None:
                    self.omitted["with_lengths"] = reason

    def _chain_reason(self, recurrent: list) -> str | None:
        """None if the model is a chain around one gated RNN, else why not."""
        from keras_gates.base import GatedCell

        # `step` and `gates` run one recurrent cell forward in time, step by step.
        why = "`step` and `gates` follow one forward cell step by step"
        layers = [
            layer
            for layer in self.model.layers
            if not isinstance(layer, keras.layers.InputLayer)
        ]
        for layer in layers:
            if isinstance(layer, keras.layers.Bidirectional):
                return (
                    f"the model has a Bidirectional layer '{layer.name}' (its "
                    f"backward half reads each sequence from its end); {why}"
                )
        if len(recurrent) != 1:
            names = ", ".join(f"'{layer.name}'" for layer in recurrent)
            return f"the model has {len(recurrent)} recurrent layers ({names}); {why}"
        rnn = recurrent[0]
        if rnn not in layers or not isinstance(rnn.cell, GatedCell):
            return (
                f"the recurrent layer '{rnn.name}' is not a keras_gates layer at the "
                f"top level of the model (it is wrapped, nested or stacked); {why}"
            )
        for flag in ("go_backwards", "return_state"):
            if getattr(rnn, flag):
                return f"the recurrent layer '{rnn.name}' has {flag}=True; {why}"
        position = layers.index(rnn)
        self.rnn = rnn
        self.cell = rnn.cell
        self.pre = layers[:position]
        self.post = layers[position + 1 :]
        self.step_pre = self.pre
        self.step_dtype = self.input_dtype
        if self.kind == "text":
            if not self.pre or self.pre[0] is not self.vectorizer:
                return (
                    "the string input does not go through a TextVectorization "
                    f"first; {why}"
                )
            self.step_pre = self.pre[1:]
            self.step_dtype = "int64"  # TextVectorization's output
        state_size = self.cell.state_size
        two_states = isinstance(state_size, (list, tuple)) and len(state_size) == 2
        self.state_names = ("h", "s") if two_states else ("s",)
        return self._check_chain()

    # -- the graph pieces ---------------------------------------------------- #

    def _features(self, x, mask=None, layers=None):
        """Run preprocessing layers, tracking the mask they compute."""
        for layer in self.pre if layers is None else layers:
            y = layer(x)
            mask = layer.compute_mask(x, mask)
            x = y
        return x, mask

    def _head(self, y):
        for layer in self.post:
            y = layer(y)
        return y

    def _text_input(self, text):
        import tensorflow as tf

        if len(self.input_shape) == 2:  # model takes (batch, 1)
            return tf.expand_dims(text, -1)
        return text

    def sequence(self, x, lengths=None):
        """serving_default / with_lengths: the model's output, float32."""
        if self.chain:
            return as_float32(self._chain_sequence(x, lengths))
        return as_float32(self._model_sequence(x, lengths))

    def _model_sequence(self, x, lengths=None):
        """The whole model; with `lengths`, the padding is first set to token 0
        (which the model's Embedding(mask_zero=True) masks)."""
        import tensorflow as tf

        if self.kind == "text":
            x = self._text_input(x)
        if lengths is not None:
            real = tf.sequence_mask(lengths, maxlen=tf.shape(x)[1])
            x = tf.where(real, x, tf.zeros_like(x))
        return self.model(x, training=False)

    def _chain_sequence(self, x, lengths=None):
        import tensorflow as tf

        if self.kind == "text":
            x = self._text_input(x)
        features, mask = self._features(x)
        if lengths is not None:
            # The lengths, not the padding value, say which steps are real.
            mask = tf.sequence_mask(lengths, maxlen=tf.shape(features)[1])
        y = self.rnn(features, mask=mask, training=False)
        return self._head(y)

    def step(self, x_t, states):
        """One step: x_t and the previous states (float32) -> output and new
        states (float32). The cell runs in its compute dtype (float16 under a
        mixed-precision policy): called as a layer, so Keras autocasts."""
        import tensorflow as tf

        features, mask = self._features(x_t[:, None], layers=self.step_pre)
        dtype = self.cell.compute_dtype
        x_t = tf.cast(features[:, 0], dtype)  # (batch, features)
        states = [tf.cast(state, dtype) for state in states]
        out, new_states = self.cell(x_t, states, training=False)[:2]
        new_states = list(new_states) if isinstance(new_states, list) else [new_states]
        if mask is not None:
            # A masked step leaves the state (and so the output) unchanged, as
            # keras.layers.RNN does.
            keep = tf.cast(mask[:, 0:1], "bool")
            new_states = [
                tf.where(keep, new, old) for new, old in zip(new_states, states)
            ]
            out = new_states[0]
        if self.rnn.return_sequences:
            y = self._head(out[:, None])[:, 0]
        else:
            y = self._head(out)
        return as_float32(y), [as_float32(state) for state in new_states]

    def gates(self, x):
        """Every gate at every step, {name: (batch, time, units)} float32, and
        `mask` (batch, time): the layer's own numbers
        (`keras_gates.introspection.gate_sequences`). At masked steps `s`/`h`
        carry the state and the gates read 0 (JSON has no NaN)."""
        import tensorflow as tf

        from keras_gates.introspection import gate_sequences

        if self.kind == "text":
            x = self._text_input(x)
        features, mask = self._features(x)
        traces = gate_sequences(self.rnn, features, mask=mask, masked_value=0.0)
        result = {name: as_float32(value) for name, value in traces.items()}
        if mask is None:
            mask = tf.ones(tf.shape(features)[:2], "bool")
        result["mask"] = tf.cast(mask, tf.float32)
        return result

    # -- signatures ---------------------------------------------------------- #

    def sequence_spec(self):
        import tensorflow as tf

        if self.kind == "text":
            return tf.TensorSpec((None,), tf.string, name="text")
        if self.kind == "tokens":
            return tf.TensorSpec((None, None), self.input_dtype, name="tokens")
        features = self.input_shape[-1]
        return tf.TensorSpec((None, None, features), self.input_dtype, name="inputs")

    def step_input_spec(self):
        import tensorflow as tf

        if self.kind == "float":
            return tf.TensorSpec((None, self.input_shape[-1]), self.input_dtype)
        return tf.TensorSpec((None,), self.step_dtype)

    def add_endpoints(self, archive) -> dict[str, dict[str, Any]]:
        """Add every signature to `archive`; returns their description."""
        import tensorflow as tf

        sequence_spec = self.sequence_spec()
        name = self.input_name
        described = {}

        # Python argument names become the signature's input names.
        if self.kind == "text":

            def serve(text):
                return {"outputs": self.sequence(text)}

            def gates(text):
                return self.gates(text)

        elif self.kind == "tokens":

            def serve(tokens):
                return {"outputs": self.sequence(tokens)}

            def gates(tokens):
                return self.gates(tokens)

        else:

            def serve(inputs):
                return {"outputs": self.sequence(inputs)}

            def gates(inputs):
                return self.gates(inputs)

        archive.add_endpoint("serving_default", serve, [sequence_spec])
        described["serving_default"] = {"inputs": [name], "outputs": ["outputs"]}

        if self.kind == "tokens" and "with_lengths" not in self.omitted:

            def with_lengths(tokens, lengths):
                return {"outputs": self.sequence(tokens, lengths)}

            archive.add_endpoint(
                "with_lengths",
                with_lengths,
                [sequence_spec, tf.TensorSpec((None,), tf.int32, name="lengths")],
            )
            described["with_lengths"] = {
                "inputs": ["tokens", "lengths"],
                "outputs": ["outputs"],
            }

        if not self.chain:
            return described
        units = self.cell.units
        # float32 whatever the compute dtype: step casts in and out.
        state_spec = tf.TensorSpec((None, units), tf.float32)
        step_name = "inputs" if self.kind == "float" else "tokens"
        if self.state_names == ("h", "s"):
            if self.kind == "float":

                def step(inputs, h, s):
                    y, (h_t, s_t) = self.step(inputs, [h, s])
                    return {"outputs": y, "h": h_t, "s": s_t}

            else:

                def step(tokens, h, s):
                    y, (h_t, s_t) = self.step(tokens, [h, s])
                    return {"outputs": y, "h": h_t, "s": s_t}

            step_specs = [self.step_input_spec(), state_spec, state_spec]
        else:
            if self.kind == "float":

                def step(inputs, s):
                    y, (s_t,) = self.step(inputs, [s])
                    return {"outputs": y, "s": s_t}

            else:

                def step(tokens, s):
                    y, (s_t,) = self.step(tokens, [s])
                    return {"outputs": y, "s": s_t}

            step_specs = [self.step_input_spec(), state_spec]
        archive.add_endpoint("step", step, step_specs)
        described["step"] = {
            "inputs": [step_name, *self.state_names],
            "outputs": ["outputs", *self.state_names],
        }

        archive.add_endpoint("gates", gates, [sequence_spec])
        described["gates"] = {"inputs": [name], "outputs": None}
        return described

    def describe_recurrent(self) -> list[dict[str, Any]]:
        """The model's gated RNN layers, for the export's metadata."""
        return [
            {
                "name": layer.name,
                "cell": type(layer.cell).__name__,
                "units": int(getattr(layer.cell, "units", 0)) or None,
                "go_backwards": bool(layer.go_backwards),
                "return_sequences": bool(layer.return_sequences),
            }
            for layer in self.gated
        ]

    # -- sample requests ----------------------------------------------------- #

    def vocabulary_size(self) -> int | None:
        if self.embedding is not None:
            return int(self.embedding.input_dim)
        if self.vectorizer is not None:
            return int(self.vectorizer.vocabulary_size())
        return None

    def sample_words(self, count: int = 20) -> list[str]:
        if self.vectorizer is None:
            return []
        vocabulary = [str(w) for w in self.vectorizer.get_vocabulary()]
        words = [w for w in vocabulary[2:] if w.strip()]  # skip "" and [UNK]
        return words[:count] or ["text"]

    def sample_sequence(self, batch: int, time: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        if self.kind == "text":
            words = self.sample_words()
            return np.array(
                [" ".join(rng.choice(words, size=time)) for _ in range(batch)],
                dtype=object,
            )
        if self.kind == "tokens":
            high = max(2, min(self.vocabulary_size() or 2, 1000))
            return rng.integers(1, high, size=(batch, time)).astype(self.input_dtype)
        features = self.input_shape[-1]
        return rng.normal(size=(batch, time, features)).astype(self.input_dtype)

    def _check_chain(self) -> str | None:
        """None if the chain computes exactly what the model computes."""
        x = self.sample_sequence(2, 3, seed=7)
        if self.kind == "text":
            x = x.astype(str)
            if len(self.input_shape) == 2:
                x = x[:, None]
        want = keras.ops.convert_to_numpy(self.model(x, training=False))
        if self.kind == "text":
            x = x.reshape(-1)
        try:
            got = keras.ops.convert_to_numpy(self._chain_sequence(x))
        except Exception as error:  # a branch: the layers do not chain at all
            return (
                "running the model's layers in order fails (a branch or a skip "
                f"connection?): {type(error).__name__}: {str(error)[:200]}"
            )
        if want.shape != got.shape or not np.allclose(
            want, got, atol=1e-5, rtol=1e-5, equal_nan=True
        ):
            difference = (
                np.max(np.abs(want - got))
                if want.shape == got.shape
                else f"shapes {want.shape} vs {got.shape}"
            )
            return (
                "running the model's layers in order gives another output than the "
                f"model (a branch or a skip connection?; max difference {difference})"
            )
        return None

    def _lengths_reason(self) -> str | None:
        """None if `with_lengths` (padding set to token 0) is exact, else why not.

        Rows of lengths 6, 3, 1 padded as server-side batching pads (with the
        batch's first element, then with another token) must give, on their
        real steps, what the model gives on the unpadded rows.
        """
        import tensorflow as tf

        lengths = np.array([6, 3, 1], np.int32)
        x = self.sample_sequence(len(lengths), int(lengths.max()), seed=11)
        want = [
            keras.ops.convert_to_numpy(
                self.model(x[row : row + 1, :length], training=False)
            )[0]
            for row, length in enumerate(lengths)
        ]
        worst = 0.0
        for fill in sorted({int(x[0, 0]), 1}):  # 1: a token whatever the vocabulary
            padded = x.copy()
            for row, length in enumerate(lengths):
                padded[row, length:] = fill
            got = keras.ops.convert_to_numpy(
                self._model_sequence(tf.constant(padded), tf.constant(lengths))
            )
            for row, length in enumerate(lengths):
                real = want[row]
                served = got[row]
                if real.ndim and served.ndim and real.shape[0] == length:
                    served = served[:length]  # one output per step: the real ones
                if served.shape != real.shape:
                    return (
                        "the model's output does not follow the sequence length "
                        f"(shape {served.shape} padded vs {real.shape} unpadded)"
                    )
                scale = max(1.0, float(np.max(np.abs(real), initial=0.0)))
                worst = max(worst, float(np.max(np.abs(served - real), initial=0)))
                if worst > 1e-5 * scale:
                    return (
                        "padding set to token 0 still changes the output on the "
                        f"real steps (max difference {worst:.2g}): the model does "
                        "not mask token 0 (read the tokens with "
                        "Embedding(mask_zero=True))"
                    )
        return None
