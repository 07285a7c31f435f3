"""The drop-in promise: checkpoints move between the built-ins and keras_gates.

keras_gates.LSTM / GRU store exactly keras.layers.LSTM's / GRU(reset_after=
False)'s variables (lstm.py, gru.py), so swapping the layer in a model and calling
`load_weights` on what the other model wrote (a `.weights.h5`, a
BackupAndRestore folder, a `.keras` file) must give the writer's outputs and
train on identically. Oracle: the other model itself (an independent
implementation of the same maths). Tolerances: outputs right after loading
1e-6 (float32, same ops in another loop: measured <= 2e-7); after a few
training steps 1e-5 (those ulps pass through Adam's normalisation).

Checkpoints that cannot fit are refused with the reason; files written by
keras_gates 0.1, before it stored the built-ins' order (tests/data, written at
commit 7f43805 by tests/data/make_legacy.py) load and give their outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_gates

DATA = Path(__file__).parent / "data"
FEATURES, UNITS, SAMPLES, STEPS = 3, 4, 32, 5
LOAD_TOL = 1e-6
TRAIN_TOL = 1e-5


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, STEPS, FEATURES)).astype("float32")
    y = rng.normal(size=(SAMPLES, 1)).astype("float32")
    return x, y


def recurrent(kind: str, side: str, **kwargs):
    if side == "builtin":
        if kind == "lstm":
            return keras.layers.LSTM(UNITS, name="rnn", **kwargs)
        return keras.layers.GRU(UNITS, reset_after=False, name="rnn", **kwargs)
    layer_class = keras_gates.LSTM if kind == "lstm" else keras_gates.GRU
    return layer_class(UNITS, name="rnn", **kwargs)


def model(kind: str, side: str, seed: int = 0, **kwargs) -> keras.Model:
    """A small model around one recurrent layer; random weights (biases too)."""
    built = keras.Sequential(
        [
            keras.Input((None, FEATURES)),
            recurrent(kind, side, **kwargs),
            keras.layers.Dense(1, name="head"),
        ]
    )
    rng = np.random.default_rng(seed)
    built.set_weights(
        [rng.normal(scale=0.5, size=w.shape).astype("float32") for w in built.weights]
    )
    # Eager steps: these models are tiny, and tracing would cost more.
    built.compile(keras.optimizers.Adam(0.01), "mse", run_eagerly=True)
    return built


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def weights_diff(a: keras.Model, b: keras.Model) -> float:
    pairs = list(zip(a.get_weights(), b.get_weights(), strict=True))
    return max(max_diff(x, y) for x, y in pairs)


def write(writer: keras.Model, carrier: str, folder: Path) -> Path:
    if carrier == "weights_h5":
        path = folder / "model.weights.h5"
        writer.save_weights(path)
        return path
    path = folder / "model.keras"
    writer.save(path)
    return path


SIDES = [("builtin", "ours"), ("ours", "builtin")]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("carrier", ["weights_h5", "keras_file"])
@pytest.mark.parametrize("writer_side,reader_side", SIDES, ids=["in", "out"])
def test_checkpoint_loads_and_trains_on_identically(
    kind, carrier, writer_side, reader_side, tmp_path
):
    x, y = data()
    writer = model(kind, writer_side, seed=1)
    reader = model(kind, reader_side, seed=2)  # other weights until it loads
    assert max_diff(reader(x), writer(x)) > 0.01
    reader.load_weights(write(writer, carrier, tmp_path))
    assert max_diff(reader(x), writer(x)) < LOAD_TOL
    assert weights_diff(reader, writer) == 0.0  # copied, not converted
    for trained in (writer, reader):
        trained.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert weights_diff(reader, writer) < TRAIN_TOL
    assert max_diff(reader(x), writer(x)) < (TRAIN_TOL)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("writer_side,reader_side", SIDES, ids=["in", "out"])
def test_backup_and_restore_folder_resumes_across(
    kind, writer_side, reader_side, tmp_path
):
    """A BackupAndRestore folder written by one side resumes on the other:
    the weights and the optimizer state (Adam's moments) carry over."""
    x, y = data()
    backup = tmp_path / "backup"
    fit = {"batch_size": 8, "shuffle": False, "verbose": 0}
    writer = model(kind, writer_side, seed=1)
    writer.fit(
        x,
        y,
        epochs=1,
        callbacks=[
            keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False)
        ],
        **fit,
    )
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 1
    reader = model(kind, reader_side, seed=2)
    history = reader.fit(
        x, y, epochs=3, callbacks=[keras.callbacks.BackupAndRestore(str(backup))], **fit
    )
    assert len(history.history["loss"]) == 2  # resumed at epoch 1
    writer.fit(x, y, epochs=2, **fit)  # the uninterrupted run
    assert int(reader.optimizer.iterations) == int(writer.optimizer.iterations) == 12
    assert weights_diff(reader, writer) < TRAIN_TOL
    assert max_diff(reader(x), writer(x)) < (TRAIN_TOL)


def test_reset_after_gru_checkpoint_is_refused_with_reason(tmp_path):
    theirs = keras.Sequential(
        [keras.Input((None, FEATURES)), keras.layers.GRU(UNITS, name="rnn")]
    )
    path = tmp_path / "gru.weights.h5"
    theirs.save_weights(path)
    ours = keras.Sequential([keras.Input((None, FEATURES)), recurrent("gru", "ours")])
    before = [w.copy() for w in ours.get_weights()]
    with pytest.raises(ValueError, match=r"reset_after=True\) checkpoint") as error:
        ours.load_weights(path)
    assert "(2, 12)" in str(error.value)  # the stored bias shape that told
    for got, want in zip(ours.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)  # nothing loaded in part


