"""One test per private Keras touch (keras_gates/keras_internals.py).

Each test states, on the Keras that is installed, the assumption its touch
makes; a failure names the touch and the Keras version. CI runs this file on
both ends of the declared range (.ci/run). The last test proves that each
test fails, naming its touch, when Keras removes or renames the private name
(simulated with monkeypatch).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_gates import keras_internals as internals

MARKER = "DropoutRNNCell"
NODES = "Layer._inbound_nodes / Node.arguments"
INITIAL_EPOCH = "Model._initial_epoch"
COUNT_BATCH = "BackupAndRestore._should_save_on_batch"
BACKUP_EPOCH = "BackupAndRestore._current_epoch"
PROGRESS_FILE = "BackupAndRestore's training_metadata.json"
FIT_FRAME = "the running fit's frame (running_fit_arguments)"
LSTM_KERNEL = "keras.src.backend.<backend>.rnn.lstm (via keras.layers.LSTM's module)"


@contextlib.contextmanager
def touch(name: str):
    """Any failure inside becomes one that names the touch and the Keras version."""
    try:
        yield
    except Exception as error:  # AssertionError and Keras's own errors alike
        pytest.fail(
            f"Keras {keras.__version__} no longer does what keras_gates' private "
            f"Keras touch {name} assumes (keras_gates/keras_internals.py): "
            f"{type(error).__name__}: {error}"
        )


def small_model() -> keras.Model:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    return model


def test_dropout_rnn_cell_marker():
    """keras.layers.RNN draws a marked cell's masks before its loop and resets
    them after, for a cell alone and for stacked cells."""
    with touch(MARKER):
        marker = internals.dropout_cell_marker()
        assert marker, "keras.layers.LSTMCell's MRO has no class named DropoutRNNCell"
        events = []

        class Probe(*marker, keras.layers.Layer):
            state_size = 2
            dropout = recurrent_dropout = 0.5

            def get_dropout_mask(self, step_input):
                events.append((self.name, "input mask"))

            def get_recurrent_dropout_mask(self, step_state):
                events.append((self.name, "state mask"))

            def reset_dropout_mask(self):
                events.append((self.name, "reset input mask"))

            def reset_recurrent_dropout_mask(self):
                events.append((self.name, "reset state mask"))

            def call(self, inputs, states, training=False):
                events.append((self.name, "step"))
                return inputs, [inputs]

        x = np.zeros((1, 3, 2), "float32")
        keras.layers.RNN(Probe(name="alone"))(x, training=True)
        kinds = [kind for _, kind in events]
        assert kinds[:2] == ["input mask", "state mask"], kinds
        assert kinds[-2:] == ["reset input mask", "reset state mask"], kinds
        assert "step" in kinds[2:-2], kinds

        events.clear()
        keras.layers.RNN([Probe(name="first"), Probe(name="second")])(x, training=True)
        for name in ("first", "second"):
            kinds = [kind for who, kind in events if who == name and kind != "step"]
            assert kinds == [
                "input mask",
                "state mask",
                "reset input mask",
                "reset state mask",
            ], (name, events)


def test_inbound_nodes_keep_each_argument():
    """A layer called on KerasTensors keeps which tensor went to which argument."""
    with touch(NODES):
        sequences = keras.Input((3, 2))
        state = keras.Input((4,))
        mask = keras.Input((3,), dtype="bool")
        layer = keras.layers.SimpleRNN(4)
        assert internals.symbolic_call_arguments(layer) is None
        layer(sequences, initial_state=[state], mask=mask)
        args, kwargs = internals.symbolic_call_arguments(layer)
        assert args[0] is sequences, args
        assert kwargs["initial_state"][0] is state, kwargs
        assert kwargs["mask"] is mask, kwargs


def test_keras_mask_is_the_mask_a_layer_receives():
    """A masked symbolic tensor carries the mask the next layer is called with."""
    x = keras.Input((None, 3))
    masked = keras.layers.Masking()(x)
    assert internals.keras_mask(x) is None
    mask = internals.keras_mask(masked)
    assert mask is not None and tuple(mask.shape) == (None, None)
    layer = keras.layers.SimpleRNN(2)
    layer(masked)
    _, kwargs = internals.symbolic_call_arguments(layer)
    assert kwargs["mask"] is mask, kwargs


def test_initial_epoch_set_in_on_train_begin_moves_fit():
    """fit reads model._initial_epoch after on_train_begin, over its argument."""
    with touch(INITIAL_EPOCH):
        model = small_model()
        epochs = []

        class StartAtTwo(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                internals.set_initial_epoch(self.model, 2)

            def on_epoch_begin(self, epoch, logs=None):
                epochs.append(epoch)

        x, y = np.zeros((4, 2), "float32"), np.zeros((4, 1), "float32")
        model.fit(x, y, epochs=4, verbose=0, callbacks=[StartAtTwo()])
        assert epochs == [2, 3], epochs


def test_should_save_on_batch_counts_towards_save_freq(tmp_path):
    """Counting a batch through it saves nothing but brings the next save nearer."""
    with touch(COUNT_BATCH):
        counted = keras.callbacks.BackupAndRestore(str(tmp_path / "a"), save_freq=2)
        counted.set_model(small_model())
        internals.count_batch_without_saving(counted, 0)
        assert not os.path.exists(counted.backup_dir), "counting saved something"
        counted.on_train_batch_end(1)
        assert os.listdir(counted.backup_dir), "save_freq=2: no save after 2 batches"

        control = keras.callbacks.BackupAndRestore(str(tmp_path / "b"), save_freq=2)
        control.set_model(small_model())
        control.on_train_batch_end(1)
        assert not os.path.exists(control.backup_dir), "one batch was enough to save"


def test_current_epoch_is_the_epoch_a_save_records(tmp_path):
    """The epoch written into the backup's progress is `_current_epoch`."""
    with touch(BACKUP_EPOCH):
        callback = keras.callbacks.BackupAndRestore(str(tmp_path), save_freq=1)
        callback.set_model(small_model())
        internals.set_backup_epoch(callback, 5)
        callback.on_train_batch_end(0)
        path = internals.backup_progress_path(str(tmp_path))
        with open(path) as file:
            assert json.load(file)["epoch"] == 5


