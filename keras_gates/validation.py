"""Argument checks shared by the cells, layers and tools.

Every check raises ``ValueError`` or ``TypeError`` with the same three parts:
the argument's name, what was expected, and the value received. Keras itself
accepts ``dropout=1.5`` and answers ``units="8"`` with a bare ``TypeError``;
these checks run first so a user reads what to change.
"""

from __future__ import annotations

import numbers
from typing import Any


def describe(value: Any) -> str:
    """A short `repr` of a received value with its type, for error messages."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} (type {type(value).__name__})"


def positive_int(name: str, value: Any) -> int:
    # bool is an int subclass; `units=True` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`{name}` must be a positive integer; received {describe(value)}."
        )
    if value <= 0:
        raise ValueError(f"`{name}` must be a positive integer; received {value}.")
    return int(value)


def boolean(name: str, value: Any) -> bool:
    # numpy bools are fine; strings such as "False" are not (they are truthy).
    if not isinstance(value, (bool, numbers.Integral)) or value not in (0, 1):
        raise TypeError(f"`{name}` must be True or False; received {describe(value)}.")
    return bool(value)


def rate(name: str, value: Any) -> float:
    """A dropout rate: a real number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a float in [0, 1); received {describe(value)}."
        )
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(
            f"`{name}` must be a float in [0, 1) (the fraction of units to drop); "
            f"received {value}."
        )
    return float(value)


def optional_seed(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`{name}` must be None or a non-negative integer; "
            f"received {describe(value)}."
        )
    if value < 0:
        raise ValueError(
            f"`{name}` must be None or a non-negative integer; received {value}."
        )
    return int(value)


def resolved(name: str, value: Any, getter) -> Any:
    """Resolve an activation/initializer/regularizer/constraint with `getter`.

    Keras's getters raise a variety of errors for unknown identifiers; this
    re-raises them with the argument's name.
    """
    try:
        return getter(value)
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(
            f"`{name}` could not be resolved: expected a Keras identifier "
            f"(a name such as 'tanh', a config dict or a callable); received "
            f"{describe(value)}. Keras said: {error}"
        ) from None


def sequence_inputs(
    shape: tuple,
    dtype: str,
    features: int | None,
    *,
    owner: str = "",
    token_hint: str = "Token ids go through keras.layers.Embedding first.",
) -> None:
    """`inputs` of a recurrent layer: rank 3, floating point, `features` wide.

    Args:
        shape: the static shape of `inputs` (None for unknown axes).
        dtype: its standardized dtype name.
        features: the feature size the weights were built for, or None.
        owner: what the inputs are given to, prefixed to the message.
        token_hint: what to do instead with integer (token) inputs.
    """
    prefix = f"{owner}: " if owner else ""
    if len(shape) != 3:
        raise ValueError(
            f"{prefix}`inputs` must have rank 3 (batch, time, features); "
            f"received shape {shape}."
        )
    if "float" not in dtype:
        raise TypeError(
            f"{prefix}`inputs` must be floating point (batch, time, features); "
            f"received dtype {dtype}. {token_hint}"
        )
    if features is not None and shape[-1] is not None and shape[-1] != features:
        raise ValueError(
            f"{prefix}`inputs` must have {features} features (the size the layer "
            f"was built with); received shape {shape}."
        )


def _known_mismatch(got: tuple, want: tuple) -> bool:
    """Whether two shapes differ in rank or in an axis known on both sides."""
    return len(got) != len(want) or any(
        isinstance(g, int) and isinstance(w, int) and g != w for g, w in zip(got, want)
    )


def sequence_mask(mask_shape: tuple, inputs_shape: tuple, *, owner: str = "") -> None:
    """`mask` of a recurrent layer: (batch, time) of its `inputs`."""
    prefix = f"{owner}: " if owner else ""
    expected = tuple(inputs_shape[:2])
    if _known_mismatch(tuple(mask_shape), expected):
        raise ValueError(
            f"{prefix}`mask` must have shape (batch, time) = {expected}; "
            f"received shape {tuple(mask_shape)}."
        )


def initial_states(
    state_shapes: list[tuple],
    count: int,
    batch: int | None,
    units: int,
    *,
    owner: str = "",
) -> None:
    """`initial_state` of a recurrent layer: `count` tensors of (batch, units)."""
    prefix = f"{owner}: " if owner else ""
    if len(state_shapes) != count:
        raise ValueError(
            f"{prefix}`initial_state` must be a list of {count} tensor(s) of shape "
            f"(batch, {units}); received {len(state_shapes)}."
        )
    for index, state_shape in enumerate(state_shapes):
        if _known_mismatch(tuple(state_shape), (batch, units)):
            raise ValueError(
                f"{prefix}`initial_state[{index}]` must have shape (batch, units) = "
                f"{(batch, units)}; received shape {tuple(state_shape)}."
            )
