"""export_for_serving, checked through TF Serving's own C++ loader.

Every export here is run by `keras_gates.serving.verify.run_signatures`: a child process
that never imports TensorFlow's Python package and calls the C API
(TF_LoadSessionFromSavedModel / TF_SessionRun), the loader tensorflow_model_server
uses. The oracle is Keras itself: the model called on the same inputs, and on
sequence prefixes for the step signature; the gate traces are checked against the
NumPy reference (tests/reference.py).

Tolerance: float32 graph vs float32 Keras, ATOL 1e-5 / RTOL 1e-4; models built
under a mixed-precision policy (float16/bfloat16 layers, float32 signatures)
within HALF_TOLERANCE.
Runtime: one export and one loader process per (cell, input kind), and four
mixed-precision exports: ~40 s.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from reference import run as reference_run

import keras_gates
from keras_gates.serving import export_for_serving
from keras_gates.serving.verify import FromRequest, run_signatures, verify_saved_model

ATOL = 1e-5
RTOL = 1e-4
UNITS = 4
VOCAB = 12
CORPUS = [
    "the cat sat on the mat",
    "a dog ran far away from the cat",
    "gates read write and forget",
]
WORDS = sorted(set(" ".join(CORPUS).split()))
BATCHES = (1, 2, 7)
TIMES = (3, 6)
STEP_BATCH, STEP_TIME = 2, 4
# Token rows of lengths 5, 3, 1, padded as server-side batching pads: with the
# tensor's first element, not 0.
LENGTHS = np.array([5, 3, 1], np.int32)


def make_model(cell: str, kind: str, seed: int = 0) -> keras.Model:
    layer_class = {"lstm": keras_gates.LSTM, "gru": keras_gates.GRU}[cell]
    if kind == "float":
        layers = [keras.Input((None, 3)), layer_class(UNITS)]
    elif kind == "tokens":
        layers = [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(VOCAB, 3, mask_zero=True),
            layer_class(UNITS),
        ]
    else:
        vectorizer = keras.layers.TextVectorization(max_tokens=VOCAB + 10)
        vectorizer.adapt(CORPUS)
        layers = [
            keras.Input((), dtype="string"),
            vectorizer,
            keras.layers.Embedding(vectorizer.vocabulary_size(), 3, mask_zero=True),
            layer_class(UNITS),
        ]
    model = keras.Sequential([*layers, keras.layers.Dense(2)])
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.weights and not isinstance(layer, keras.layers.TextVectorization):
            layer.set_weights(
                [
                    rng.normal(scale=0.5, size=w.shape).astype("float32")
                    for w in layer.weights
                ]
            )
    return model


def sample(kind: str, batch: int, time: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "float":
        return rng.normal(size=(batch, time, 3)).astype("float32")
    if kind == "tokens":
        return rng.integers(1, VOCAB, size=(batch, time)).astype("int32")
    return np.array([" ".join(rng.choice(WORDS, size=time)) for _ in range(batch)])


def keras_output(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def step_inputs(model, kind, x):
    """What the step signature takes at each step: features or token ids."""
    if kind == "text":
        return keras.ops.convert_to_numpy(model.layers[0](x)).astype("int64")
    return x


def gates_sample(kind: str) -> np.ndarray:
    """Inputs for the gates signature; token and text rows have masked steps:
    token row 1 is left-padded with two 0s, text row 1 is shorter (padded at its
    end by TextVectorization). Float inputs have no mask."""
    x = sample(kind, STEP_BATCH, STEP_TIME, seed=42)
    if kind == "tokens":
        x[1, :2] = 0
    elif kind == "text":
        x[1] = " ".join(x[1].split()[:2])
    return x


def gate_mask(model, kind, x) -> np.ndarray:
    """The mask the model's Embedding(mask_zero=True) makes: token id != 0."""
    if kind == "float":
        return np.ones(x.shape[:2], bool)
    return step_inputs(model, kind, x) != 0


