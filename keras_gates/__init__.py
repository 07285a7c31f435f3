"""keras_gates: the LSTM and GRU of the "selective read, write and forget"
lectures as complete Keras 3 layers that you can look inside.

Public names (SPEC §2):

    keras_gates.LSTMCell, keras_gates.GRUCell   cells for keras.layers.RNN
    keras_gates.LSTM, keras_gates.GRU           drop-ins for keras.layers.LSTM/GRU
    keras_gates.from_keras, keras_gates.to_keras
                                                weight conversion to/from the built-ins
    keras_gates.trace_gates, keras_gates.gate_sequences, keras_gates.gradient_flow
                                                gates at every step; vanishing gradients
    keras_gates.gate_statistics                 gates per token class over a data set,
                                                with confidence intervals
    keras_gates.export_for_serving              a verified TF Serving version folder
    keras_gates.plots                           matplotlib pictures of the above
    keras_gates.GateView                        text coloured by its gates, in HTML
                                                (a notebook shows it inline)
    keras_gates.ExactBackupAndRestore           exact resume, mid-epoch included
    keras_gates.GateMonitor                     the gates in TensorBoard while training

Importing the package registers every class with Keras's serialization, so a
`.keras` file that uses them loads with plain `keras.saving.load_model`.
"""

import os

# TensorFlow's C++ start-up chatter (oneDNN notes, CUDA probing) buries the
# command line's output; a level the user set is kept.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_gates.callbacks import ExactBackupAndRestore
from keras_gates.convert import from_keras, to_keras
from keras_gates.gate_view import GateView
from keras_gates.gru import GRU, GRUCell
from keras_gates.introspection import gate_sequences, gradient_flow, trace_gates
from keras_gates.lstm import LSTM, LSTMCell
from keras_gates.monitor import GateMonitor
from keras_gates.serving import export_for_serving
from keras_gates.statistics import GateStatistics, gate_statistics

__version__ = "0.1.0"

__all__ = [
    "ExactBackupAndRestore",
    "GRU",
    "GRUCell",
    "GateMonitor",
    "GateStatistics",
    "GateView",
    "LSTM",
    "LSTMCell",
    "export_for_serving",
    "from_keras",
    "gate_sequences",
    "gate_statistics",
    "gradient_flow",
    "to_keras",
    "trace_gates",
]
