"""Serving that cannot lie: every signature written is proven, the rest say why.

The oracle is always the Keras model itself (or keras_gates.trace_gates), fed
the same inputs; the served numbers come from TF Serving's own C++ loader
(`run_signatures`, a process without TensorFlow's Python package), so what is
checked is the graph the server would run. Each finding of issue 11 has a test
here that failed on the code before the serving package was rebuilt.

Tolerance: float32 graph vs float32 Keras, atol 1e-5 (streaming, 1e-5 max).
Runtime: ~15 small exports with their loader processes, ~2-3 minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import snapshot_tree

import keras_gates
from keras_gates.serving import export_for_serving, signatures
from keras_gates.serving.publish import remove_stale_staging, update_models_config
from keras_gates.serving.verify import FromRequest, run_signatures

ATOL = 1e-5


def randomize(model: keras.Model, seed: int = 0) -> keras.Model:
    """Weights large enough that every gate and padding would show."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(rng.normal(scale=0.5, size=weight.shape).astype("float32"))
    return model


def metadata(path: Path) -> dict:
    return json.loads((path / "assets.extra" / "keras_gates.json").read_text())


def stream(path: Path, name: str, steps: np.ndarray, states: dict) -> np.ndarray:
    """Feed `steps` (batch, time, ...) through `step` in the C++ loader, the
    state of each request taken from the previous answer; returns the outputs
    (batch, time, ...)."""
    requests = []
    for t in range(steps.shape[1]):
        state = (
            {k: FromRequest(t - 1, k) for k in states}
            if t
            else {k: np.zeros_like(v) for k, v in states.items()}
        )
        requests.append(("step", {name: steps[:, t], **state}))
    answers = run_signatures(path, requests)
    return np.stack([a["outputs"] for a in answers], axis=1)


# -- `step` is decided from the layers, and proven -------------------------- #


def test_causal_conv_before_the_lstm_omits_step_naming_the_layer(tmp_path):
    model = randomize(
        keras.Sequential(
            [
                keras.Input((None, 3)),
                keras.layers.Conv1D(4, 3, padding="causal", name="conv"),
                keras_gates.LSTM(5),
                keras.layers.Dense(1),
            ]
        )
    )
    path = export_for_serving(model, tmp_path, "conv", verify=False)
    info = metadata(path)
    assert "step" not in info["signatures"]
    assert "'conv' (Conv1D)" in info["omitted_signatures"]["step"]
    # gates does not stream: the Conv1D runs on the whole sequence first.
    assert "gates" in info["signatures"]
    x = np.random.default_rng(1).normal(size=(2, 6, 3)).astype("float32")
    (answer,) = run_signatures(path, [("serving_default", {"inputs": x})])
    np.testing.assert_allclose(answer["outputs"], model(x), atol=ATOL)


def test_pooling_after_a_sequence_gru_omits_step_naming_the_layer(tmp_path):
    model = randomize(
        keras.Sequential(
            [
                keras.Input((None, 3)),
                keras_gates.GRU(5, return_sequences=True),
                keras.layers.GlobalAveragePooling1D(name="pool"),
                keras.layers.Dense(1),
            ]
        )
    )
    path = export_for_serving(model, tmp_path, "pool", verify=False)
    info = metadata(path)
    assert "step" not in info["signatures"]
    reason = info["omitted_signatures"]["step"]
    assert "'pool' (GlobalAveragePooling1D)" in reason and "after" in reason


def test_per_step_chain_keeps_step_and_streaming_equals_serving_default(tmp_path):
    model = randomize(
        keras.Sequential(
            [
                keras.Input((None,), dtype="int32"),
                keras.layers.Embedding(10, 4, mask_zero=True),
                keras.layers.Dropout(0.3),
                keras_gates.LSTM(5),
                keras.layers.Dense(2),
            ]
        )
    )
    path = export_for_serving(model, tmp_path, "chain")
    info = metadata(path)
    assert {"serving_default", "with_lengths", "step", "gates"} <= set(
        info["signatures"]
    )
    assert set(info["proofs"]) == set(info["signatures"])
    # Rows with padding (token 0, masked) at their ends.
    tokens = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 0, 0]], np.int32)
    (default,) = run_signatures(path, [("serving_default", {"tokens": tokens})])
    states = {s: np.zeros((2, 5), np.float32) for s in ("h", "s")}
    streamed = stream(path, "tokens", tokens, states)
    assert np.max(np.abs(streamed[:, -1] - default["outputs"])) < 1e-5
    np.testing.assert_allclose(default["outputs"], model(tokens), atol=ATOL)


