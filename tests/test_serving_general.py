"""export_for_serving beyond the chain: Bidirectional, stacked, go_backwards models.

A model that is not input -> preprocessing -> one forward gated RNN -> head is
exported whole: `serving_default` (and `with_lengths` for masked token models)
runs the model itself; `step` and `gates`, which follow one forward cell, are not
written, and the export's metadata and log line say why. As in test_serving.py
the served outputs come from TF Serving's own C++ loader
(`keras_gates.serving.verify.run_signatures`, no TensorFlow Python package in that
process) and the oracle is the Keras model on the same inputs.

Tolerance: float32 graph vs float32 Keras, ATOL 1e-5 / RTOL 1e-4.
Runtime: three tiny exports, one loader process each, one verify: ~20 s.
"""

from __future__ import annotations

import json
import logging

import keras
import numpy as np
import pytest

import keras_gates
from keras_gates import cli
from keras_gates.serving import export_for_serving
from keras_gates.serving.verify import run_signatures, verify_saved_model

ATOL = 1e-5
RTOL = 1e-4
VOCAB = 12
TAGS = 3
BATCHES = (1, 2, 7)
TIMES = (3, 6)
# Token rows of lengths 5, 3, 1, padded as server-side batching pads: with the
# tensor's first element, not 0.
LENGTHS = np.array([5, 3, 1], np.int32)
CORPUS = ["the cat sat on the mat", "a dog ran far away from the cat"]
WORDS = sorted(set(" ".join(CORPUS).split()))


def randomize(model: keras.Model, seed: int) -> keras.Model:
    """Weights large enough that every gate matters (and padding would show)."""
    rng = np.random.default_rng(seed)
    for weight in model.trainable_weights:
        weight.assign(rng.normal(scale=0.5, size=weight.shape).astype("float32"))
    return model


def bidirectional_tagger() -> keras.Model:
    """The standard sequence labeller: one tag per token, both directions."""
    return randomize(
        keras.Sequential(
            [
                keras.Input((None,), dtype="int32"),
                keras.layers.Embedding(VOCAB, 3, mask_zero=True),
                keras.layers.Bidirectional(keras_gates.LSTM(4, return_sequences=True)),
                keras.layers.Dense(TAGS),
            ]
        ),
        seed=1,
    )


def stacked_float() -> keras.Model:
    return randomize(
        keras.Sequential(
            [
                keras.Input((None, 3)),
                keras_gates.LSTM(4, return_sequences=True),
                keras_gates.GRU(5),
                keras.layers.Dense(2),
            ]
        ),
        seed=2,
    )


def backwards_text() -> keras.Model:
    """Raw strings into a go_backwards GRU (functional, with a skip connection)."""
    vectorizer = keras.layers.TextVectorization(max_tokens=30)
    vectorizer.adapt(CORPUS)
    text = keras.Input((), dtype="string")
    ids = vectorizer(text)
    x = keras.layers.Embedding(vectorizer.vocabulary_size(), 3, mask_zero=True)(ids)
    forward = keras_gates.GRU(4)(x)
    backward = keras_gates.GRU(4, go_backwards=True)(x)
    both = keras.layers.Concatenate()([forward, backward])
    return randomize(keras.Model(text, keras.layers.Dense(2)(both)), seed=3)


MODELS = {
    "tagger": (bidirectional_tagger, "tokens"),
    "stacked": (stacked_float, "inputs"),
    "backwards_text": (backwards_text, "text"),
}


