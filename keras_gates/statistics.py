"""Gate statistics by token class over a data set, with confidence intervals.

The lectures tell the LSTM's story with one sentence: read selectively (the
input gate opens on the words that matter), forget selectively (the forget
gate lets go of what stop words added), write selectively (the output gate).
``gate_statistics`` turns that story into a measurement over many sentences:
give each token a class (say sentiment-bearing, stop word, neutral) and it
reports, per class, the mean of

    i_t                   input gate (selective read)
    f_t                   forget gate (selective forget); the GRU's is 1 - i_t,
                          the LSTM's with ``forget_gate=False`` is 1
    o_t                   output gate (LSTM: selective write; GRU: the gate on
                          s_{t-1} inside the candidate s~_t)
    |s_t - s_{t-1}|       how much reading the token moved the state

each averaged over the layer's units, from ``keras_gates.trace_gates`` (the
layer's own cell in keras.layers.RNN's loop). Only steps the layer reads
count: a masked step (padding) has no gates and keeps the state.

How the mean and its interval are taken (sentences are the sampling unit,
since tokens of one sentence are not independent): for sentence n and class c,
m[n, c] is the mean over the sentence's unmasked steps of class c; the
reported mean is the average of m[n, c] over the N_c sentences that have such
a step, and the interval is, at level ``confidence``,

    method="t":          mean +- t_{(1+confidence)/2, N_c - 1} * sd(m) / sqrt(N_c)
    method="bootstrap":  percentiles (1-confidence)/2 and (1+confidence)/2 of
                         the mean over ``resamples`` resamplings of the N_c
                         sentences with replacement (Efron & Tibshirani 1993)

``GateStatistics.difference(a, b)`` does the same for the paired difference
m[n, a] - m[n, b] over the sentences that hold both classes.

References: Hochreiter & Schmidhuber (1997); Cho et al. (2014);
Mitesh M. Khapra, CS7015 Deep Learning, lecture 14; Efron & Tibshirani (1993),
An Introduction to the Bootstrap.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_gates.introspection import _stateful_states, _trace, _traced_layer

__all__ = ["QUANTITIES", "GateStatistics", "gate_statistics"]

# What is measured per token, in table order, with the symbol shown for it.
QUANTITIES = ("i", "f", "o", "delta_s")
SYMBOLS = {"i": "i_t", "f": "f_t", "o": "o_t", "delta_s": "|s_t - s_{t-1}|"}
METHODS = ("bootstrap", "t")


@dataclasses.dataclass(frozen=True, eq=False)
class GateStatistics:
    """Per-class means of the gates over a data set, with confidence intervals.

    Attributes:
        classes: The class names, in the order of the arrays' class axis.
        quantities: ``QUANTITIES``: ``("i", "f", "o", "delta_s")``.
        mean, low, high: (classes, quantities) arrays: the mean over sentences
            of the per-sentence class means, and its interval. NaN for a
            class no sentence holds (and the interval for one sentence).
        sentences: (classes,) how many sentences hold the class (N_c).
        tokens: (classes,) how many unmasked steps of the class were read.
        per_sentence: (sentences, classes, quantities) the per-sentence class
            means m[n, c]; NaN where sentence n has no step of class c.
        confidence, method, resamples, seed: how the intervals were taken.
    """

    classes: tuple[str, ...]
    quantities: tuple[str, ...]
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    sentences: np.ndarray
    tokens: np.ndarray
    per_sentence: np.ndarray
    confidence: float
    method: str
    resamples: int
    seed: int

    def _class_index(self, name: str, argument: str) -> int:
        if name not in self.classes:
            raise ValueError(
                f"`{argument}` must be one of the classes {list(self.classes)}; "
                f"received {name!r}."
            )
        return self.classes.index(name)

    def difference(self, a: str, b: str) -> dict[str, tuple[float, float, float]]:
        """The paired difference class `a` minus class `b`, with its interval.

        Over the sentences that hold both classes, the mean of m[n, a] -
        m[n, b], with an interval taken as the class means' are.

        Returns:
            A dict quantity -> (mean, low, high); ``"sentences"`` -> the number
            of sentences with both classes, as a 1-tuple.
        """
        values = (
            self.per_sentence[:, self._class_index(a, "a")]
            - self.per_sentence[:, self._class_index(b, "b")]
        )  # (sentences, quantities), NaN where one class is missing
        values = values[~np.isnan(values).any(axis=-1)]
        mean, low, high = _interval(
            values, self.method, self.confidence, self.resamples, self.seed
        )
        result = {
            name: (float(mean[q]), float(low[q]), float(high[q]))
            for q, name in enumerate(self.quantities)
        }
        result["sentences"] = (len(values),)
        return result

    def table(self, title: str | None = None) -> str:
        """A plain-text table: one row per class, ``mean [low, high]`` per quantity."""
        width = 22
        head = f"{'class':<12}{'sentences':>10}{'tokens':>8}  " + "".join(
            f"{SYMBOLS[q]:<{width}}" for q in self.quantities
        )
        lines = [title] if title else []
        lines.append(head.rstrip())
        for c, name in enumerate(self.classes):
            cells = "".join(
                f"{_cell(self.mean[c, q], self.low[c, q], self.high[c, q]):<{width}}"
                for q in range(len(self.quantities))
            )
            row = f"{name:<12}{self.sentences[c]:>10d}{self.tokens[c]:>8d}  {cells}"
            lines.append(row.rstrip())
        level = f"{self.confidence:.0%}"
        how = "t" if self.method == "t" else f"bootstrap, {self.resamples} resamples"
        lines.append(f"(mean over sentences [{level} interval, {how}])")
        return "\n".join(lines)


def _cell(mean: float, low: float, high: float) -> str:
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _t_quantile(p: float, df: int) -> float:
    """Student's t quantile: bisection on the CDF, integrated by Simpson's rule.

    No SciPy in the package's requirements; accurate to ~1e-8 for df >= 1 and
    the p of confidence intervals (0.5 < p < 0.9995).
    """
    log_norm = (
        math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    )

    def cdf(x: float) -> float:
        grid = np.linspace(0.0, x, 2001)  # even number of intervals
        density = np.exp(log_norm - (df + 1) / 2 * np.log1p(grid**2 / df))
        weights = np.ones(len(grid))
        weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
        return 0.5 + float(weights @ density) * (x / 2000) / 3

    low, high = 0.0, 1.0
    while cdf(high) < p:
        high *= 2.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < p else (low, middle)
    return (low + high) / 2


def _interval(
    values: np.ndarray, method: str, confidence: float, resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) per column of `values` (n, quantities), over its rows."""
    n, columns = values.shape
    nan = np.full(columns, np.nan)
    if n == 0:
        return nan, nan, nan
    mean = values.mean(axis=0)
    if n == 1:
        return mean, nan, nan
    if method == "t":
        half = _t_quantile((1 + confidence) / 2, n - 1) * values.std(axis=0, ddof=1)
        half = half / math.sqrt(n)
        return mean, mean - half, mean + half
    rng = np.random.default_rng(seed)
    means = np.concatenate(
        [  # (resamples, quantities), drawn 100 resamples at a time to bound memory
            values[rng.integers(0, n, size=(min(100, resamples - done), n))].mean(1)
            for done in range(0, resamples, 100)
        ]
    )
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2], 0)
    return mean, low, high