def test_step_outputs_zeros_at_padding_with_zero_output_for_mask(tmp_path):
    """keras.layers.RNN outputs zeros at a masked step with
    zero_output_for_mask=True: streaming must give the head of zeros there."""
    model = randomize(
        keras.Sequential(
            [
                keras.Input((None,), dtype="int32"),
                keras.layers.Embedding(10, 3, mask_zero=True),
                keras_gates.LSTM(4, return_sequences=True, zero_output_for_mask=True),
                keras.layers.Dense(2),
            ]
        )
    )
    path = export_for_serving(model, tmp_path, "zeros", verify=False)
    assert "step" in metadata(path)["signatures"]
    tokens = np.array([[5, 0, 7, 0]], np.int32)
    states = {s: np.zeros((1, 4), np.float32) for s in ("h", "s")}
    streamed = stream(path, "tokens", tokens, states)
    want = keras.ops.convert_to_numpy(model(tokens))
    np.testing.assert_allclose(streamed, want, atol=ATOL)
    bias = model.layers[-1].bias.numpy()
    np.testing.assert_allclose(streamed[0, 1], bias, atol=ATOL)  # head of zeros


def test_with_lengths_after_a_time_mixing_layer_is_omitted_with_reason(tmp_path):
    """Embedding(mask_zero) -> Conv1D(same) -> LSTM: padding set to 0 still
    reaches the real steps through the convolution."""
    model = randomize(
        keras.Sequential(
            [
                keras.Input((None,), dtype="int32"),
                keras.layers.Embedding(10, 3, mask_zero=True),
                keras.layers.Conv1D(3, 3, padding="same"),
                keras_gates.LSTM(4),
                keras.layers.Dense(1),
            ]
        )
    )
    path = export_for_serving(model, tmp_path, "mix", verify=False)
    info = metadata(path)
    assert "with_lengths" not in info["signatures"]
    assert "disagrees with the model" in info["omitted_signatures"]["with_lengths"]


# -- a broken signature is omitted; a broken serving_default fails ------------ #


def small_chain() -> keras.Model:
    return randomize(
        keras.Sequential(
            [keras.Input((None, 3)), keras_gates.GRU(4), keras.layers.Dense(1)]
        )
    )


def test_a_broken_signature_is_omitted_with_its_reason(tmp_path, monkeypatch):
    real = signatures.FACTORIES["gates"]

    def broken_gates(description, jit_compile=False):
        made = real(description, jit_compile)
        function = made.function

        import tensorflow as tf

        @tf.function(input_signature=function.input_signature)
        def wrong(inputs):
            result = dict(function(inputs))
            result["s"] = result["s"] + 0.5  # off by 0.5: the proof must see it
            return result

        wrong.get_concrete_function()
        return signatures.Signature("gates", wrong, made.inputs, made.outputs)

    monkeypatch.setitem(signatures.FACTORIES, "gates", broken_gates)
    path = export_for_serving(small_chain(), tmp_path, "m")
    info = metadata(path)
    assert "gates" not in info["signatures"]
    assert "step" in info["signatures"]
    assert "disagrees with the model" in info["omitted_signatures"]["gates"]
    assert "s:" in info["omitted_signatures"]["gates"]


def test_a_broken_serving_default_fails_and_leaves_the_base(tmp_path, monkeypatch):
    base = tmp_path / "base"
    export_for_serving(small_chain(), base, "m", verify=False)
    before = snapshot_tree(tmp_path)
    real = signatures.FACTORIES["serving_default"]

    def broken(description, jit_compile=False):
        made = real(description, jit_compile)
        import tensorflow as tf

        @tf.function(input_signature=made.function.input_signature)
        def wrong(inputs):
            return {"outputs": made.function(inputs)["outputs"] * 2.0}

        wrong.get_concrete_function()
        return signatures.Signature(made.name, wrong, made.inputs, made.outputs)

    monkeypatch.setitem(signatures.FACTORIES, "serving_default", broken)
    with pytest.raises(RuntimeError, match="serving_default.*disagrees"):
        export_for_serving(small_chain(), base, "m")
    assert snapshot_tree(tmp_path) == before


# -- models refused with a sentence, or exported ------------------------------ #


def test_dict_output_is_refused_with_a_sentence(tmp_path):
    inputs = keras.Input((None, 3))
    model = keras.Model(inputs, {"score": keras_gates.LSTM(2)(inputs)})
    with pytest.raises(ValueError, match="one output tensor.*dict with keys"):
        export_for_serving(model, tmp_path, "d")
    assert list(tmp_path.iterdir()) == []


def test_unroll_with_a_dynamic_length_is_refused_with_a_sentence(tmp_path):
    model = keras.Sequential([keras.Input((None, 3)), keras_gates.LSTM(2, unroll=True)])
    with pytest.raises(ValueError, match="unroll=True.*fixed sequence length"):
        export_for_serving(model, tmp_path, "u")


