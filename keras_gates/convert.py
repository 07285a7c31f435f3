"""Moving between keras_gates layers and the Keras built-ins.

The cells store exactly the built-ins' variables (lstm.py, gru.py): same names,
shapes and gate-block order, the GRU's update gate z included (the lecture's
i_t = 1 - z_t is computed in the cell's ``call``). So

    keras.layers.LSTM                     <-> keras_gates.LSTM
    keras.layers.GRU(reset_after=False)   <-> keras_gates.GRU

are the same model with the same weights, and these functions copy the
configuration, the weights and a stateful layer's state unchanged.
``from_keras`` is how a user looks inside a layer trained with the built-ins
(``trace_gates`` on the result); ``to_keras`` goes back, for example to use
cuDNN's LSTM on a GPU. (A checkpoint moves without them: ``load_weights`` of
the built-in's ``.weights.h5`` into the keras_gates model, and back.)
"""

from __future__ import annotations

import keras

from keras_gates.gru import GRU
from keras_gates.lstm import LSTM

# Keras-only arguments that have no meaning in keras_gates.
_KERAS_ONLY = ("use_cudnn", "reset_after", "implementation")


def _copy_built_state(source, target) -> None:
    """Build `target` like `source` and copy its weights (and states)."""
    if not source.built:
        return
    input_dim = source.cell.kernel.shape[0]
    batch = source.states[0].shape[0] if source.stateful and source.states else None
    target.build((batch, None, input_dim))
    target.cell.set_weights(source.cell.get_weights())
    if source.stateful and source.states is not None:
        for mine, theirs in zip(target.states, source.states):
            mine.assign(theirs)


def from_keras(layer: keras.layers.Layer) -> LSTM | GRU:
    """The keras_gates layer equivalent to a ``keras.layers.LSTM`` or ``GRU``.

    Same configuration (name included) and the same weights (the variables
    are the built-in's: lstm.py, gru.py); a stateful layer's current state is copied
    too. Outputs are equal.

    Args:
        layer: A ``keras.layers.LSTM``, or a ``keras.layers.GRU`` built with
            ``reset_after=False``. Unbuilt layers give an unbuilt result.

    Returns:
        A ``keras_gates.LSTM`` or ``keras_gates.GRU``.

    Example:

    >>> trained = keras.layers.LSTM(8)
    >>> trained.build((None, None, 3))
    >>> ours = keras_gates.from_keras(trained)
    >>> ours.cell.kernel.shape
    (3, 32)
    """
    if isinstance(layer, keras.layers.LSTM):
        target_class = LSTM
    elif isinstance(layer, keras.layers.GRU):
        if layer.cell.reset_after:
            raise ValueError(
                "from_keras: `layer` is a keras.layers.GRU with reset_after=True "
                "(the cuDNN variant, Keras's default), which applies the reset gate "
                "after the W product: a different model from the lecture's GRU, so "
                "its weights cannot be used. Train with "
                "keras.layers.GRU(reset_after=False) to convert."
            )
        target_class = GRU
    else:
        raise TypeError(
            "from_keras: `layer` must be a keras.layers.LSTM or keras.layers.GRU "
            f"(reset_after=False); received {type(layer).__name__}."
        )
    config = {k: v for k, v in layer.get_config().items() if k not in _KERAS_ONLY}
    target = target_class.from_config({**config, "weight_layout": "keras"})
    _copy_built_state(layer, target)
    return target


def to_keras(layer: LSTM | GRU) -> keras.layers.Layer:
    """The ``keras.layers.LSTM`` / ``GRU(reset_after=False)`` equal to ``layer``.

    Args:
        layer: A ``keras_gates.LSTM`` (with its forget gate) or
            ``keras_gates.GRU``.

    Returns:
        The Keras built-in with the same configuration and weights.
    """
    if isinstance(layer, LSTM):
        if not layer.forget_gate:
            raise ValueError(
                "to_keras: `layer` is a keras_gates.LSTM with forget_gate=False; "
                "keras.layers.LSTM always has a forget gate, so there is no exact "
                "equivalent."
            )
        target_class, extra = keras.layers.LSTM, {}
    elif isinstance(layer, GRU):
        target_class, extra = keras.layers.GRU, {"reset_after": False}
    else:
        raise TypeError(
            "to_keras: `layer` must be a keras_gates.LSTM or keras_gates.GRU; "
            f"received {type(layer).__name__}."
        )
    config = layer.get_config()
    config.pop("forget_gate", None)
    config.pop("weight_layout", None)
    target = target_class.from_config({**config, **extra})
    _copy_built_state(layer, target)
    return target