def served_gates_oracle(gates: dict, mask: np.ndarray) -> dict:
    """The NumPy oracle's gates as the signature serves them: at masked steps the
    gates read 0 and `s`/`h` carry the state (keras.layers.RNN's mask rule)."""
    expected = {}
    for name, value in gates.items():
        value = np.array(value)
        if name in ("s", "h"):
            carried = np.zeros_like(value[:, 0])
            for t in range(value.shape[1]):
                value[:, t] = np.where(mask[:, t, None], value[:, t], carried)
                carried = value[:, t]
        else:
            value[~mask] = 0.0
        expected[name] = value
    return expected


def prefix(kind, x, t):
    if kind == "text":
        return np.array([" ".join(row.split()[:t]) for row in x])
    return x[:, :t]


@pytest.fixture(
    scope="module",
    params=[(c, k) for c in ("lstm", "gru") for k in ("float", "tokens", "text")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def served(request, tmp_path_factory):
    """One export per (cell, kind), all its requests in one loader process."""
    cell, kind = request.param
    model = make_model(cell, kind)
    path = export_for_serving(
        model, tmp_path_factory.mktemp("base"), f"{cell}_{kind}", verify=False
    )
    requests, index = [], {}

    def add(key, signature, inputs):
        index[key] = len(requests)
        requests.append((signature, inputs))

    input_name = {"float": "inputs", "tokens": "tokens", "text": "text"}[kind]
    for batch in BATCHES:
        for time in TIMES:
            x = sample(kind, batch, time, seed=10 * batch + time)
            add(("sequence", batch, time), "serving_default", {input_name: x})

    x_steps = sample(kind, STEP_BATCH, STEP_TIME, seed=99)
    ids = step_inputs(model, kind, x_steps)
    states = ("h", "s") if cell == "lstm" else ("s",)
    zeros = np.zeros((STEP_BATCH, UNITS), "float32")
    for t in range(STEP_TIME):
        step_name = "inputs" if kind == "float" else "tokens"
        previous = index.get(("step", t - 1))
        feeds = {
            s: zeros if previous is None else FromRequest(previous, s) for s in states
        }
        add(("step", t), "step", {step_name: ids[:, t], **feeds})
    add(("gates",), "gates", {input_name: gates_sample(kind)})

    padded = None
    if kind == "tokens":
        padded = sample(kind, len(LENGTHS), int(LENGTHS.max()), seed=5)
        for row, length in enumerate(LENGTHS):
            padded[row, length:] = padded[0, 0]
        add(("lengths",), "with_lengths", {"tokens": padded, "lengths": LENGTHS})
        add(("padded_default",), "serving_default", {"tokens": padded})

    outputs = run_signatures(path, requests)
    return {
        "cell": cell,
        "kind": kind,
        "model": model,
        "inputs": {key: requests[i][1] for key, i in index.items()},
        "outputs": {key: outputs[i] for key, i in index.items()},
        "x_steps": x_steps,
        "padded": padded,
    }


def test_loader_equals_keras(served):
    model = served["model"]
    for batch in BATCHES:
        for time in TIMES:
            key = ("sequence", batch, time)
            (x,) = served["inputs"][key].values()
            got = served["outputs"][key]["outputs"]
            np.testing.assert_allclose(
                got, keras_output(model, x), atol=ATOL, rtol=RTOL, err_msg=str(key)
            )


def test_step_by_step_equals_whole_sequence(served):
    model, kind, x = served["model"], served["kind"], served["x_steps"]
    for t in range(STEP_TIME):
        got = served["outputs"][("step", t)]["outputs"]
        want = keras_output(model, prefix(kind, x, t + 1))
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL, err_msg=f"step {t}")


def test_gates_signature_equals_reference(served):
    """The gate traces equal the NumPy oracle run on the RNN's input features,
    with the model's mask (masked steps in token and text rows)."""
    model, cell, kind = served["model"], served["cell"], served["kind"]
    rnn_index = next(
        i for i, layer in enumerate(model.layers) if isinstance(layer, keras.layers.RNN)
    )
    x = gates_sample(kind)
    mask = gate_mask(model, kind, x)
    assert kind == "float" or not mask.all()  # the masked steps are tested
    features = x
    for layer in model.layers[:rnn_index]:
        features = layer(features)
    features = keras.ops.convert_to_numpy(features).astype("float64")
    weights = [
        np.asarray(w, "float64") for w in model.layers[rnn_index].cell.get_weights()
    ]
    *_, gates = reference_run(cell, features, weights, mask=mask)
    expected = served_gates_oracle(gates, mask)
    traces = served["outputs"][("gates",)]
    np.testing.assert_array_equal(traces["mask"], mask.astype("float32"))
    assert set(traces) == set(expected) | {"mask"}
    for name, want in expected.items():
        np.testing.assert_allclose(
            traces[name], want, atol=ATOL, rtol=RTOL, err_msg=name
        )
        if name not in ("s", "h"):
            assert np.all(traces[name][~mask] == 0.0), name


def test_lengths_with_first_element_padding_equals_unpadded(served):
    if served["kind"] != "tokens":
        pytest.skip("`lengths` is a token-model input")
    model, padded = served["model"], served["padded"]
    want = np.concatenate(
        [
            keras_output(model, padded[row : row + 1, :length])
            for row, length in enumerate(LENGTHS)
        ]
    )
    got = served["outputs"][("lengths",)]["outputs"]
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)
    # The trap the signature exists for: the same padded batch without lengths
    # is read as real tokens and gives other answers for the short rows.
    unmasked = served["outputs"][("padded_default",)]["outputs"]
    assert not np.allclose(unmasked[1:], want[1:], atol=1e-3)