def test_fixed_length_model_with_flatten_exports_at_its_length(tmp_path):
    model = randomize(
        keras.Sequential(
            [
                keras.Input((5, 3)),
                keras_gates.LSTM(4, return_sequences=True, unroll=True),
                keras.layers.Flatten(name="flat"),
                keras.layers.Dense(1),
            ]
        )
    )
    path = export_for_serving(model, tmp_path, "fixed")  # verified too
    info = metadata(path)
    assert info["time_steps"] == 5
    assert "'flat' (Flatten)" in info["omitted_signatures"]["step"]
    x = np.random.default_rng(2).normal(size=(2, 5, 3)).astype("float32")
    (answer,) = run_signatures(path, [("serving_default", {"inputs": x})])
    np.testing.assert_allclose(answer["outputs"], model(x), atol=ATOL)


def test_uint8_token_model_exports_and_verifies(tmp_path):
    model = randomize(
        keras.Sequential(
            [
                keras.Input((None,), dtype="uint8"),
                keras.layers.Embedding(10, 3),
                keras_gates.GRU(4),
            ]
        )
    )
    path = export_for_serving(model, tmp_path, "bytes")  # C++ loader check passes
    tokens = np.array([[1, 9, 3]], np.uint8)
    (answer,) = run_signatures(path, [("serving_default", {"tokens": tokens})])
    np.testing.assert_allclose(answer["outputs"], model(tokens), atol=ATOL)


def test_text_request_of_only_empty_strings_is_refused_clearly(tmp_path):
    vectorizer = keras.layers.TextVectorization(max_tokens=20)
    vectorizer.adapt(["the cat sat", "a dog ran"])
    model = randomize(
        keras.Sequential(
            [
                keras.Input((), dtype="string"),
                vectorizer,
                keras.layers.Embedding(20, 3, mask_zero=True),
                keras_gates.LSTM(4),
            ]
        )
    )
    path = export_for_serving(model, tmp_path, "text", verify=False)
    (mixed,) = run_signatures(
        path, [("serving_default", {"text": np.array(["", "the cat"])})]
    )
    np.testing.assert_allclose(
        mixed["outputs"][1], model(np.array(["the cat"]))[0], atol=ATOL
    )
    with pytest.raises(RuntimeError, match="at least one string with a word"):
        run_signatures(path, [("serving_default", {"text": np.array(["", " "])})])


# -- publishing: concurrency, models.config, staging ownership ---------------- #

EXPORT = textwrap.dedent(
    """
    import sys, keras, keras_gates
    model = keras.Sequential([keras.Input((None, 2)), keras_gates.GRU(2)])
    print(keras_gates.export_for_serving(model, sys.argv[1], "same", verify=False))
    """
)


def test_two_exports_at_once_get_versions_1_and_2(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", EXPORT, str(tmp_path / "base")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err for _, err in results]
    printed = sorted(Path(out.strip().splitlines()[-1]).name for out, _ in results)
    assert printed == ["1", "2"]
    versions = sorted(p.name for p in (tmp_path / "base" / "same").iterdir())
    assert versions == ["1", "2"]
    for version in versions:
        info = metadata(tmp_path / "base" / "same" / version)
        assert info["version"] == int(version)


CONFIG_WRITER = textwrap.dedent(
    """
    import sys
    from keras_gates.serving.publish import update_models_config
    for index in range(int(sys.argv[3])):
        update_models_config(sys.argv[1], f"{sys.argv[2]}_{index}")
    """
)


def parse_config(path: Path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(path.read_text(), config)
    return [model.name for model in config.model_config_list.config]


def test_concurrent_models_config_updates_keep_every_name(tmp_path):
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CONFIG_WRITER, str(tmp_path), f"w{worker}", "25"],
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        for worker in range(4)
    ]
    assert [p.wait(timeout=300) for p in processes] == [0, 0, 0, 0]
    names = parse_config(tmp_path / "models.config")
    assert sorted(names) == sorted(f"w{w}_{i}" for w in range(4) for i in range(25))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "models.config"]
    assert leftovers == [".models.config.lock"]


def test_models_config_with_single_quotes_gets_no_second_entry(tmp_path):
    (tmp_path / "models.config").write_text(
        "model_config_list {\n  config {\n    name: 'sentiment'\n"
        "    base_path: '/models/sentiment'\n    model_platform: 'tensorflow'\n"
        "  }\n}\n"
    )
    update_models_config(tmp_path, "sentiment")
    update_models_config(tmp_path, "other")
    assert parse_config(tmp_path / "models.config") == ["sentiment", "other"]