def _batch(values: Any, start: int, stop: int) -> Any:
    return None if values is None else values[start:stop]


def _check_arguments(
    token_classes: np.ndarray,
    class_names: Sequence[str],
    confidence: float,
    method: str,
    resamples: int,
    batch_size: int,
) -> None:
    if token_classes.ndim != 2 or not np.issubdtype(token_classes.dtype, np.integer):
        raise ValueError(
            "`token_classes` must be a (batch, time) integer array (a class index "
            "per step, -1 for steps not counted); received dtype "
            f"{token_classes.dtype} with shape {token_classes.shape}."
        )
    if (
        isinstance(class_names, str)
        or len(class_names) == 0
        or not all(isinstance(name, str) for name in class_names)
        or len(set(class_names)) != len(class_names)
    ):
        raise ValueError(
            "`class_names` must be a non-empty sequence of distinct strings; "
            f"received {class_names!r}."
        )
    if token_classes.size and (
        token_classes.min() < -1 or token_classes.max() >= len(class_names)
    ):
        raise ValueError(
            f"`token_classes` must hold -1 or class indices 0..{len(class_names) - 1} "
            f"(one per name in `class_names`); received values from "
            f"{token_classes.min()} to {token_classes.max()}."
        )
    if not 0 < confidence < 1:
        raise ValueError(
            "`confidence` must be between 0 and 1 (e.g. 0.95); received "
            f"{confidence!r}."
        )
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}; received {method!r}.")
    if not isinstance(resamples, int) or resamples < 1:
        raise ValueError(
            f"`resamples` must be a positive integer; received {resamples!r}."
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"`batch_size` must be a positive integer; received {batch_size!r}."
        )