# Mixed precision: the graph and Keras run the same float16/bfloat16 ops; they may
# round apart by an ulp (bfloat16: 2**-7 of the value), which the steps carry on.
HALF_TOLERANCE = {"mixed_float16": 1e-2, "mixed_bfloat16": 3e-2}


@pytest.fixture
def dtype_policy(request):
    """Set the global dtype policy for one test, and put the previous one back."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(request.param)
    try:
        yield request.param
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize(
    "dtype_policy, cell, kind",
    [
        ("mixed_float16", "lstm", "float"),
        ("mixed_float16", "gru", "tokens"),
        ("mixed_bfloat16", "lstm", "tokens"),
        ("mixed_bfloat16", "gru", "float"),
    ],
    indirect=["dtype_policy"],
)
def test_mixed_precision_model_exports_and_serves(dtype_policy, cell, kind, tmp_path):
    """A model built under a mixed-precision policy exports (the loader check
    passes), its signatures take and return float32, and the C++ loader's
    outputs, step by step included, equal Keras's within half precision."""
    model = make_model(cell, kind)
    rnn = next(layer for layer in model.layers if isinstance(layer, keras.layers.RNN))
    assert rnn.cell.compute_dtype == dtype_policy.removeprefix("mixed_")
    path = export_for_serving(model, tmp_path, f"{cell}_{kind}")  # verifies
    assert verify_saved_model(path, model).ok  # outputs equal the Keras model's

    x = gates_sample(kind)  # tokens: row 1 left-padded (masked steps)
    input_name = "inputs" if kind == "float" else "tokens"
    states = ("h", "s") if cell == "lstm" else ("s",)
    requests = [
        ("serving_default", {input_name: x}),
        ("gates", {input_name: x}),
    ]
    zeros = np.zeros((STEP_BATCH, UNITS), "float32")
    for t in range(STEP_TIME):
        previous = len(requests) - 1 if t else None
        feeds = {
            s: zeros if previous is None else FromRequest(previous, s) for s in states
        }
        requests.append(("step", {input_name: x[:, t], **feeds}))
    outputs = run_signatures(path, requests)

    tolerance = HALF_TOLERANCE[dtype_policy]
    want = keras_output(model, x).astype("float32")
    for got in (outputs[0]["outputs"], outputs[-1]["outputs"]):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=tolerance, rtol=tolerance)
    for state in states:
        assert outputs[-1][state].dtype == np.float32

    mask = gate_mask(model, kind, x)
    want_gates = keras_gates.trace_gates(
        model, x, layer=rnn.name, mask=mask, masked_value=0.0
    )
    np.testing.assert_array_equal(outputs[1]["mask"], mask.astype("float32"))
    for name, value in want_gates.items():
        got = outputs[1][name]
        assert got.dtype == np.float32, name
        np.testing.assert_allclose(
            got,
            np.asarray(value, "float32"),
            atol=tolerance,
            rtol=tolerance,
            err_msg=name,
        )
