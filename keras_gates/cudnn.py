"""When ``keras_gates.LSTM`` runs cuDNN, and how.

The LSTM stores exactly ``keras.layers.LSTM``'s variables, in Keras's block
order [i | f | c | o] (``keras_gates/lstm.py``), and computes the same model,
so the kernel Keras calls on a GPU (cuDNN's LSTM, behind Keras's per-backend
``lstm``: ``keras_internals.keras_lstm_kernel``) computes this layer too. The
GRU has no such kernel: cuDNN's GRU applies the reset gate after its W
product, and this package's GRU (``keras.layers.GRU(reset_after=False)``'s
model) before it.

A layer runs cuDNN when all of these hold, as ``keras.layers.LSTM`` decides:

- its options allow it (``blocker``): ``activation`` tanh,
  ``recurrent_activation`` sigmoid, ``use_bias``, no ``recurrent_dropout``,
  no ``unroll``, and ours: ``forget_gate=True`` (cuDNN has no LSTM without
  f_t) and a cell whose ``call`` is the package's (a subclass with its own
  equations runs them);
- the running loop may hold a cuDNN op (``loop_blocker``): a GPU is there,
  the trace is not being compiled by TensorFlow's XLA (cuDNN ops are not XLA
  ops: ``tf.function(jit_compile=True)`` runs the compiled form of
  ``keras_gates.kernels``), and the trace is not one that must run anywhere
  (``portable()``: every serving export, so that a CPU-only TF Serving can
  load a model exported on a GPU);
- the mask, if any, is a right padding with at least one step per example
  (``mask_allows``). With ``use_cudnn="auto"`` another mask runs the package's
  own kernel, chosen per batch at run time (TensorFlow) or at trace time
  (other backends, whose Keras kernels take no mask); with
  ``use_cudnn=True`` it is an error, as it is for ``keras.layers.LSTM``.

What the layer gives is the same on both paths: outputs of masked steps
repeat the last unmasked output (zeros before the first one), or are zeros
with ``zero_output_for_mask`` (cuDNN writes zeros; ``sequence`` mends them);
input dropout is applied to the whole sequence before the kernel with the
cell's one mask per sequence, drawn as on the other path, so the seed state
advances the same way.

Traces (``keras_gates.trace_gates``, ``GateMonitor``, ``gate_statistics``, the
``gates`` serving signature) never come here: they run the cell step by step
(``cell.call``), which they need to see every gate.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import keras
from keras import ops

from keras_gates import keras_internals

__all__ = [
    "USE_CUDNN_CHOICES",
    "blocker",
    "check_use_cudnn",
    "gpu_available",
    "in_portable",
    "loop_blocker",
    "mask_allows",
    "portable",
    "sequence",
]

# What `use_cudnn` takes, as keras.layers.LSTM.
USE_CUDNN_CHOICES = ("auto", True, False)

_portable = threading.local()
# The functions cuDNN computes, as keras.layers.LSTM accepts them.
TANH = (keras.activations.tanh, keras.ops.tanh)
SIGMOID = (keras.activations.sigmoid, keras.ops.sigmoid)


def check_use_cudnn(value: Any) -> bool | str:
    """``use_cudnn`` validated: ``"auto"``, True or False."""
    if value is True or value is False or (isinstance(value, str) and value == "auto"):
        return value
    raise ValueError(f"`use_cudnn` must be 'auto', True or False; received {value!r}.")


def blocker(
    *,
    activation: Any,
    recurrent_activation: Any,
    use_bias: bool,
    recurrent_dropout: float,
    unroll: bool,
    forget_gate: bool,
    own_equations: bool = True,
) -> str | None:
    """Which option keeps an LSTM with these options off cuDNN, or None.

    A pure function of the options (no device, no backend): the answer is
    the argument to change, as ``use_cudnn=True``'s error names it.
    """
    if not any(activation is tanh for tanh in TANH):
        return f"activation={_name(activation)} (cuDNN computes tanh)"
    if not any(recurrent_activation is sigmoid for sigmoid in SIGMOID):
        return (
            f"recurrent_activation={_name(recurrent_activation)} (cuDNN computes "
            "sigmoid)"
        )
    if not use_bias:
        return "use_bias=False (cuDNN's LSTM has biases)"
    if recurrent_dropout:
        return (
            f"recurrent_dropout={recurrent_dropout} (cuDNN cannot drop h_{{t-1}} "
            "inside its loop)"
        )
    if unroll:
        return "unroll=True (an unrolled loop is a chain of cell calls)"
    if not forget_gate:
        return "forget_gate=False (cuDNN has no LSTM without a forget gate)"
    if not own_equations:
        return "a cell class with its own `call` (cuDNN computes the package's)"
    return None


def _name(function: Any) -> str:
    return repr(getattr(function, "__name__", function))


def gpu_available() -> bool:
    """Whether the running backend sees a GPU (the device cuDNN needs).

    Keras's own device list for the backend in use
    (``keras.distribution.list_devices``), so no other backend's package is
    imported; a backend without it (torch) or without a GPU platform (JAX on
    a CPU raises) counts as none.
    """
    try:
        return bool(keras.distribution.list_devices("gpu"))
    except (RuntimeError, ValueError, NotImplementedError, AttributeError):
        return False


@contextlib.contextmanager
def portable():
    """Within it, every LSTM traces the package's own kernel, never cuDNN.

    For a graph that must run on any device: a serving export made on a GPU
    machine still loads in a CPU-only TF Serving (no ``CudnnRNN*`` op).
    """
    depth = getattr(_portable, "depth", 0)
    _portable.depth = depth + 1
    try:
        yield
    finally:
        _portable.depth = depth


def in_portable() -> bool:
    """Whether the trace now is inside ``portable()`` (it wins over
    ``use_cudnn=True``: an export of such a layer still runs anywhere)."""
    return bool(getattr(_portable, "depth", 0))


def loop_blocker() -> str | None:
    """Why the loop being traced now cannot hold a cuDNN op, or None."""
    if in_portable():
        return "the trace must run on any device (keras_gates.cudnn.portable)"
    if keras.backend.backend() == "tensorflow" and keras_internals.in_xla_compilation():
        return (
            "XLA compiles this trace (jit_compile=True), and cuDNN ops are not XLA ops"
        )
    if not gpu_available():
        return f"the {keras.backend.backend()} backend sees no GPU"
    return None


def mask_allows(mask: Any) -> Any:
    """Whether cuDNN computes this mask: a boolean scalar tensor.

    True when each example's unmasked steps come first and there is at least
    one (a right padding: ``[1, 1, 0]``); False for left padding
    (``[0, 1, 1]``), gaps (``[1, 0, 1]``) or an empty row. Pure, on any
    backend.
    """
    mask = ops.cast(mask, "int32")  # (batch, time)
    lengths = ops.sum(mask, axis=1)  # (batch,)
    steps = ops.arange(ops.shape(mask)[1], dtype="int32")  # (time,)
    right_padded = ops.cast(steps[None, :] < lengths[:, None], "int32")
    return ops.logical_and(ops.all(ops.equal(mask, right_padded)), ops.all(lengths > 0))


def sequence(
    sequences,
    h_0,
    s_0,
    mask,
    kernel,
    recurrent_kernel,
    bias,
    *,
    activation,
    recurrent_activation,
    go_backwards: bool,
    return_sequences: bool,
    zero_output_for_mask: bool,
    fallback,
    required: bool,
):
    """The LSTM over ``sequences`` in Keras's cuDNN kernel.

    Args:
        sequences: (batch, time, features), input dropout already applied.
        h_0, s_0: (batch, units) each.
        mask: None or (batch, time) booleans.
        kernel, recurrent_kernel, bias: the cell's weights (Keras's order).
        fallback: a function of no arguments running the package's kernel,
            for masks cuDNN does not compute (``use_cudnn="auto"``).
        required: ``use_cudnn=True``: a mask cuDNN does not compute is an
            error (Keras's own run-time check), never the fallback.

    Returns:
        ``(last_output, outputs, [h_T, s_T])`` as ``keras.layers.RNN.inner_loop``.

    Raises:
        NotImplementedError: Keras's kernel cannot run here.
    """
    kernel_function = keras_internals.keras_lstm_kernel()

    def run_cudnn():
        last, outputs, (h_T, s_T) = kernel_function(
            sequences,
            h_0,
            s_0,
            mask,
            kernel=kernel,
            recurrent_kernel=recurrent_kernel,
            bias=bias,
            activation=activation,
            recurrent_activation=recurrent_activation,
            return_sequences=return_sequences,
            go_backwards=go_backwards,
            unroll=False,
        )
        if mask is not None and not go_backwards:
            # cuDNN writes zeros after each example's last step and returns
            # h_T as the last output. The layer repeats h_T there, or writes
            # zeros with zero_output_for_mask, the last output included.
            # (With go_backwards the padding is read first: zeros before the
            # first unmasked step and h_T last, as the layer gives.)
            keep = ops.cast(mask, "bool")
            if return_sequences and not zero_output_for_mask:
                outputs = ops.where(keep[:, :, None], outputs, h_T[:, None, :])
            if zero_output_for_mask:
                last = ops.where(keep[:, -1:], h_T, ops.zeros_like(h_T))
                if not return_sequences:
                    outputs = last[:, None, :]
        return last, outputs, [h_T, s_T]

    if mask is None or required or keras.backend.backend() != "tensorflow":
        return run_cudnn()
    # TensorFlow: Keras's kernel accepts only right-padded masks; decide per
    # batch at run time, both branches in the graph.
    import tensorflow as tf  # the backend in use

    return tf.cond(mask_allows(mask), run_cudnn, fallback)
