"""keras_gates.GateMonitor: TensorBoard summaries of the gates while training.

The event files are read back with TensorBoard's own EventAccumulator
(tf.summary writes tensors: histograms are (buckets, 3) [left, right, count],
images [width, height, png]). The expected numbers come from
``keras_gates.trace_gates`` run by a recording callback at the same epoch end,
reduced here with NumPy over the steps the probe itself leaves unmasked
(its non-zero tokens), never from the monitor's own code.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap

import keras
import matplotlib.image
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

import keras_gates

VOCABULARY, STEPS, LOW, HIGH = 20, 9, 0.05, 0.95


def read_events(run_dir) -> dict[str, dict[int, np.ndarray]]:
    """tag -> step -> value, every tensor event of a run folder."""
    accumulator = event_accumulator.EventAccumulator(
        str(run_dir), size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    return {
        tag: {
            event.step: tf.make_ndarray(event.tensor_proto)
            for event in accumulator.Tensors(tag)
        }
        for tag in accumulator.Tags()["tensors"]
    }


def token_data(rows=32, seed=0):
    """Token ids with zero padding at the end of every other row."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, VOCABULARY, size=(rows, STEPS))
    tokens[::2, 6:] = 0
    return tokens.astype("int32"), rng.normal(size=(rows, 1)).astype("float32")


def token_model():
    """Embedding (masked) -> LSTM -> Bidirectional GRU -> Dense."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(VOCABULARY, 4, mask_zero=True, name="embed"),
            keras_gates.LSTM(6, return_sequences=True, name="lstm"),
            keras.layers.Bidirectional(keras_gates.GRU(5, name="gru"), name="bi"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    return model


class RecordTraces(keras.callbacks.Callback):
    """trace_gates of every layer at every epoch end, fed by hand."""

    def __init__(self, probe):
        super().__init__()
        self.probe = probe
        self.traces = {}

    def on_epoch_end(self, epoch, logs=None):
        model = self.model
        lstm_out = keras.Model(model.inputs[0], model.get_layer("lstm").output)
        sequences = lstm_out(self.probe)  # what the Bidirectional reads
        bi = model.get_layer("bi")
        self.traces[epoch] = {
            "lstm": keras_gates.trace_gates(model, self.probe, layer="lstm"),
            "bi/forward_gru": keras_gates.trace_gates(
                bi.forward_layer, sequences, mask=self.probe != 0
            ),
            "bi/backward_gru": keras_gates.trace_gates(
                bi.backward_layer, sequences, mask=self.probe != 0
            ),
        }


def watched(trace, layer):
    """Gate name -> values at the probe's unmasked steps, forget gate included."""
    gates = {name: trace[name] for name in ("o", "i", "f", "s_tilde") if name in trace}
    if "gru" in layer:
        gates["f"] = 1.0 - trace["i"]
    return gates


def test_summaries_equal_the_traced_gates_at_the_asked_epochs(tmp_path):
    x, y = token_data()
    probe = x[:6]
    unmasked = probe != 0  # (batch, time), from the probe alone
    model = token_model()
    recorder = RecordTraces(probe)
    monitor = keras_gates.GateMonitor(
        probe, tmp_path, every_n_epochs=2, tokens=[f"w{t}" for t in range(STEPS)]
    )
    model.fit(x, y, epochs=5, batch_size=8, verbose=0, callbacks=[monitor, recorder])

    events = read_events(tmp_path / "gates")
    expected_tags = set()
    for layer in ("lstm", "bi/forward_gru", "bi/backward_gru"):
        expected_tags.add(f"{layer}/heatmap")
        for gate in ("o", "i", "f", "s_tilde"):
            expected_tags.add(f"{layer}/{gate}")
            expected_tags.add(f"{layer}/{gate}/mean")
            if gate == "s_tilde":
                expected_tags.add(f"{layer}/{gate}/abs_above_{HIGH}")
            else:
                expected_tags.update(
                    {f"{layer}/{gate}/below_{LOW}", f"{layer}/{gate}/above_{HIGH}"}
                )
    assert set(events) == expected_tags
    # every_n_epochs=2 over 5 epochs: after epochs 2 and 4 (indices 1 and 3).
    assert all(sorted(steps) == [1, 3] for steps in events.values())
    assert len(monitor.seconds_per_write) == 2  # skipped epochs trace nothing

    for epoch in (1, 3):
        for layer, trace in recorder.traces[epoch].items():
            for gate, values in watched(trace, layer).items():
                values = values[unmasked].astype("float64")  # (unmasked, units)
                assert np.isfinite(values).all()
                tag = f"{layer}/{gate}"
                np.testing.assert_allclose(
                    events[f"{tag}/mean"][epoch], values.mean(), rtol=1e-5, atol=1e-7
                )
                if gate == "s_tilde":
                    saturated = {f"abs_above_{HIGH}": np.mean(np.abs(values) > HIGH)}
                else:
                    saturated = {
                        f"below_{LOW}": np.mean(values < LOW),
                        f"above_{HIGH}": np.mean(values > HIGH),
                    }
                for key, want in saturated.items():
                    np.testing.assert_allclose(events[f"{tag}/{key}"][epoch], want)
                # The histogram covers exactly the unmasked values.
                histogram = events[tag][epoch]  # (buckets, 3): left, right, count
                assert histogram[:, 2].sum() == values.size
                np.testing.assert_allclose(histogram[0, 0], values.min(), rtol=1e-6)
                np.testing.assert_allclose(histogram[-1, 1], values.max(), rtol=1e-6)
                edges = np.append(histogram[:, 0], histogram[-1, 1])
                counts, _ = np.histogram(values, bins=edges)
                # A value on a bucket edge may fall either side in float32.
                assert np.abs(counts - histogram[:, 2]).sum() <= 2, tag
            width, height, png = events[f"{layer}/heatmap"][epoch]
            pixels = matplotlib.image.imread(io.BytesIO(png))
            assert pixels.shape[:2] == (int(height), int(width))
            assert pixels.shape[0] > 200 and pixels.shape[1] > 300
            assert pixels[..., :3].std() > 0.05, "blank heatmap"
    # Training moved the gates between the two logged epochs.
    assert events["lstm/f/mean"][1] != events["lstm/f/mean"][3]