@pytest.mark.parametrize("carrier", ["weights_h5", "keras_file"])
def test_builtin_lstm_into_no_forget_gate_lstm_is_refused_with_reason(
    carrier, tmp_path
):
    path = write(model("lstm", "builtin"), carrier, tmp_path)
    ours = model("lstm", "ours", forget_gate=False)
    with pytest.raises(ValueError, match="forget_gate=False") as error:
        ours.load_weights(path)
    assert "4 gate blocks [i | f | c | o]" in str(error.value)


def test_no_forget_gate_checkpoint_into_forget_gate_lstm_is_refused(tmp_path):
    path = write(model("lstm", "ours", forget_gate=False), "weights_h5", tmp_path)
    with pytest.raises(ValueError, match="written by keras_gates.LSTM\\(forget_gate"):
        model("lstm", "ours").load_weights(path)


def test_other_feature_size_and_use_bias_are_named(tmp_path):
    path = write(model("gru", "builtin"), "weights_h5", tmp_path)
    other = keras.Sequential(
        [
            keras.Input((None, FEATURES + 1)),
            recurrent("gru", "ours"),
            keras.layers.Dense(1),
        ]
    )
    with pytest.raises(ValueError, match="built for 3 input features, this cell for 4"):
        other.load_weights(path)
    no_bias = model("gru", "ours", use_bias=False)
    with pytest.raises(ValueError, match="use_bias=True\\?"):
        no_bias.load_weights(path)


def legacy_expected() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    manifest = json.loads((DATA / "legacy_lstm_gru.json").read_text())
    x = np.load(DATA / manifest["input"])
    outputs = {name: np.load(DATA / file) for name, file in manifest["outputs"].items()}
    return x, outputs


def test_legacy_keras_file_loads(tmp_path):
    """A .keras file of keras_gates 0.1's block order ([o | i | f | s~], GRU
    [o | i | s~]) loads converted: its config has no `weight_layout`."""
    x, want = legacy_expected()
    loaded = keras.saving.load_model(DATA / "legacy_lstm_gru.keras")
    got = dict(zip(("lstm", "lstm_no_forget", "gru"), loaded(x)))
    for name, value in want.items():
        assert max_diff(got[name], value) < LOAD_TOL, name
    for layer in loaded.layers[1:]:
        assert layer.weight_layout == "keras"  # converted once
    # Saved again, it is a file in the built-ins' order, read as it is...
    loaded.save(tmp_path / "again.keras")
    again = keras.saving.load_model(tmp_path / "again.keras")
    for got_now, value in zip(again(x), want.values()):
        assert max_diff(got_now, value) < LOAD_TOL
    # ...and the converted model reloads its own checkpoints unconverted.
    loaded.save_weights(tmp_path / "again.weights.h5")
    loaded.load_weights(tmp_path / "again.weights.h5")
    for got_now, value in zip(loaded(x), want.values()):
        assert max_diff(got_now, value) < LOAD_TOL
    # The converted LSTM's weights are a keras.layers.LSTM's.
    builtin = keras_gates.to_keras(loaded.get_layer("lstm"))
    assert max_diff(builtin(x), want["lstm"]) < LOAD_TOL


def test_legacy_weights_load_into_a_layer_told_their_layout():
    """Weights-only files carry no config: say weight_layout='lecture'."""
    x, want = legacy_expected()
    inputs = keras.Input((None, 2))
    outputs = [
        keras_gates.LSTM(
            3, return_sequences=True, name="lstm", weight_layout="lecture"
        )(inputs),
        keras_gates.LSTM(
            3,
            forget_gate=False,
            return_sequences=True,
            name="lstm_no_forget",
            weight_layout="lecture",
        )(inputs),
        keras_gates.GRU(3, return_sequences=True, name="gru", weight_layout="lecture")(
            inputs
        ),
    ]
    rebuilt = keras.Model(inputs, outputs)
    rebuilt.load_weights(DATA / "legacy_lstm_gru.keras")
    for got, value in zip(rebuilt(x), want.values()):
        assert max_diff(got, value) < LOAD_TOL


def test_legacy_weights_are_recognised_by_their_seed_entry():
    """0.1 stored the dropout seed state among the cell's variables (never
    written since): a weights-only load into a default layer converts too."""
    x, want = legacy_expected()
    inputs = keras.Input((None, 2))
    outputs = [
        keras_gates.LSTM(3, return_sequences=True, name="lstm")(inputs),
        keras_gates.LSTM(
            3, forget_gate=False, return_sequences=True, name="lstm_no_forget"
        )(inputs),
        keras_gates.GRU(3, return_sequences=True, name="gru")(inputs),
    ]
    rebuilt = keras.Model(inputs, outputs)
    rebuilt.load_weights(DATA / "legacy_lstm_gru.keras")
    for got, value in zip(rebuilt(x), want.values()):
        assert max_diff(got, value) < LOAD_TOL


def test_weight_layout_is_checked():
    with pytest.raises(ValueError, match="`weight_layout` must be one of"):
        keras_gates.GRU(3, weight_layout="torch")