def test_training_metadata_holds_epoch_and_last_batch(tmp_path):
    """training_metadata.json: the epoch in progress and its last batch done."""
    with touch(PROGRESS_FILE):
        callback = keras.callbacks.BackupAndRestore(str(tmp_path), save_freq=2)
        callback.set_model(small_model())
        assert internals.read_backup_progress(str(tmp_path)) is None
        callback.on_epoch_end(0)  # epoch 1 is next; an integer save_freq saves not
        for batch in range(4):  # saves after batches 1 and 3
            callback.on_train_batch_end(batch)
        progress = internals.read_backup_progress(str(tmp_path))
        assert progress == (1, 3), f"(epoch, last batch) read back: {progress}"


def test_fit_frame_holds_the_callers_data_arguments():
    """While callbacks run, fit's frame holds the x, batch_size and shuffle passed."""
    with touch(FIT_FRAME):
        model = small_model()
        seen = []

        class Record(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                seen.append(internals.running_fit_arguments(self.model))

        x, y = np.zeros((6, 2), "float32"), np.zeros((6, 1), "float32")
        model.fit(x, y, batch_size=3, shuffle=False, verbose=0, callbacks=[Record()])
        assert seen[0] is not None, "no frame of a function named fit with self=model"
        assert seen[0]["batch_size"] == 3 and seen[0]["shuffle"] is False, seen[0]
        assert seen[0]["steps_per_epoch"] is None, seen[0]
        assert np.shape(seen[0]["x"]) == (6, 2), seen[0]
        assert internals.running_fit_arguments(model) is None  # outside fit


# How a Keras release could take each touch away, simulated.
def _remove_dropout_cell(monkeypatch):
    # An LSTMCell that no longer inherits DropoutRNNCell.
    bare = type("LSTMCell", (keras.layers.Layer,), {})
    monkeypatch.setattr(keras.layers, "LSTMCell", bare)


def _rename_inbound_nodes(monkeypatch):
    call = keras.layers.Layer.__call__

    def call_then_rename(self, *args, **kwargs):
        outputs = call(self, *args, **kwargs)
        self.__dict__["_renamed_nodes"] = self.__dict__.pop("_inbound_nodes", [])
        return outputs

    monkeypatch.setattr(keras.layers.Layer, "__call__", call_then_rename)


def _rename_initial_epoch(monkeypatch):
    # A class-level data descriptor wins over the instance attribute: Keras's
    # own writes go nowhere and fit reads None, as if it read another name.
    ignored = property(lambda self: None, lambda self, value: None)
    monkeypatch.setattr(keras.Model, "_initial_epoch", ignored, raising=False)


def _remove_should_save_on_batch(monkeypatch):
    monkeypatch.delattr(keras.callbacks.BackupAndRestore, "_should_save_on_batch")


def _rename_current_epoch(monkeypatch):
    ignored = property(lambda self: 0, lambda self, value: None)
    monkeypatch.setattr(
        keras.callbacks.BackupAndRestore, "_current_epoch", ignored, raising=False
    )


def _rename_progress_file(monkeypatch):
    init = keras.callbacks.BackupAndRestore.__init__

    def init_then_rename(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._training_metadata_path = os.path.join(self.backup_dir, "progress.json")

    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "__init__", init_then_rename)


def _rename_fit(monkeypatch):
    fit = inspect.unwrap(type(small_model()).fit)
    monkeypatch.setattr(fit, "__code__", fit.__code__.replace(co_name="run_fit"))


@pytest.mark.jax_parity
def test_keras_lstm_kernel_takes_the_cells_variables_and_refuses_without_a_gpu():
    """The touch's assumptions, on the backend in use (tests/test_backends.py
    runs this again under JAX): Keras's fused LSTM takes the arguments
    keras.layers.LSTM.inner_loop passes, and raises NotImplementedError where
    cuDNN cannot run (this machine has no GPU), so the layer falls back."""
    with touch(LSTM_KERNEL):
        kernel = internals.keras_lstm_kernel()
        parameters = list(inspect.signature(kernel).parameters)
        assert parameters[:12] == list(internals.KERAS_LSTM_ARGUMENTS), parameters
        cell = keras.layers.LSTM(3)
        x = np.zeros((2, 4, 5), "float32")
        cell(x)  # builds
        h0 = np.zeros((2, 3), "float32")
        with pytest.raises(NotImplementedError):
            kernel(
                x,
                h0,
                h0,
                None,
                kernel=cell.cell.kernel,
                recurrent_kernel=cell.cell.recurrent_kernel,
                bias=cell.cell.bias,
                activation=cell.cell.activation,
                recurrent_activation=cell.cell.recurrent_activation,
                return_sequences=True,
                go_backwards=False,
                unroll=False,
            )


def _rename_lstm_kernel(monkeypatch):
    import sys

    module = sys.modules[keras.layers.LSTM.__module__]
    monkeypatch.setattr(module.backend, "lstm", lambda inputs, h, c, mask: None)


SABOTAGE = {
    MARKER: (_remove_dropout_cell, test_dropout_rnn_cell_marker),
    NODES: (_rename_inbound_nodes, test_inbound_nodes_keep_each_argument),
    INITIAL_EPOCH: (
        _rename_initial_epoch,
        test_initial_epoch_set_in_on_train_begin_moves_fit,
    ),
    COUNT_BATCH: (
        _remove_should_save_on_batch,
        test_should_save_on_batch_counts_towards_save_freq,
    ),
    BACKUP_EPOCH: (
        _rename_current_epoch,
        test_current_epoch_is_the_epoch_a_save_records,
    ),
    PROGRESS_FILE: (
        _rename_progress_file,
        test_training_metadata_holds_epoch_and_last_batch,
    ),
    FIT_FRAME: (_rename_fit, test_fit_frame_holds_the_callers_data_arguments),
    LSTM_KERNEL: (
        _rename_lstm_kernel,
        test_keras_lstm_kernel_takes_the_cells_variables_and_refuses_without_a_gpu,
    ),
}


@pytest.mark.parametrize("name", sorted(SABOTAGE))
def test_each_touch_test_fails_naming_its_touch(name, monkeypatch, tmp_path):
    sabotage, test = SABOTAGE[name]
    arguments = [tmp_path] if "tmp_path" in inspect.signature(test).parameters else []
    with monkeypatch.context() as patch:
        sabotage(patch)
        with pytest.raises(pytest.fail.Exception) as failure:
            test(*arguments)
    message = str(failure.value)
    assert name in message and f"Keras {keras.__version__}" in message, message


def test_every_touch_has_a_test():
    """Each public function of keras_internals is covered by a sabotaged test."""
    touches = {
        name
        for name, value in vars(internals).items()
        if inspect.isfunction(value)
        and value.__module__ == internals.__name__
        and not name.startswith("_")
    }
    covered = {
        "dropout_cell_marker",
        "symbolic_call_arguments",
        "keras_mask",
        "set_initial_epoch",
        "count_batch_without_saving",
        "set_backup_epoch",
        "backup_progress_path",
        "read_backup_progress",
        "running_fit_arguments",
        "in_xla_compilation",
        "keras_lstm_kernel",
    }
    assert touches == covered


def test_ci_runs_the_touches_on_the_oldest_declared_stack():
    """.ci/run's second step pins setup.cfg's lower bounds and runs this file."""
    root = Path(__file__).parent.parent
    setup = (root / "setup.cfg").read_text()
    ci = (root / ".ci" / "run").read_text()
    for package in ("tensorflow", "keras"):
        lowest = re.search(rf"^\s*{package}>=(\d+\.\d+),", setup, re.MULTILINE)[1]
        assert f'"{package}=={lowest}.*"' in ci, (package, lowest)
    assert "tests/test_keras_internals.py" in ci


def test_in_xla_compilation_tells_a_jit_trace_from_a_plain_one():
    """The touch's assumption: TensorFlow offers the question, and answers True
    only while a jit_compile=True function traces."""
    import tensorflow as tf

    seen = {}

    def probe(name):
        def fn(x):
            seen[name] = internals.in_xla_compilation()
            return x + 1.0

        return fn

    tf.function(probe("plain"))(tf.constant(1.0))
    tf.function(probe("xla"), jit_compile=True)(tf.constant(1.0))
    assert seen == {"plain": False, "xla": True}, (
        f"TensorFlow {tf.__version__} no longer does what keras_gates' private "
        f"touch in_xla_compilation assumes: {seen}"
    )
    assert internals.in_xla_compilation() is False  # eager
