"""Proof at export: every signature, run from the staged SavedModel, against Keras.

Each proof loads nothing itself: it gets the staged export's signatures (the
graph that will be served, loaded with `tf.saved_model.load`) and the
`Description`, feeds random inputs at two batch sizes and two lengths (the
model's own length where it is fixed), with padding where the model masks, and
returns None (proven, with the largest difference in `details`) or the reason
it failed:

    serving_default   against model(x)
    with_lengths      rows padded with their first element, and with another
                      token, against the model on the unpadded rows (real steps)
    step              streamed over the whole sequence from zero states, against
                      serving_default (every step's output where the model
                      returns sequences, else the last)
    gates             against keras_gates.trace_gates on the same input (gates
                      where the mask is on; the states everywhere)

Tolerances: float32 atol 1e-5 + rtol 1e-4 (the same ops in another order);
models with float16/bfloat16 layers (mixed precision) 2e-2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from keras_gates.introspection import trace_gates
from keras_gates.serving import samples
from keras_gates.serving.analysis import Description, sublayers

ATOL, RTOL = 1e-5, 1e-4
HALF_ATOL = HALF_RTOL = 2e-2
HALF_DTYPES = ("float16", "bfloat16")
SHAPES = ((1, 4), (3, 7))  # (batch, time)


def tolerance(model) -> tuple[float, float]:
    """(atol, rtol) for comparing `model` with a served graph."""
    if any(
        getattr(layer, "compute_dtype", None) in HALF_DTYPES
        for layer in sublayers(model)
    ):
        return HALF_ATOL, HALF_RTOL
    return ATOL, RTOL


def first_line(error: BaseException) -> str:
    """An error's first line, at most 300 characters: for one-line reasons."""
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else ""


class Mismatch(Exception):
    """A proof's comparison failed; the message says where and by how much."""


