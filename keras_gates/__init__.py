"""keras_gates: the LSTM and GRU of the "selective read, write and forget"
lectures as complete Keras 3 layers that you can look inside.

Public names (the README's API tour; the equations and the weight layout are in
`keras_gates.lstm.LSTMCell` and `keras_gates.gru.GRUCell`, and in the README's
maths section):

    keras_gates.LSTMCell, keras_gates.GRUCell   cells for keras.layers.RNN
    keras_gates.LSTM, keras_gates.GRU           drop-ins for keras.layers.LSTM/GRU
    keras_gates.from_keras, keras_gates.to_keras
                                                weight conversion to/from the built-ins
    keras_gates.trace_gates, keras_gates.gate_sequences, keras_gates.gradient_flow
                                                gates at every step; vanishing gradients
    keras_gates.gate_statistics                 gates per token class over a data set,
    keras_gates.GateStatistics                  with confidence intervals (its result)
    keras_gates.export_for_serving              a verified TF Serving version folder
    keras_gates.plots                           matplotlib pictures of the above
    keras_gates.GateView                        text coloured by its gates, in HTML
                                                (a notebook shows it inline)
    keras_gates.ExactBackupAndRestore           exact resume, mid-epoch included
    keras_gates.GateMonitor                     the gates in TensorBoard while training

Importing the package registers every class with Keras's serialization, so a
`.keras` file that uses them loads with plain `keras.saving.load_model`.

One exception: in the `keras-gates` command (pip's console script for
`keras_gates.cli:main`) the imports wait for the first public name used, so
that `keras-gates --help` answers without importing TensorFlow; the
subcommands import the whole package before they run (`keras_gates.cli`).
"""

import importlib
import os
import sys

# TensorFlow's C++ start-up chatter (oneDNN notes, CUDA probing) buries the
# command line's output; a level the user set is kept. On TensorFlow 2.21 this
# no longer stops the lines logged before absl is initialized: the console
# script silences those itself (keras_gates.cli).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.2.0"

# public name -> the module that defines it; the layers first, because the
# modules after them use them
_DEFINED_IN = {
    "LSTM": "keras_gates.lstm",
    "LSTMCell": "keras_gates.lstm",
    "GRU": "keras_gates.gru",
    "GRUCell": "keras_gates.gru",
    "from_keras": "keras_gates.convert",
    "to_keras": "keras_gates.convert",
    "gate_sequences": "keras_gates.introspection",
    "gradient_flow": "keras_gates.introspection",
    "trace_gates": "keras_gates.introspection",
    "ExactBackupAndRestore": "keras_gates.resume",
    "GateStatistics": "keras_gates.statistics",
    "gate_statistics": "keras_gates.statistics",
    "GateMonitor": "keras_gates.monitor",
    "export_for_serving": "keras_gates.serving",
    "GateView": "keras_gates.gate_view",
}

__all__ = sorted(_DEFINED_IN)

_importing = False


def _load(name: str):
    """Public name `name`, imported from its module and kept here."""
    value = getattr(importlib.import_module(_DEFINED_IN[name]), name)
    globals()[name] = value
    return value


def import_all() -> None:
    """Import every public name, registering the classes with Keras.

    What `import keras_gates` does, except in the console script, which calls
    this before a subcommand runs. Calling it again, or from a module it is
    importing, does nothing.
    """
    global _importing
    if _importing:
        return
    _importing = True
    try:
        for name in _DEFINED_IN:
            _load(name)
    finally:
        _importing = False


def __getattr__(name: str):
    """The console command's deferred imports: the first name used imports all
    (a public name, or a submodule that the public modules import)."""
    if name in _DEFINED_IN:
        value = _load(name)
        import_all()
        return value
    if not name.startswith("__"):
        import_all()
        if name in globals():
            return globals()[name]
    raise AttributeError(f"module 'keras_gates' has no attribute {name!r}")


def _in_console_script() -> bool:
    """Whether this process is the `keras-gates` command.

    pip's console script is a file named for the command (`keras-gates`;
    `keras-gates-script.py` beside Windows' `keras-gates.exe`) that imports
    `keras_gates.cli`, so this package's `__init__` runs with the script as
    `sys.argv[0]`. Any other process, the command's child processes
    included, imports the package as usual.
    """
    if not sys.argv or not sys.argv[0]:
        return False
    name = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    return name in ("keras-gates", "keras-gates-script")


if not _in_console_script():
    import_all()