def _per_step(trace: dict[str, np.ndarray], s_start: np.ndarray, backwards: bool):
    """(batch, time, quantities) unit means per step, and the (batch, time) read mask.

    `s_start` (batch, units) is the state before the first step read.
    """
    s_t = trace["s"]  # (batch, time, units); masked steps carry the state
    # The state before each step, in reading order (reversed for go_backwards).
    if backwards:
        s_tm1 = np.concatenate([s_t[:, 1:], s_start[:, None]], axis=1)
    else:
        s_tm1 = np.concatenate([s_start[:, None], s_t[:, :-1]], axis=1)
    i_t = trace["i"]
    if "f" in trace:
        f_t = trace["f"]
    elif "h" in trace:  # LSTM(forget_gate=False): s_t = s_{t-1} + i_t * s~_t
        f_t = np.ones_like(i_t)
    else:  # GRU: s_t = (1 - i_t) * s_{t-1} + i_t * s~_t
        f_t = 1.0 - i_t
    unread = np.isnan(i_t)  # trace_gates' masked_value
    read = ~unread.all(axis=-1)
    if (unread.any(axis=-1) & read).any():
        raise ValueError(
            "`inputs` gave non-finite gate values at steps the layer reads (NaN in "
            "some units only); the model's weights or inputs hold NaN or Inf."
        )
    steps = np.stack(
        [
            i_t.mean(axis=-1),
            f_t.mean(axis=-1),
            trace["o"].mean(axis=-1),
            np.abs(s_t - s_tm1).mean(axis=-1),
        ],
        axis=-1,
    )  # (batch, time, quantities)
    return np.where(read[..., None], steps, 0.0), read


