"""Sample inputs for an export, from its metadata: one place for the proofs at
export, the warmup records and the loader child's runs.

NumPy only: the loader child (no TensorFlow Python) imports it. `metadata` is
`Description.metadata()`, as written to `assets.extra/keras_gates.json`.

- float inputs: standard normals; where the model has a Masking layer, the
  tail of some rows is set to its mask value (padding);
- token inputs: integers in [1, vocabulary) (never out of the model's range,
  whatever the integer dtype), and where the model masks a padding token, the
  tail of some rows is that token;
- text: words from the model's vocabulary, rows of different lengths.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _lengths(batch: int, time: int, rng) -> np.ndarray:
    """Row lengths: the first row full, the others anywhere in [1, time]."""
    lengths = rng.integers(1, time + 1, size=batch)
    lengths[0] = time
    return lengths


def sequence(
    metadata: dict[str, Any],
    batch: int,
    time: int,
    seed: int = 0,
    *,
    pad: bool = True,
    dtype: Any = None,
) -> np.ndarray:
    """A batch of sequences for the export's sequence input.

    Args:
        metadata: The export's metadata (`Description.metadata()`).
        batch: Rows.
        time: Steps (ignored where the model has a fixed length).
        seed: For the random draws.
        pad: Pad the tail of rows after the first with the model's padding
            token / mask value, where it has one.
        dtype: The numpy dtype to produce (default: the input's).

    Returns:
        (batch, time, features) floats, (batch, time) integers, or (batch,)
        strings.
    """
    rng = np.random.default_rng(seed)
    time = int(metadata.get("time_steps") or time)
    kind = metadata["kind"]
    if kind == "text":
        words = list(metadata.get("sample_words") or ["hello", "world", "gates"])
        lengths = _lengths(batch, time, rng) if pad else np.full(batch, time)
        return np.array(
            [" ".join(rng.choice(words, size=int(n))) for n in lengths], dtype=object
        )
    lengths = _lengths(batch, time, rng)
    if kind == "tokens":
        high = max(2, min(int(metadata.get("vocabulary_size") or 2), 1000))
        x = rng.integers(1, high, size=(batch, time))
        padding = metadata.get("padding_token")
        if pad and padding is not None:
            for row, length in enumerate(lengths):
                x[row, length:] = padding
        return x.astype(dtype or metadata["input_dtype"])
    x = rng.normal(size=(batch, time, int(metadata["features"])))
    mask_value = metadata.get("mask_value")
    if pad and mask_value is not None:
        for row, length in enumerate(lengths):
            x[row, length:] = mask_value
    return x.astype(dtype or metadata["input_dtype"])


def tokens(metadata: dict[str, Any], shape: tuple, seed: int, dtype: Any) -> np.ndarray:
    """Token ids in [1, vocabulary), for any integer input (step's tokens)."""
    rng = np.random.default_rng(seed)
    high = max(2, min(int(metadata.get("vocabulary_size") or 2), 1000))
    return rng.integers(1, high, size=shape).astype(dtype)


def warmup_requests(
    metadata: dict[str, Any], signatures: dict[str, dict]
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(signature, inputs) pairs: every written signature at batch 1 and 2.

    Args:
        metadata: The export's metadata.
        signatures: {name: {"inputs": [...], "outputs": [...]}} as written.
    """
    requests = []
    name = metadata["input_name"]
    for batch, time in ((1, 3), (2, 5)):
        x = sequence(metadata, batch, time, seed=batch)
        requests.append(("serving_default", {name: x}))
        if "with_lengths" in signatures:
            lengths = np.full((batch,), x.shape[1], np.int32)
            lengths[-1] = max(1, x.shape[1] - 2)
            requests.append(("with_lengths", {"tokens": x, "lengths": lengths}))
        if "gates" in signatures:
            requests.append(("gates", {name: x}))
        if "step" in signatures:
            if metadata["kind"] == "float":
                x_t, step_name = x[:, 0], "inputs"
            elif metadata["kind"] == "tokens":
                x_t, step_name = x[:, 0], "tokens"
            else:
                x_t, step_name = np.ones((batch,), np.int64), "tokens"
            units = int(metadata["units"])
            states = {
                s: np.zeros((batch, units), np.float32) for s in metadata["states"]
            }
            requests.append(("step", {step_name: x_t, **states}))
    return requests
