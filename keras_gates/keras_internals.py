"""Every use of private Keras in keras_gates, in one place.

Keras's public API covers almost all of keras_gates. Where it does not, the
package reaches into Keras's internals here and nowhere else (tests/test_style.py
keeps `keras.src` imports and private attribute access out of the other modules).
Each function below is one touch; its docstring says

- What: the private name it uses;
- Why: the job, and why no public API does it (checked against Keras 3.15);
- Since: the Keras versions it holds for;
- Without it: what breaks, and how loudly.

tests/test_keras_internals.py states each touch's assumption as a test of its
own, run on both ends of the declared range (TF 2.20 + Keras 3.13, TF 2.21 +
Keras 3.15: `.ci/run`). A Keras release that changes one fails there, naming the
touch and the Keras version, not in some test downstream. The same file proves
that each test fails when its touch is removed or renamed (monkeypatched).

Where a touch finds its private name gone at run time, it raises
`KerasInternalsChanged`, naming the touch and the Keras version, rather than
carrying on with a wrong answer. The one exception is `dropout_cell_marker`,
which runs at import and has a safe fallback (documented there).

Touches dropped because a public API covers them: none in Keras 3.13-3.15. For
each touch the public candidate and why it falls short are in its docstring.

TensorFlow: one touch, `in_xla_compilation` (TensorFlow's exported internal
namespace `tf.__internal__`), here like the Keras ones. `keras_gates.serving`
loads the SavedModel with TensorFlow's public C API from the shared libraries
the `tensorflow` wheel ships (`serving/capi.py`); that depends on the wheel's
file layout, not on private Python names, and the serving tests, run on both
stacks, check it.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from typing import Any

import keras

# The file keras.callbacks.BackupAndRestore writes its progress into, beside
# `latest.weights.h5` in the backup folder.
BACKUP_PROGRESS_FILE = "training_metadata.json"

# The `fit` arguments that decide which samples make up batch k.
FIT_DATA_ARGUMENTS = ("x", "batch_size", "shuffle", "steps_per_epoch")


class KerasInternalsChanged(RuntimeError):
    """A private Keras name keras_gates relies on is gone or works differently."""


def _changed(touch: str, detail: str) -> KerasInternalsChanged:
    return KerasInternalsChanged(
        f"keras_gates' private Keras touch {touch} failed with Keras "
        f"{keras.__version__}: {detail}. keras_gates is tested with Keras "
        f"3.13-3.15 (see keras_gates/keras_internals.py and "
        f"tests/test_keras_internals.py)."
    )


def dropout_cell_marker() -> tuple[type, ...]:
    """Keras's private ``DropoutRNNCell`` class, found through ``LSTMCell``.

    What: the class named ``DropoutRNNCell`` in the MRO of the public
    ``keras.layers.LSTMCell`` (defined in ``keras.src.layers.rnn``, which the
    package never imports). Returned as a 1-tuple for a base-class list, or
    ``()`` if it is gone.

    Why: ``keras.layers.RNN`` draws a cell's dropout masks once per sequence
    (``get_dropout_mask`` before its loop, ``reset_dropout_mask`` after) only
    for cells that are instances of ``DropoutRNNCell``, also inside
    ``StackedRNNCells``. keras_gates' cells inherit it as a marker (their own
    mask methods come first in the MRO). Keras exports no public base class or
    hook for this.

    Since: Keras 3.0 (keras-core); the same class and the same two
    ``isinstance`` checks in ``RNN`` in 3.13.2 and 3.15.1.

    Without it: keras_gates' own layers still work (``GatedRNN`` prepares and
    resets the masks itself), but a keras_gates cell with dropout in a bare
    ``keras.layers.RNN`` or in stacked cells draws its mask inside the loop
    and keeps it; on TensorFlow the next training call then fails ("<tensor>
    is out of scope and cannot be used here", measured with Keras 3.15 by
    hiding the marker from ``RNN``). So this touch does not fail at import;
    its test (and tests/test_composition.py's stacked-cells test) fails instead.
    """
    for klass in keras.layers.LSTMCell.__mro__:
        if klass.__name__ == "DropoutRNNCell":
            return (klass,)
    return ()


def symbolic_call_arguments(layer: Any) -> tuple[list, dict] | None:
    """The arguments of ``layer``'s first call on symbolic tensors.

    What: ``layer._inbound_nodes[0].arguments`` (a Node's
    ``SymbolicArguments``, with ``.args`` and ``.kwargs``): the KerasTensors the
    layer's ``call`` received in the model's graph (the sequences, and
    ``initial_state`` and ``mask`` when the model passes them). Returns
    ``(args, kwargs)``, or None if the layer was never called on symbolic
    tensors.

    Why: ``trace_gates(model, ..., layer=...)`` feeds the layer what the model
    feeds it, the initial state included (an encoder's final state). The public
    ``layer.input`` is only the flat list of the input tensors: it cannot tell
    an initial state from a mask, nor which state is which.

    Since: Keras 3.0 (Node and SymbolicArguments came with the functional API
    of keras-core); the same in 3.13.2 and 3.15.1.

    Without it: raises ``KerasInternalsChanged``; ``trace_gates`` on a model
    would otherwise start from zero states and return other gates silently.
    """
    touch = "Layer._inbound_nodes / Node.arguments"
    if not hasattr(layer, "_inbound_nodes"):
        raise _changed(touch, f"layer '{layer.name}' has no `_inbound_nodes`")
    nodes = layer._inbound_nodes
    if not nodes:
        return None
    arguments = getattr(nodes[0], "arguments", None)
    if arguments is None or not hasattr(arguments, "kwargs"):
        raise _changed(
            touch, "a Node has no `arguments` with `args` and `kwargs` any more"
        )
    return list(arguments.args), dict(arguments.kwargs)


def keras_mask(tensor: Any) -> Any:
    """The mask Keras attached to a (symbolic) tensor, or None.

    What: ``tensor._keras_mask``, the attribute where a layer's
    ``compute_mask`` result is kept on its output (what Keras's private
    ``backend.get_keras_mask`` reads).

    Why: ``serving.analysis`` tells a model whose layers form one path from
    one with a branch. A layer called on a masked tensor (after ``Masking`` or
    ``Embedding(mask_zero=True)``) receives that tensor's mask as its ``mask``
    argument, and Keras lists it in ``layer.input`` beside the tensor; only
    by comparing it with the previous output's own mask can the path check
    tell it from a second input (a branch). Keras exports no public getter.

    Since: Keras 3.0 (keras-core); the same attribute in 3.13.2 and 3.15.1.

    Without it: returns None, and a functional ``Input -> Masking -> GRU``
    model is judged not one path: its ``step`` and ``gates`` signatures are
    left out with the reason naming the layer that receives the mask.
    """
    return getattr(tensor, "_keras_mask", None)


def set_initial_epoch(model: keras.Model, epoch: int) -> None:
    """Make the running ``fit`` start at ``epoch`` (from ``on_train_begin``).

    What: writes ``model._initial_epoch``, which ``fit`` reads once, right after
    the callbacks' ``on_train_begin``, in place of its ``initial_epoch``
    argument. Keras's own ``BackupAndRestore`` resumes through it.

    Why: ``ExactBackupAndRestore`` resumes a backup taken after an epoch's last
    batch at the next epoch, instead of replaying and undoing a whole epoch.
    A callback has no public way to move the first epoch of the ``fit`` that
    is running (``fit(initial_epoch=...)`` is the caller's).

    Since: Keras 3's ``Trainer`` (the TensorFlow, JAX and torch trainers read
    it); the same in 3.13.2 and 3.15.1.

    Without it: raises ``KerasInternalsChanged``; setting a name ``fit`` no
    longer reads would replay the finished epoch on top of its own weights.
    """
    if "_initial_epoch" not in vars(model):
        raise _changed(
            "Model._initial_epoch",
            f"model '{model.name}' has no `_initial_epoch` attribute",
        )
    model._initial_epoch = int(epoch)


def count_batch_without_saving(
    callback: keras.callbacks.BackupAndRestore, batch: int
) -> None:
    """Move ``BackupAndRestore``'s batch counters past ``batch``, saving nothing.

    What: calls ``callback._should_save_on_batch(batch)``, the private method
    ``BackupAndRestore.on_train_batch_end`` asks whether to save, and ignores
    its answer.

    Why: ``ExactBackupAndRestore`` runs and undoes the batches the backup
    already holds. Those batches must count towards ``save_freq`` (else every
    later save comes late), but nothing may be saved after them: the weights
    are back at the backup's. Keras has no public counter.

    Since: Keras 3's ``BackupAndRestore`` with an integer ``save_freq``; the
    same in 3.13.2 and 3.15.1.

    Without it: raises ``KerasInternalsChanged``; skipping the count would
    shift every later mid-epoch save of the resumed run.
    """
    count = getattr(callback, "_should_save_on_batch", None)
    if count is None:
        raise _changed(
            "BackupAndRestore._should_save_on_batch",
            "the callback has no `_should_save_on_batch` method",
        )
    count(batch)


def set_backup_epoch(callback: keras.callbacks.BackupAndRestore, epoch: int) -> None:
    """Tell ``BackupAndRestore`` which epoch is running, for its next save.

    What: writes ``callback._current_epoch``, the epoch ``BackupAndRestore``
    writes into ``training_metadata.json`` at each save.

    Why: Keras's counter starts at 0 in every ``fit`` and moves only at an
    epoch's end, so after a resume at epoch 3 a second interruption would be
    recorded as epoch 0 (the resumed run would then start over). A callback is
    told the epoch (``on_epoch_begin``) but has no public way to hand it on.

    Since: Keras 3's ``BackupAndRestore``; the same in 3.13.2 and 3.15.1.

    Without it: raises ``KerasInternalsChanged``; a Keras that renamed the
    counter would silently record wrong epochs again.
    """
    if "_current_epoch" not in vars(callback):
        raise _changed(
            "BackupAndRestore._current_epoch",
            "the callback has no `_current_epoch` attribute",
        )
    callback._current_epoch = int(epoch)


def backup_progress_path(backup_dir: str) -> str:
    """Where ``BackupAndRestore`` records its progress (see `read_backup_progress`)."""
    return os.path.join(backup_dir, BACKUP_PROGRESS_FILE)


def read_backup_progress(backup_dir: str) -> tuple[int, int] | None:
    """``(epoch, batch)`` of the backup in ``backup_dir``, or None if there is none.

    What: reads ``training_metadata.json``, a file whose name and keys Keras
    does not document: ``{"epoch": e, "batch": b}``, written by
    ``BackupAndRestore`` at each save; with an integer ``save_freq`` the backup
    holds batches ``0..b`` of epoch ``e``.

    Why: ``ExactBackupAndRestore`` must know how many batches of the
    interrupted epoch the backup already holds, to run and undo exactly those.
    ``BackupAndRestore`` keeps it in no public attribute.

    Since: Keras 3's ``BackupAndRestore``; the same in 3.13.2 and 3.15.1.

    Without it: raises ``KerasInternalsChanged`` when the file exists without
    those keys; a missing file means "nothing to resume", as for Keras.
    """
    path = backup_progress_path(backup_dir)
    if not os.path.exists(path):
        return None
    with open(path) as file:
        metadata = json.load(file)
    if not isinstance(metadata, dict) or not {"epoch", "batch"} <= set(metadata):
        raise _changed(
            f"BackupAndRestore's {BACKUP_PROGRESS_FILE}",
            f"{path} holds {metadata!r}, not the keys 'epoch' and 'batch'",
        )
    return int(metadata["epoch"]), int(metadata["batch"])


def running_fit_arguments(model: keras.Model) -> dict[str, Any] | None:
    """The data arguments of the ``model.fit`` call that is running, or None.

    What: reads the frame of Keras's ``fit`` on the call stack (the innermost
    frame of a function named ``fit`` whose ``self`` is ``model``) and returns
    its locals ``x``, ``batch_size``, ``shuffle`` and ``steps_per_epoch``.
    These are public argument names of ``fit``; what is private is that they
    still hold the caller's values while the callbacks run.

    Why: ``ExactBackupAndRestore`` records how ``fit`` cuts the data into
    batches and refuses a resume that cuts it differently. Keras hands a
    callback only ``params`` (epochs, steps, verbose): the batch size and
    shuffle reach no callback.

    Since: Keras 3.0 (``fit`` has taken these arguments, in every backend's
    trainer, since keras-core); the same in 3.13.2 and 3.15.1.

    Without it: None, as outside ``fit`` (a custom training loop), so the
    record holds None for them and a changed batch size is not detected; the
    touch's test fails instead.
    """
    frame = inspect.currentframe()
    try:
        while frame is not None:
            if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is model:
                return {name: frame.f_locals.get(name) for name in FIT_DATA_ARGUMENTS}
            frame = frame.f_back
        return None
    finally:
        del frame


def in_xla_compilation() -> bool | None:
    """Whether TensorFlow is tracing inside an XLA-compiled function now.

    What: ``tf.__internal__.get_enclosing_xla_context()``, TensorFlow's exported
    internal API (not in its public docs): the XLAControlFlowContext that
    ``tf.function(jit_compile=True)`` enters while it traces (also under
    ``model.compile(jit_compile=True)`` and an XLA-compiled serving export).

    Why: the sequence kernels pick the loop form that XLA compiles best (the
    plain per-step products) and keep the graph-executor forms elsewhere
    (measured: the graph forms are 1.1-1.65x slower under XLA). No public API
    says whether the current trace will be XLA-compiled; TensorFlow's own
    losses ask the same question this way.

    Since: TensorFlow 2.x (present in 2.20 and 2.21).

    Without it: None (the function is gone): the kernels take a graph form,
    correct but slower under XLA; tests/test_keras_internals.py fails, naming
    this touch.

    Returns:
        True inside an XLA-compiled trace, False outside, None if TensorFlow no
        longer offers the question.
    """
    import tensorflow as tf

    find = getattr(getattr(tf, "__internal__", None), "get_enclosing_xla_context", None)
    if find is None:
        return None
    return find() is not None


# The arguments of Keras's per-backend fused LSTM, in order (keras_lstm_kernel).
KERAS_LSTM_ARGUMENTS = (
    "inputs",
    "initial_state_h",
    "initial_state_c",
    "mask",
    "kernel",
    "recurrent_kernel",
    "bias",
    "activation",
    "recurrent_activation",
    "return_sequences",
    "go_backwards",
    "unroll",
)


def keras_lstm_kernel() -> Any:
    """Keras's fused LSTM for the running backend: cuDNN where it can run.

    What: the function ``lstm`` of the backend that ``keras.layers.LSTM``'s own
    module imported as ``backend`` (``keras.src.backend.<name>.rnn.lstm``),
    reached through ``sys.modules[keras.layers.LSTM.__module__]`` (no
    ``keras.src`` import). It takes ``KERAS_LSTM_ARGUMENTS`` and returns
    ``(last_output, outputs, [h, c])``; it raises ``NotImplementedError``
    where cuDNN cannot run (no GPU, options cuDNN lacks; on JAX also any
    mask) and the caller runs another loop.

    Why: on a GPU ``keras.layers.LSTM.inner_loop`` calls it with the cell's
    variables, and ``keras_gates.LSTM`` stores exactly those variables in the
    same block order [i | f | c | o], so the same call computes our layer.
    The public alternative, TensorFlow's ``tf.raw_ops.CudnnRNNV3``, covers one
    backend only and would mean rewriting Keras's weight packing (transposed
    blocks, zero input biases, MIOpen's order on ROCm, three reversals for
    ``go_backwards``); JAX's cuDNN LSTM is in ``jax.experimental``. Calling
    Keras's function keeps the result the built-in's by construction.

    Since: Keras 3.0 for TensorFlow (the same signature in 3.13.2 and 3.15.1);
    Keras 3.15 added the JAX and torch cuDNN paths (before, their ``lstm``
    always raised ``NotImplementedError``, which the layers treat as "no cuDNN
    here").

    Without it: raises ``KerasInternalsChanged`` (only called where a GPU is
    there: ``keras_gates.cudnn``); the tests in tests/test_keras_internals.py
    fail, naming this touch.
    """
    touch = "keras.src.backend.<backend>.rnn.lstm (via keras.layers.LSTM's module)"
    module = sys.modules.get(keras.layers.LSTM.__module__)
    kernel = getattr(getattr(module, "backend", None), "lstm", None)
    if kernel is None:
        raise _changed(touch, "keras.layers.LSTM's module has no `backend.lstm`")
    parameters = tuple(inspect.signature(kernel).parameters)
    if parameters[: len(KERAS_LSTM_ARGUMENTS)] != KERAS_LSTM_ARGUMENTS:
        raise _changed(touch, f"its arguments are {parameters}")
    return kernel