def gate_statistics(
    layer_or_model: Any,
    inputs: Any,
    token_classes: Any,
    class_names: Sequence[str],
    *,
    layer: Any = None,
    mask: Any = None,
    initial_state: Any = None,
    confidence: float = 0.95,
    method: str = "bootstrap",
    resamples: int = 2000,
    seed: int = 0,
    batch_size: int = 256,
) -> GateStatistics:
    """Mean i_t, f_t, o_t and |s_t - s_{t-1}| per token class, over a data set.

    Runs ``keras_gates.trace_gates`` on `inputs` in batches, and for each
    sentence and class averages the quantities (each a mean over the units)
    over the sentence's unmasked steps of that class; then the mean over
    sentences and its confidence interval (module docstring).

    Args:
        layer_or_model: A built keras_gates ``LSTM``/``GRU``, or a model holding
            one (as for ``trace_gates``).
        inputs: What the layer or model takes, (sentences, ...) on axis 0: floats
            (sentences, time, features) for a layer; for a model e.g. token ids
            or (sentences, 1) strings; for a model of several inputs a list of
            one array per input (e.g. an encoder's and a decoder's sequences).
            Sliced along axis 0 into batches.
        token_classes: (sentences, time) integers on the traced layer's time
            axis: the class index (into `class_names`) of each step, -1 for a
            step not counted. Steps the layer does not read (masked) never count.
        class_names: The name of each class, e.g. ``["sentiment", "stop",
            "neutral"]``.
        layer: With a model: the traced layer (name, index or object).
        mask: Optional (sentences, time) booleans for the layer (a model's own
            mask, e.g. from ``Embedding(mask_zero=True)``, is used otherwise).
        initial_state: Optional initial state ([h_0, s_0] for the LSTM, [s_0]
            for the GRU), (sentences, units) each. Default: the state the
            trace starts from (``trace_gates``): the one the model feeds the
            layer, a stateful layer's carried state (sentence n from row
            n mod B of its fixed batch B), else zeros. The first step's
            |s_t - s_{t-1}| is taken from the same state the trace starts from.
        confidence: The intervals' level, e.g. 0.95.
        method: ``"bootstrap"`` (percentile, over sentences) or ``"t"``.
        resamples: Bootstrap resamples.
        seed: Seed of the bootstrap's resampling.
        batch_size: Sentences traced at a time (memory: batch * time * units).

    Returns:
        A frozen ``GateStatistics`` (``.table()`` prints it).

    Example:

    >>> layer = keras_gates.GRU(8)
    >>> layer.build((None, None, 3))
    >>> x = np.random.default_rng(0).normal(size=(20, 6, 3)).astype("float32")
    >>> classes = np.tile([0, 1, 1, 0, 1, -1], (20, 1))  # -1: not counted
    >>> stats = keras_gates.gate_statistics(layer, x, classes, ["a", "b"])
    >>> stats.mean.shape, int(stats.tokens[0])
    ((2, 4), 40)
    """
    token_classes = np.asarray(token_classes)
    _check_arguments(
        token_classes, class_names, confidence, method, resamples, batch_size
    )
    several = len(getattr(layer_or_model, "inputs", None) or ()) > 1
    if several and isinstance(inputs, (list, tuple)):
        inputs = [np.asarray(part) for part in inputs]  # one per model input
        sizes = {int(part.shape[0]) for part in inputs}
        if len(sizes) != 1:
            raise ValueError(
                "`inputs` must hold one array per model input, each with one row "
                "per sentence; received arrays of "
                f"{[int(part.shape[0]) for part in inputs]} rows."
            )
        sentences = sizes.pop()
    else:
        if isinstance(inputs, (list, tuple)):
            inputs = np.asarray(inputs)
        sentences = int(inputs.shape[0])
    if token_classes.shape[0] != sentences:
        raise ValueError(
            f"`token_classes` must have one row per sentence of `inputs` "
            f"({sentences}); received {token_classes.shape[0]} rows."
        )
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
    if initial_state is not None:
        initial_state = [
            np.asarray(state, dtype="float32")
            for state in (
                initial_state
                if isinstance(initial_state, (list, tuple))
                else [initial_state]
            )
        ]
    trace_layer = {} if layer is None else {"layer": layer}
    carried = _stateful_states(_traced_layer(layer_or_model, layer))
    if carried is not None and initial_state is None:
        # Whole multiples of the state's fixed batch B, so sentence n starts
        # from row n mod B, as the trace of them all at once would.
        fixed = int(carried[0].shape[0])
        batch_size = max(fixed, batch_size - batch_size % fixed)
    backwards = None
    sums, counts = [], []
    for start in range(0, sentences, batch_size):
        stop = min(start + batch_size, sentences)
        state = (
            None
            if initial_state is None
            else [state[start:stop] for state in initial_state]
        )
        trace, target, starts = _trace(
            layer_or_model,
            [part[start:stop] for part in inputs] if several else inputs[start:stop],
            mask=_batch(mask, start, stop),
            initial_state=state,
            **trace_layer,
        )
        if backwards is None:
            backwards = bool(getattr(target, "go_backwards", False))
        classes = token_classes[start:stop]
        if classes.shape != trace["i"].shape[:2]:
            raise ValueError(
                f"`token_classes` must match the traced layer's (sentences, time) "
                f"= {trace['i'].shape[:2]} for sentences {start}..{stop - 1}; "
                f"received rows of shape {classes.shape}."
            )
        # The state the trace started from, s_{-1}: the last of [h, s] or [s].
        steps, read = _per_step(trace, starts[-1], backwards)
        # (batch, time, classes): step t of sentence n is read and of class c
        member = read[..., None] & (classes[..., None] == np.arange(len(class_names)))
        sums.append(np.einsum("btc,btq->bcq", member.astype("float64"), steps))
        counts.append(member.sum(axis=1))  # (batch, classes)
    sums = np.concatenate(sums)  # (sentences, classes, quantities)
    counts = np.concatenate(counts)  # (sentences, classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_sentence = np.where(counts[..., None] > 0, sums / counts[..., None], np.nan)
    mean, low, high = (np.full((len(class_names), len(QUANTITIES)), np.nan)
                       for _ in range(3))  # fmt: skip
    for c in range(len(class_names)):
        values = per_sentence[counts[:, c] > 0, c]  # (N_c, quantities)
        mean[c], low[c], high[c] = _interval(
            values, method, confidence, resamples, seed
        )
    return GateStatistics(
        classes=tuple(class_names),
        quantities=QUANTITIES,
        mean=mean,
        low=low,
        high=high,
        sentences=(counts > 0).sum(axis=0),
        tokens=counts.sum(axis=0),
        per_sentence=per_sentence,
        confidence=float(confidence),
        method=method,
        resamples=resamples,
        seed=seed,
    )