def _numpy(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


def _model_input(description: Description, x: np.ndarray):
    """`x` as the Keras model takes it (strings as (batch, 1) where it asks)."""
    if description.kind == "text":
        x = x.astype(str)
        if len(description.input_shape) == 2:
            return x[:, None]
    return x


class _Compare:
    """Accumulates the largest difference; raises Mismatch past the tolerance."""

    def __init__(self, atol: float, rtol: float):
        self.atol, self.rtol, self.worst, self.count = atol, rtol, 0.0, 0

    def __call__(self, got, want, where: str) -> None:
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        if got.shape != want.shape:
            raise Mismatch(f"{where}: served shape {got.shape}, expected {want.shape}")
        # NaN where the model gives NaN is the model's answer, served faithfully.
        same_nan = np.isnan(got) & np.isnan(want)
        difference = float(np.max(np.abs(got - want)[~same_nan], initial=0.0))
        self.worst = max(self.worst, difference)
        self.count += 1
        if not np.allclose(got, want, atol=self.atol, rtol=self.rtol, equal_nan=True):
            raise Mismatch(
                f"{where}: max difference {difference:.3g} > atol {self.atol} + "
                f"rtol {self.rtol}"
            )

    def summary(self) -> str:
        return f"{self.count} comparisons, max difference {self.worst:.2g}"


def _inputs(description: Description, seed: int):
    metadata = description.metadata()
    for index, (batch, time) in enumerate(SHAPES):
        yield samples.sequence(metadata, batch, time, seed=seed + index)


def prove_serving_default(description: Description, served: Callable) -> str:
    compare = _Compare(*tolerance(description.model))
    for x in _inputs(description, seed=101):
        want = _numpy(description.model(_model_input(description, x), training=False))
        got = served(**{description.input_name: x})["outputs"]
        compare(got, want, f"input shape {x.shape}")
    return compare.summary()


def prove_with_lengths(description: Description, served: Callable) -> str:
    compare = _Compare(*tolerance(description.model))
    metadata = description.metadata()
    model = description.model
    for index, (batch, time) in enumerate(SHAPES):
        x = samples.sequence(metadata, batch, time, seed=201 + index, pad=False)
        time = x.shape[1]
        lengths = np.random.default_rng(index).integers(1, time + 1, size=batch)
        lengths[0] = time
        if batch > 1:
            lengths[-1] = 1
        lengths = lengths.astype(np.int32)
        # TF Serving's batching pads with the tensor's first element; also
        # another token, and the model's own padding token.
        fills = {int(x[0, 0]), 1}
        if description.padding_token is not None:
            fills.add(description.padding_token)
        for fill in sorted(fills):
            padded = x.copy()
            for row, length in enumerate(lengths):
                padded[row, length:] = fill
            got = np.asarray(served(tokens=padded, lengths=lengths)["outputs"])
            for row, length in enumerate(lengths):
                want = _numpy(model(x[row : row + 1, :length], training=False))[0]
                real = got[row]
                if real.ndim and want.ndim and want.shape[0] == length:
                    real = real[:length]  # one output per step: the real ones
                compare(
                    real,
                    want,
                    f"row of length {length} padded with token {fill} (batch "
                    f"{batch}, time {time})",
                )
    return compare.summary()


def prove_step(
    description: Description, served_default: Callable, served: Callable
) -> str:
    chain = description.chain
    compare = _Compare(*tolerance(description.model))
    units = int(chain.cell.units)
    for x in _inputs(description, seed=301):
        want = np.asarray(served_default(**{description.input_name: x})["outputs"])
        if description.kind == "text":
            steps = _numpy(chain.pre[0](_model_input(description, x)))
            if steps.ndim == 3:  # (batch, 1, time) from a (batch, 1) input
                steps = steps[:, 0]
        else:
            steps = x
        batch = steps.shape[0]
        states = {n: np.zeros((batch, units), np.float32) for n in chain.state_names}
        name = "inputs" if description.kind == "float" else "tokens"
        outputs = []
        for t in range(steps.shape[1]):
            answer = served(**{name: steps[:, t]}, **states)
            states = {n: np.asarray(answer[n]) for n in chain.state_names}
            outputs.append(np.asarray(answer["outputs"]))
        if chain.rnn.return_sequences:
            got = np.stack(outputs, axis=1)
        else:
            got = outputs[-1]
        compare(got, want, f"streamed over input shape {steps.shape}")
    return compare.summary()


def prove_gates(description: Description, served: Callable) -> str:
    chain = description.chain
    compare = _Compare(*tolerance(description.model))
    for x in _inputs(description, seed=401):
        got = {
            k: np.asarray(v) for k, v in served(**{description.input_name: x}).items()
        }
        trace = trace_gates(
            description.model, _model_input(description, x), layer=chain.rnn.name
        )
        mask = got["mask"].astype(bool)
        where = f"input shape {x.shape}"
        compare(mask, ~np.isnan(trace[chain.gate_names[0]][..., 0]), f"{where}, mask")
        for name in chain.gate_names:
            if name in ("s", "h"):
                compare(got[name], trace[name], f"{where}, {name}")
            else:
                compare(got[name][mask], trace[name][mask], f"{where}, {name}")
    return compare.summary()


def prove(
    description: Description, signatures: dict[str, Any]
) -> dict[str, tuple[bool, str]]:
    """Run every proof whose signature is in `signatures` (name -> callable
    taking the inputs by name and returning {output: array}).

    Returns:
        {signature: (proven, detail)}: the comparisons made and the largest
        difference, or the reason the proof failed.
    """
    results: dict[str, tuple[bool, str]] = {}

    def attempt(name, proof, *args):
        try:
            results[name] = (True, proof(description, *args))
        except Mismatch as error:
            results[name] = (False, f"it disagrees with the model: {error}")
        except Exception as error:  # noqa: BLE001 (any failure omits the signature)
            results[name] = (
                False,
                f"running it failed: {type(error).__name__}: {first_line(error)}",
            )

    default = signatures["serving_default"]
    attempt("serving_default", prove_serving_default, default)
    if "with_lengths" in signatures:
        attempt("with_lengths", prove_with_lengths, signatures["with_lengths"])
    if "step" in signatures:
        attempt("step", prove_step, default, signatures["step"])
    if "gates" in signatures:
        attempt("gates", prove_gates, signatures["gates"])
    return results