def test_models_config_that_is_not_a_config_is_refused(tmp_path):
    (tmp_path / "models.config").write_text("model_config_list { config { name: }")
    with pytest.raises(ValueError, match="ModelServerConfig"):
        update_models_config(tmp_path, "m")


def test_unlocked_staging_is_stale_whatever_its_pid(tmp_path):
    """A PID from another namespace (a container) may be alive here: only the
    lock tells. A folder with a live PID and no lock holder is stale."""
    base = tmp_path / "base"
    stale = tmp_path / f".base.keras-gates-export-{os.getpid()}-zz"
    (stale / "export").mkdir(parents=True)
    assert remove_stale_staging(base) == [stale]


def test_base_writable_inside_a_read_only_parent_stages_inside(tmp_path, monkeypatch):
    """As root the permission is simulated: the parent refuses writes."""
    parent = tmp_path / "mounted"
    base = parent / "base"
    base.mkdir(parents=True)
    real_access = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda path, mode: (
            False
            if os.path.samefile(path, parent) and mode & os.W_OK
            else real_access(path, mode)
        ),
    )
    path = export_for_serving(small_chain(), base, "m", verify=False)
    assert path == base / "m" / "1"
    assert sorted(p.name for p in base.iterdir()) == [
        ".models.config.lock",
        "batching_parameters.txt",
        "m",
        "models.config",
    ]
    assert sorted(p.name for p in parent.iterdir()) == ["base"]


# -- XLA-compiled exports ---------------------------------------------------- #


def test_jit_compiled_export_serves_the_same_numbers(tmp_path, capsys):
    model = small_chain()
    path = export_for_serving(model, tmp_path, "xla", jit_compile=True)
    info = metadata(path)
    assert info["jit_compile"] is True
    assert {"serving_default", "step", "gates"} <= set(info["signatures"])
    x = np.random.default_rng(3).normal(size=(2, 6, 3)).astype("float32")
    (answer,) = run_signatures(path, [("serving_default", {"inputs": x})])
    np.testing.assert_allclose(answer["outputs"], model(x), atol=ATOL)
    from keras_gates import cli

    assert cli.main(["verify", str(path), "--latency", "20"]) == 0
    out = capsys.readouterr().out
    assert "(XLA-compiled): median" in out


def ops_in_export(path: Path) -> set[str]:
    """Every op in the SavedModel's graph and its function library."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((path / "saved_model.pb").read_bytes())
    found = set()
    for graph in saved.meta_graphs:
        found |= {node.op for node in graph.graph_def.node}
        for function in graph.graph_def.library.function:
            found |= {node.op for node in function.node_def}
    return found


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_lstm_export_serves_the_block_form_at_small_batches(tmp_path, jit_compile):
    """The plain export's serving_default holds the LSTM's block form
    (BlockLSTMV2, kernels.BLOCK_BATCH_MAX) beside the loop forms, picked by
    the request's batch; the proofs pass (export verifies) and the C++
    loader's numbers equal keras.layers.LSTM on the same weights at batch 1,
    at the block form's largest batch and above it. XLA has no kernel for
    the op: the compiled export holds none."""
    from keras_gates import kernels

    model = randomize(
        keras.Sequential(
            [keras.Input((None, 3)), keras_gates.LSTM(6, return_sequences=True)]
        )
    )
    theirs = keras.Sequential(
        [keras.Input((None, 3)), keras.layers.LSTM(6, return_sequences=True)]
    )
    theirs.set_weights(model.get_weights())
    path = export_for_serving(model, tmp_path, "block", jit_compile=jit_compile)
    assert ("BlockLSTMV2" in ops_in_export(path)) is not jit_compile
    rng = np.random.default_rng(4)
    batches = (1, kernels.BLOCK_BATCH_MAX, kernels.BLOCK_BATCH_MAX + 1)
    xs = [rng.normal(size=(b, 5, 3)).astype("float32") for b in batches]
    answers = run_signatures(path, [("serving_default", {"inputs": x}) for x in xs])
    for x, answer in zip(xs, answers, strict=True):
        np.testing.assert_allclose(answer["outputs"], theirs(x), atol=ATOL)


def test_jit_compile_of_a_text_model_is_refused_before_tracing(tmp_path):
    """XLA has no string ops: running such a graph aborts the process."""
    vectorizer = keras.layers.TextVectorization(max_tokens=20)
    vectorizer.adapt(["the cat sat", "a dog ran"])
    model = keras.Sequential(
        [
            keras.Input((), dtype="string"),
            vectorizer,
            keras.layers.Embedding(20, 3, mask_zero=True),
            keras_gates.LSTM(4),
        ]
    )
    with pytest.raises(ValueError, match="`jit_compile`: a text model"):
        export_for_serving(model, tmp_path / "base", "t", jit_compile=True)
    assert list(tmp_path.iterdir()) == []