def sample(input_name: str, batch: int, time: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if input_name == "inputs":
        return rng.normal(size=(batch, time, 3)).astype("float32")
    if input_name == "tokens":
        return rng.integers(1, VOCAB, size=(batch, time)).astype("int32")
    return np.array([" ".join(rng.choice(WORDS, size=time)) for _ in range(batch)])


def keras_output(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


@pytest.fixture(scope="module", params=sorted(MODELS))
def served(request, tmp_path_factory):
    """One export per model, all its requests in one C++ loader process."""
    make, input_name = MODELS[request.param]
    model = make()
    path = export_for_serving(
        model, tmp_path_factory.mktemp("base"), request.param, verify=False
    )
    requests, index = [], {}
    for batch in BATCHES:
        for time in TIMES:
            x = sample(input_name, batch, time, seed=10 * batch + time)
            index[(batch, time)] = len(requests)
            requests.append(("serving_default", {input_name: x}))
    padded = None
    if input_name == "tokens":
        padded = sample(input_name, len(LENGTHS), int(LENGTHS.max()), seed=5)
        for row, length in enumerate(LENGTHS):
            padded[row, length:] = padded[0, 0]
        index["lengths"] = len(requests)
        requests.append(("with_lengths", {"tokens": padded, "lengths": LENGTHS}))
    outputs = run_signatures(path, requests)
    metadata = json.loads((path / "assets.extra" / "keras_gates.json").read_text())
    return {
        "name": request.param,
        "model": model,
        "path": path,
        "metadata": metadata,
        "inputs": {key: requests[i][1] for key, i in index.items()},
        "outputs": {key: outputs[i] for key, i in index.items()},
        "padded": padded,
    }


def test_loader_equals_keras_at_every_batch_and_length(served):
    model = served["model"]
    for batch in BATCHES:
        for time in TIMES:
            (x,) = served["inputs"][(batch, time)].values()
            got = served["outputs"][(batch, time)]["outputs"]
            np.testing.assert_allclose(
                got,
                keras_output(model, x),
                atol=ATOL,
                rtol=RTOL,
                err_msg=f"{served['name']} batch {batch} time {time}",
            )


def test_lengths_with_first_element_padding_equals_unpadded(served):
    if served["padded"] is None:
        pytest.skip("`lengths` is a token-model input")
    model, padded = served["model"], served["padded"]
    got = served["outputs"]["lengths"]["outputs"]
    assert got.shape == (len(LENGTHS), LENGTHS.max(), TAGS)
    for row, length in enumerate(LENGTHS):
        want = keras_output(model, padded[row : row + 1, :length])[0]
        np.testing.assert_allclose(
            got[row, :length], want, atol=ATOL, rtol=RTOL, err_msg=f"row {row}"
        )
    # Without the lengths the backward half reads the padding as real tokens.
    unmasked = keras_output(model, padded)
    assert not np.allclose(unmasked[1, :3], got[1, :3], atol=1e-3)


def test_metadata_says_which_signatures_and_why_not(served):
    metadata = served["metadata"]
    written = set(metadata["signatures"])
    omitted = metadata["omitted_signatures"]
    want = (
        {"serving_default", "with_lengths"}
        if served["padded"] is not None
        else {"serving_default"}
    )
    assert written == want
    assert set(omitted) == {"step", "gates"}
    reason = {
        "tagger": "Bidirectional layer",
        "stacked": "2 recurrent layers",
        "backwards_text": "2 recurrent layers",
    }[served["name"]]
    assert reason in omitted["step"] and omitted["gates"] == omitted["step"]
    assert metadata["structure"] == "graph"
    assert metadata["cell"] is None and metadata["states"] == []
    layers = metadata["recurrent_layers"]
    assert len(layers) == 2 and all(layer["units"] for layer in layers)
    if served["name"] != "stacked":
        assert sorted(layer["go_backwards"] for layer in layers) == [False, True]


def test_verify_passes_and_matches_keras(served):
    """`keras-gates verify` on a whole-graph export: every check, warmup included."""
    if served["name"] != "tagger":
        pytest.skip("one verify run is enough")
    report = verify_saved_model(served["path"], served["model"])
    assert report.ok, report.text()
    assert "the warmup requests replay" in report.text()


def test_log_line_names_signatures_and_reasons(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="keras_gates.serving"):
        export_for_serving(stacked_float(), tmp_path, "m", verify=False)
    (line,) = [r.getMessage() for r in caplog.records if "signatures" in r.message]
    assert "signatures serving_default;" in line
    assert "not written: step, gates (the model has 2 recurrent layers" in line


def test_cli_prints_the_signatures_line(tmp_path, capsys):
    keras_file = tmp_path / "tagger.keras"
    bidirectional_tagger().save(keras_file)
    argv = ["export", str(keras_file), "--name", "t", "--base", str(tmp_path / "b")]
    assert cli.main([*argv, "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert "signatures serving_default, with_lengths; not written: step, gates" in out


def test_chain_keeps_step_and_gates(tmp_path):
    model = randomize(
        keras.Sequential(
            [keras.Input((None, 3)), keras_gates.GRU(4), keras.layers.Dense(2)]
        ),
        seed=4,
    )
    path = export_for_serving(model, tmp_path, "chain", verify=False)
    metadata = json.loads((path / "assets.extra" / "keras_gates.json").read_text())
    assert set(metadata["signatures"]) == {"serving_default", "step", "gates"}
    assert metadata["omitted_signatures"] == {}
    assert metadata["structure"] == "chain" and metadata["states"] == ["s"]


def test_unmasked_token_model_omits_with_lengths_and_says_why(tmp_path):
    model = randomize(
        keras.Sequential(
            [
                keras.Input((None,), dtype="int32"),
                keras.layers.Embedding(VOCAB, 3),  # no mask_zero: 0 is a token
                keras.layers.Bidirectional(keras_gates.GRU(4)),
            ]
        ),
        seed=5,
    )
    path = export_for_serving(model, tmp_path, "unmasked", verify=False)
    metadata = json.loads((path / "assets.extra" / "keras_gates.json").read_text())
    assert set(metadata["signatures"]) == {"serving_default"}
    assert "mask_zero=True" in metadata["omitted_signatures"]["with_lengths"]


def test_stateful_bidirectional_is_refused(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((5, 3), batch_size=2),
            keras.layers.Bidirectional(keras_gates.LSTM(4, stateful=True)),
        ]
    )
    with pytest.raises(ValueError, match="stateful=True"):
        export_for_serving(model, tmp_path, "m", verify=False)
    assert not (tmp_path / "m").exists()


def functional(*make, time=None):
    """Input((time, 3)) -> each layer in turn; `make` items are layers."""
    x = keras.Input((time, 3))
    y = x
    for layer in make:
        y = layer(y)
    return keras.Model(x, y)


def reasons_of(model) -> dict:
    from keras_gates.serving import analysis, signatures

    return signatures.applicable(analysis.describe(model))


def test_masking_before_the_rnn_keeps_step_and_gates(tmp_path):
    """Input -> Masking -> GRU -> Dense as a functional model: one path (the
    GRU also gets the Masking's mask, as Keras hands it on), so `step` and
    `gates` are built, as for the same Sequential model, and verify."""
    model = randomize(
        functional(keras.layers.Masking(), keras_gates.GRU(4), keras.layers.Dense(2)),
        seed=6,
    )
    assert reasons_of(model) == {"serving_default": None, "step": None, "gates": None}
    path = export_for_serving(model, tmp_path, "masking", verify=True)
    metadata = json.loads((path / "assets.extra" / "keras_gates.json").read_text())
    assert set(metadata["signatures"]) == {"serving_default", "step", "gates"}


def _two_recurrent():
    return keras.Sequential(
        [
            keras.Input((None, 3)),
            keras_gates.GRU(4, return_sequences=True, name="first"),
            keras_gates.LSTM(4, name="second"),
        ]
    )


def _skip_connection():
    x = keras.Input((None, 3))
    projected = keras.layers.Dense(3, name="project")(x)
    added = keras.layers.Add(name="add")([projected, x])
    return keras.Model(x, keras_gates.GRU(4, name="gru")(added))


def _shared_layer():
    x = keras.Input((None, 3))
    shared = keras.layers.Dense(3, name="shared")
    return keras.Model(x, keras_gates.GRU(4)(shared(shared(x))))


def _return_state():
    x = keras.Input((None, 3))
    output, _ = keras_gates.GRU(4, return_state=True, name="gru")(x)
    return keras.Model(x, keras.layers.Dense(1)(output))


def _nested():
    inner_in = keras.Input((None, 3))
    inner = keras.Model(inner_in, keras_gates.GRU(4, name="gru")(inner_in), name="enc")
    return functional(inner, keras.layers.Dense(1))


def _tokens(*layers, time=None):
    return keras.Sequential([keras.Input((time,), dtype="int32"), *layers])


STEP_GATES = ("step", "gates")
# name -> (model factory, {signature: a piece of its reason}); every reason
# string of serving/analysis.py and serving/signatures.py, each from a model
# that triggers it, naming the layer or option that stops the signature.
REASONS = {
    "bidirectional": (
        lambda: functional(keras.layers.Bidirectional(keras_gates.GRU(4), name="bi")),
        dict.fromkeys(STEP_GATES, "has a Bidirectional layer 'bi'"),
    ),
    "two_recurrent": (
        _two_recurrent,
        dict.fromkeys(STEP_GATES, "has 2 recurrent layers ('first', 'second')"),
    ),
    "nested": (
        _nested,
        dict.fromkeys(STEP_GATES, "the recurrent layer 'gru' is not a keras_gates"),
    ),
    "go_backwards": (
        lambda: functional(keras_gates.GRU(4, go_backwards=True, name="gru")),
        dict.fromkeys(STEP_GATES, "'gru' has go_backwards=True"),
    ),
    "return_state": (
        _return_state,
        dict.fromkeys(STEP_GATES, "'gru' has return_state=True"),
    ),
    "skip_connection": (
        _skip_connection,
        dict.fromkeys(STEP_GATES, "layer 'add' does not take just the output of"),
    ),
    "shared_layer": (
        _shared_layer,
        # The GRU reads the shared layer's second output, not its first.
        dict.fromkeys(STEP_GATES, "does not take just the output of 'shared'"),
    ),
    "conv_before": (
        lambda: functional(
            keras.layers.Conv1D(3, 2, padding="same", name="conv"), keras_gates.GRU(4)
        ),
        {
            "step": "'conv' (Conv1D) is not known to act on each time step alone "
            "(Conv1D, pooling, attention, Flatten and Reshape mix time steps) "
            "before the recurrent layer; `step` streams one step at a time",
            "gates": None,
        },
    ),
    "time_axis_norm_after": (
        lambda: functional(
            keras_gates.GRU(4, return_sequences=True),
            keras.layers.LayerNormalization(axis=1, name="norm"),
            time=5,
        ),
        {
            "step": "'norm' (LayerNormalization) acts over axis [1], not the feature "
            "axis alone after the recurrent layer (which returns sequences)",
            "gates": None,
        },
    ),
    "fixed_length_tokens": (
        lambda: _tokens(
            keras.layers.Embedding(10, 3, mask_zero=True), keras_gates.GRU(4), time=5
        ),
        {"with_lengths": "the model takes a fixed length (5 steps)"},
    ),
    "unmasked_tokens": (
        lambda: _tokens(
            keras.layers.Embedding(10, 3),
            keras.layers.Conv1D(3, 2, padding="same"),
            keras_gates.GRU(4),
        ),
        {"with_lengths": "the model does not mask a padding token"},
    ),
}


@pytest.mark.parametrize("case", sorted(REASONS))
def test_every_reason_names_what_stops_the_signature(case):
    make, expected = REASONS[case]
    reasons = reasons_of(make())
    assert reasons["serving_default"] is None
    for signature, piece in expected.items():
        if piece is None:
            assert reasons[signature] is None, (signature, reasons)
        else:
            assert reasons[signature] is not None, (signature, reasons)
            assert piece in reasons[signature], (signature, reasons[signature])