def float_model(dropout):
    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [
            keras.Input((None, 3)),
            keras_gates.LSTM(
                5,
                dropout=dropout,
                recurrent_dropout=dropout,
                seed=3,
                return_sequences=True,
                name="lstm",
            ),
            keras.layers.Dropout(dropout, seed=4),
            keras_gates.GRU(4, dropout=dropout, seed=5, name="gru"),
            keras.layers.Dense(1, name="dense"),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    return model


def float_data(rows=24, steps=7, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(rows, steps, 3)).astype("float32"),
        rng.normal(size=(rows, 1)).astype("float32"),
    )


def test_training_ends_with_the_same_weights_with_and_without_the_monitor(tmp_path):
    x, y = float_data()
    finals = []
    for callbacks in (
        [],
        [keras_gates.GateMonitor(x[:4], tmp_path, gradient_flow=True)],
    ):
        model = float_model(dropout=0.3)
        model.fit(x, y, epochs=2, batch_size=6, verbose=0, callbacks=callbacks)
        finals.append([np.array(v) for v in model.weights + model.optimizer.variables])
    assert len(finals[0]) == len(finals[1])
    for without, with_monitor in zip(*finals, strict=True):
        np.testing.assert_array_equal(without, with_monitor)

    # It did write, every epoch, gradient flow included: the value at the
    # sequence start equals gradient_flow on the trained model.
    events = read_events(tmp_path / "gates")
    assert sorted(events["gradient_flow/at_start"]) == [0, 1]
    assert sorted(events["gru/f/mean"]) == [0, 1]
    flow = keras_gates.gradient_flow(model, x[:4])
    np.testing.assert_allclose(
        events["gradient_flow/at_start"][1], flow["norm"][-1], rtol=1e-5
    )
    width, height, png = events["gradient_flow/curve"][1]
    assert matplotlib.image.imread(io.BytesIO(png))[..., :3].std() > 0.05


class CountBatches(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_begin(self, batch, logs=None):
        self.batches += 1


@pytest.mark.parametrize(
    "case",
    ["probe_features", "probe_rank", "layer_not_gated", "layer_unknown", "log_dir"],
)
def test_bad_arguments_fail_before_the_first_batch(tmp_path, case):
    x, y = float_data()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    kwargs, match = {
        "probe_features": (
            {"probe": np.zeros((2, 5, 4), "float32")},
            r"`probe` must .* shape \(None, None, 3\).* received shape \(2, 5, 4\)",
        ),
        "probe_rank": ({"probe": np.zeros((2, 5), "float32")}, r"`probe` must"),
        "layer_not_gated": (
            {"layers": ["dense"]},
            r"`layers` must name .*keras_gates .*received 'dense', a Dense",
        ),
        "layer_unknown": ({"layers": "lsmt"}, r"`layers` must .*'lstm'.*'lsmt'"),
        "log_dir": ({"log_dir": blocker / "logs"}, r"`log_dir` must .*a_file"),
    }[case]
    arguments = {"probe": x[:2], "log_dir": tmp_path / "logs", **kwargs}
    monitor = keras_gates.GateMonitor(**arguments)
    model = float_model(dropout=0.0)
    before = [np.array(w) for w in model.weights]
    counter = CountBatches()
    with pytest.raises(ValueError, match=match):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[counter, monitor])
    assert counter.batches == 0
    for old, new in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(old, np.array(new))


def test_bad_arguments_fail_at_construction(tmp_path, monkeypatch):
    x, _ = float_data()
    for kwargs, error, match in (
        ({"every_n_epochs": 0}, ValueError, "`every_n_epochs`"),
        ({"every_n_epochs": 1.5}, TypeError, "`every_n_epochs`"),
        ({"gradient_flow": "yes"}, TypeError, "`gradient_flow`"),
        ({"layers": [3]}, TypeError, "`layers`"),
        ({"tokens": "one two"}, TypeError, "`tokens`"),
        ({"log_dir": None}, TypeError, "`log_dir`"),
        ({"probe": None}, ValueError, "`probe`"),
    ):
        arguments = {"probe": x[:2], "log_dir": tmp_path, **kwargs}
        with pytest.raises(error, match=match):
            keras_gates.GateMonitor(**arguments)
    # Token ids have no input gradient; wrong token count for the heatmap.
    tokens, y = token_data()
    for kwargs, match in (
        ({"gradient_flow": True}, "`gradient_flow=True` needs a float"),
        ({"tokens": ["a", "b"]}, "`tokens` must label each of the 9 steps"),
    ):
        monitor = keras_gates.GateMonitor(tokens[:2], tmp_path, **kwargs)
        with pytest.raises(ValueError, match=match):
            token_model().fit(tokens, y, epochs=1, verbose=0, callbacks=[monitor])
    # Without the tensorboard package: say which package to install.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboard.summary", None)
    with pytest.raises(ImportError, match="needs the `tensorboard` package"):
        keras_gates.GateMonitor(x[:2], tmp_path)


def test_beside_keras_tensorboard_and_selected_layers(tmp_path):
    x, y = token_data()
    # update_freq=5 leaves a record_if(batch % 5 == 0) around the epoch end
    # (4 batches per epoch): the monitor's summaries must not obey it.
    board = keras.callbacks.TensorBoard(tmp_path, histogram_freq=1, update_freq=5)
    monitor = keras_gates.GateMonitor(x[:4], tmp_path, layers=["forward_gru", "lstm"])
    token_model().fit(
        x,
        y,
        epochs=2,
        batch_size=8,
        validation_data=(x[:8], y[:8]),
        verbose=0,
        callbacks=[board, monitor],
    )
    assert {"train", "validation", "gates"} <= set(os.listdir(tmp_path))
    ours = read_events(tmp_path / "gates")
    assert {tag.split("/")[0] for tag in ours} == {"lstm", "bi"}
    assert not any("backward" in tag for tag in ours)
    assert all(sorted(steps) == [0, 1] for steps in ours.values())
    # Keras's runs get none of ours (what Keras itself writes there is its
    # own, and differs between Keras versions).
    for run in ("train", "validation"):
        theirs = read_events(tmp_path / run)
        assert not any(tag.startswith(("lstm/", "bi/", "gates")) for tag in theirs)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="no jax")
def test_jax_backend(tmp_path):
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        import keras
        import keras_gates

        rng = np.random.default_rng(0)
        x = rng.normal(size=(8, 5, 2)).astype("float32")
        y = rng.normal(size=(8, 1)).astype("float32")

        def fit(callbacks):
            keras.utils.set_random_seed(0)
            model = keras.Sequential([
                keras.Input((None, 2)),
                keras_gates.LSTM(3, dropout=0.2, seed=1, return_sequences=True),
                keras_gates.GRU(3, dropout=0.2, seed=2, name="gru"),
                keras.layers.Dense(1),
            ])
            model.compile(optimizer="adam", loss="mse")
            model.fit(x, y, epochs=2, batch_size=4, verbose=0, callbacks=callbacks)
            return model

        plain = fit([])
        monitored = fit([keras_gates.GateMonitor(x[:3], sys.argv[1], layers="gru")])
        trace = keras_gates.trace_gates(monitored, x[:3], layer="gru")
        print(json.dumps({
            "backend": keras.backend.backend(),
            "same": all(
                np.array_equal(np.array(a), np.array(b))
                for a, b in zip(plain.weights, monitored.weights)
            ),
            "i_mean": float(trace["i"].astype("float64").mean()),
        }))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax" and result["same"]
    events = read_events(tmp_path / "gates")
    assert sorted(events["gru/i/mean"]) == [0, 1]
    np.testing.assert_allclose(events["gru/i/mean"][1], result["i_mean"], rtol=1e-5)
    np.testing.assert_allclose(
        events["gru/f/mean"][1], 1.0 - result["i_mean"], rtol=1e-5
    )
