"""Watch the gates while a model trains: TensorBoard summaries of every gate.

``trace_gates`` and ``keras_gates.plots`` show a trained model's gates after
the fact. ``GateMonitor`` is a ``keras.callbacks.Callback`` that shows them
as training goes: at the end of every n-th epoch it traces the model's
keras_gates layers on a fixed probe batch and writes, with ``tf.summary``,

- a histogram per layer and gate: o_t, i_t, f_t, s~_t (the GRU's forget gate
  is 1 - i_t, gru.py), over the probe's unmasked steps only;
- scalars per layer and gate: the mean, and the fractions saturated, below
  0.05 and above 0.95 (a sigmoid there passes less than 5% of the gradient:
  the gate has decided, or stopped learning); for s~_t the fraction with
  |s~_t| above 0.95, where tanh saturates;
- an image per layer: the gate heatmap of the first probe sequence over time
  (``plots.plot_gate_heatmap``), tokens on the axis when given;
- optionally (``gradient_flow=True``) ``gradient_flow``'s curve as an image,
  and its value at the sequence start as a scalar.

Questions it answers: do the forget gates learn to hold (f_t near 1), or stay
where they started near 0.5? Do the gates saturate at 0 or 1 and stop
learning? Does the gradient of the last step still reach the first?

Layout: ``<log_dir>/<run_name>`` (default ``gates``), so it sits beside
``keras.callbacks.TensorBoard``'s ``train`` and ``validation`` runs in the
same ``log_dir``; the step of every summary is the epoch index, as Keras's.
Tags: ``<layer>/<gate>`` (histograms), ``<layer>/<gate>/mean``,
``<layer>/<gate>/below_0.05``, ``<layer>/<gate>/above_0.95``,
``<layer>/s_tilde/abs_above_0.95`` (scalars), ``<layer>/heatmap`` (image),
``gradient_flow/curve`` and ``gradient_flow/at_start``; a layer inside
``keras.layers.Bidirectional`` is ``<wrapper>/<forward or backward layer>``,
one in a sub-model ``<sub-model>/<layer>`` (``introspection.gated_layers``).

The callback reads the weights and never writes them: tracing runs with
training off (no dropout mask is drawn, no random state moves), so a run
with it ends with the same weights as a run without. Epochs it skips cost
one modulo. Both TensorFlow and JAX backends (``tf.summary`` writes the
files either way); ``gradient_flow`` needs TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from keras_gates import validation
from keras_gates.gru import GRUCell
from keras_gates.introspection import GatedLayer, find_gated_layers, trace_gates
from keras_gates.introspection import gradient_flow as measure_gradient_flow

__all__ = ["GateMonitor"]

# A sigmoid gate below LOW or above HIGH passes less than 5% of the gradient
# (sigma' = sigma (1 - sigma) < 0.0475): saturated.
LOW, HIGH = 0.05, 0.95
# The entries that get a histogram, scalars and a heatmap panel, in order;
# "f" is 1 - i for a GRU.
MONITORED = ("o", "i", "f", "s_tilde")
# Image resolution: a 30-step, 16-unit heatmap is ~730 x 800 pixels at 60 dpi,
# the gradient-flow curve 640 x 400 at 100.
HEATMAP_DPI, CURVE_DPI = 60, 100


def _require_tensorboard() -> None:
    try:
        import tensorboard.summary  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "GateMonitor writes TensorBoard event files with tf.summary, which "
            "needs the `tensorboard` package (TensorFlow 2.21 no longer installs "
            "it): `pip install tensorboard`, or reinstall keras_gates, which "
            f"declares it. Import failed with: {error}"
        ) from error


def _select(model: keras.Model, names: list[str] | None) -> list[GatedLayer]:
    """The targets `names` pick (``introspection.find_gated_layers``): a
    layer, a Bidirectional's direction, or a whole wrapper (both)."""
    if names is None:
        return find_gated_layers(model, None, "layers", several=True)
    chosen: list[GatedLayer] = []
    for name in names:
        for target in find_gated_layers(model, name, "layers", several=True):
            if target not in chosen:
                chosen.append(target)
    return chosen


def _shape(value: Any) -> tuple:
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else np.shape(value)


def _check_probe(model: keras.Model, probe: Any) -> None:
    """The probe fits the model's (single) input: rank and every known axis."""
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) != 1 or isinstance(probe, (list, tuple, dict)):
        return  # several inputs: the first trace checks them
    expected = tuple(inputs[0].shape)
    received = _shape(probe)
    if (
        len(received) != len(expected)
        or not received
        or received[0] == 0
        or any(
            want is not None and got != want
            for got, want in zip(received[1:], expected[1:], strict=True)
        )
    ):
        raise ValueError(
            f"`probe` must be a non-empty batch that model '{model.name}' takes: "
            f"shape {expected} (None: any size); received shape {received}."
        )


def _monitored(target: GatedLayer, trace: dict[str, np.ndarray]) -> dict:
    """The trace entries that are watched, with the GRU's forget gate 1 - i."""
    trace = dict(trace)
    if isinstance(target.layer.cell, GRUCell):
        trace["f"] = 1.0 - trace["i"]  # NaN at masked steps stays NaN
    return {name: trace[name] for name in MONITORED if name in trace}


def _gate_statistics(name: str, values: np.ndarray) -> dict[str, float]:
    """The scalars written for one gate: mean and saturated fractions.

    Args:
        name: The trace entry (``"o"``, ``"i"``, ``"f"``, ``"s_tilde"``).
        values: Its values at unmasked steps, any shape (NaN = masked, dropped).

    Returns:
        ``{"mean": ..., "below_0.05": ..., "above_0.95": ...}`` for a gate;
        ``{"mean": ..., "abs_above_0.95": ...}`` for the candidate s~_t.
        Empty when every step is masked.

    Example:

    >>> _gate_statistics("f", np.array([0.0, 0.5, 1.0, 0.5]))
    {'mean': 0.5, 'below_0.05': 0.25, 'above_0.95': 0.25}
    """
    values = np.asarray(values, dtype="float64")
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {}
    statistics = {"mean": float(values.mean())}
    if name == "s_tilde":
        statistics[f"abs_above_{HIGH}"] = float(np.mean(np.abs(values) > HIGH))
    else:
        statistics[f"below_{LOW}"] = float(np.mean(values < LOW))
        statistics[f"above_{HIGH}"] = float(np.mean(values > HIGH))
    return statistics


def _first_sequence(trace: dict, tokens: list[str] | None):
    """Probe sequence 0, cut to the steps from its first to its last read one.

    Padding is masked (NaN gates): a 200-step picture of a 15-word review
    would be mostly blank. Returns the (1, steps, units) trace, its tokens
    and a note of the steps kept ("" when all are).
    """
    read = np.isfinite(trace["o"][0]).any(axis=-1)  # (time,)
    steps = read.shape[0]
    if not read.any() or read.all():
        return {name: v[:1] for name, v in trace.items()}, tokens, ""
    start, stop = int(np.argmax(read)), steps - int(np.argmax(read[::-1]))
    first = {name: v[:1, start:stop] for name, v in trace.items()}
    tokens = None if tokens is None else tokens[start:stop]
    return first, tokens, f", steps {start}-{stop - 1} of {steps}"


@contextlib.contextmanager
def _states_kept(model: keras.Model):
    """Put every non-trainable variable (random seed states) back afterwards.

    keras.layers.RNN draws a dropout cell's masks on every call, training or
    not (Keras 3.15, its own LSTM too), which moves the cell's seed state:
    tracing a layer behind a dropout RNN, or ``gradient_flow``'s forward
    pass, would change the masks of the next training batch. A stateful
    layer's state is restored the same way.
    """
    kept = [
        (variable, keras.ops.convert_to_numpy(variable))
        for variable in model.non_trainable_variables
    ]
    try:
        yield
    finally:
        for variable, value in kept:
            variable.assign(value)


def _pixels(figure: Any, dpi: int) -> np.ndarray:
    """A matplotlib Figure as (1, height, width, 3) uint8, for tf.summary.image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure.set_dpi(dpi)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[None, :, :, :3].copy()


class GateMonitor(keras.callbacks.Callback):
    """TensorBoard summaries of every gate of a model's keras_gates layers.

    At the end of every ``every_n_epochs``-th epoch (1-based: with 2, after
    epochs 2, 4, ...; the summaries' step is Keras's 0-based epoch index),
    each monitored layer runs over ``probe`` with training off
    (``trace_gates``), and for each of its gates g in o_t, i_t, f_t, s~_t
    (the GRU's f_t = 1 - i_t) over the unmasked steps:

        histogram  <layer>/<g>
        mean       <layer>/<g>/mean          = mean of g over batch, time, units
        saturated  <layer>/<g>/below_0.05    = fraction of g_t < 0.05
                   <layer>/<g>/above_0.95    = fraction of g_t > 0.95
                   <layer>/s_tilde/abs_above_0.95 = fraction of |s~_t| > 0.95
        image      <layer>/heatmap           = o, i, f, s~ of probe[0] over time

    and with ``gradient_flow=True``, for the whole model,
    ``gradient_flow/curve`` (image of ||d loss_T / d x_{T-d}|| against d) and
    ``gradient_flow/at_start`` (its value at d = T - 1, the first step).

    Args:
        probe: A fixed batch in the form the model takes it (floats
            (batch, time, features), token ids, strings...); the same batch
            every time, so the epochs compare. Its padding is masked as the
            model masks it.
        log_dir: The TensorBoard log folder (``tensorboard --logdir
            log_dir``); the summaries go to ``log_dir/run_name``.
        layers: Which layers: None for every keras_gates layer (top level,
            inside ``keras.layers.Bidirectional``, in sub-models), or names as
            ``trace_gates``' ``layer`` takes them (a layer's, a tag such as
            ``"bi/forward"``), or a Bidirectional wrapper's (both directions).
        every_n_epochs: Write after every n-th epoch.
        tokens: Optional labels of the first probe sequence's time steps (as
            the traced layer sees them), drawn under the heatmaps.
        gradient_flow: Also write the gradient-flow curve and its value at the
            sequence start (TensorFlow backend; float (batch, time, features)
            probe, as ``keras_gates.gradient_flow`` takes it).
        run_name: The run subfolder of ``log_dir``.
        max_units: The heatmaps show at most this many units.

    Attributes:
        run_dir: ``log_dir/run_name``, where the event files go.
        seconds_per_write: The wall time of each logged epoch's tracing and
            writing, in order (what the callback costs).

    Raises:
        ImportError: If the ``tensorboard`` package is missing.
        ValueError / TypeError: For bad arguments; those that need the model
            (``probe``, ``layers``, ``log_dir``, ``tokens``) are checked when
            the model is set / training begins, before the first batch.

    Example:

    >>> monitor = keras_gates.GateMonitor(x_val[:32], "logs", every_n_epochs=1)
    >>> model.fit(x, y, epochs=10, callbacks=[monitor])  # doctest: +SKIP
    >>> # then: tensorboard --logdir logs
    """

    def __init__(
        self,
        probe: Any,
        log_dir: str | os.PathLike,
        layers: str | Sequence[str] | None = None,
        every_n_epochs: int = 1,
        tokens: Sequence[str] | None = None,
        gradient_flow: bool = False,
        run_name: str = "gates",
        max_units: int = 16,
    ):
        super().__init__()
        _require_tensorboard()
        if probe is None:
            raise ValueError(
                "`probe` must be a batch of the model's inputs; received None."
            )
        if not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(log_dir):
            raise TypeError(
                f"`log_dir` must be a folder path (str or os.PathLike); received "
                f"{validation.describe(log_dir)}."
            )
        if isinstance(layers, str):
            layers = [layers]
        if layers is not None:
            if not isinstance(layers, Sequence) or not all(
                isinstance(name, str) for name in layers
            ):
                raise TypeError(
                    "`layers` must be None, a layer name or a list of layer "
                    f"names; received {validation.describe(layers)}."
                )
            if not layers:
                raise ValueError(
                    "`layers` must name at least one layer (or be None for all); "
                    "received an empty list."
                )
        if tokens is not None and (
            isinstance(tokens, str)
            or not isinstance(tokens, Sequence)
            or not all(isinstance(token, str) for token in tokens)
        ):
            raise TypeError(
                "`tokens` must be a list of str, one label per time step of the "
                f"first probe sequence; received {validation.describe(tokens)}."
            )
        if not isinstance(run_name, str):
            raise TypeError(
                f"`run_name` must be a str; received {validation.describe(run_name)}."
            )
        if not run_name or os.sep in run_name or "/" in run_name:
            raise ValueError(
                "`run_name` must be a non-empty folder name (no path separator); "
                f"received {validation.describe(run_name)}."
            )
        self.probe = probe
        self.log_dir = os.fspath(log_dir)
        self.layers = None if layers is None else list(layers)
        self.every_n_epochs = validation.positive_int("every_n_epochs", every_n_epochs)
        self.tokens = None if tokens is None else list(tokens)
        self.gradient_flow = validation.boolean("gradient_flow", gradient_flow)
        self.run_name = run_name
        self.max_units = validation.positive_int("max_units", max_units)
        self.run_dir = os.path.join(self.log_dir, run_name)
        self.seconds_per_write: list[float] = []
        self._targets: list[GatedLayer] | None = None
        self._writer = None

    # -- checks, before the first batch ----------------------------------------

    def set_model(self, model):
        super().set_model(model)
        self._targets = None
        if model.built:
            self._prepare(model)

    def _prepare(self, model: keras.Model) -> None:
        """Resolve the layers and check the probe against the model."""
        if self.gradient_flow and keras.backend.backend() != "tensorflow":
            raise ValueError(
                "`gradient_flow=True` needs the TensorFlow backend (GradientTape); "
                f"received KERAS_BACKEND={keras.backend.backend()!r}."
            )
        targets = _select(model, self.layers)
        _check_probe(model, self.probe)
        if self.gradient_flow:
            shape, dtype = _shape(self.probe), getattr(self.probe, "dtype", None)
            if len(shape) != 3 or "float" not in str(dtype):
                raise ValueError(
                    "`gradient_flow=True` needs a float (batch, time, features) "
                    "`probe` (gradients with respect to token ids do not exist); "
                    f"received shape {shape}, dtype {dtype}."
                )
        self._targets = targets

    def on_train_begin(self, logs=None):
        model = self.model
        if self._targets is None:
            self._prepare(model)
        # One trace now: a probe the layers cannot take fails here, not after
        # the first epoch's work.
        try:
            with _states_kept(model):
                traces = self._trace(model)
        except Exception as error:
            raise ValueError(
                f"`probe` must be a batch model '{model.name}' takes, up to its "
                f"keras_gates layers; tracing it failed: {error}"
            ) from error
        if self.tokens is not None:
            for tag, trace in traces.items():
                steps = trace["o"].shape[1]
                if len(self.tokens) != steps:
                    raise ValueError(
                        f"`tokens` must label each of the {steps} steps layer "
                        f"'{tag}' reads; received {len(self.tokens)} tokens."
                    )
        self._open_writer()

    def _open_writer(self) -> None:
        import tensorflow as tf

        try:
            tf.io.gfile.makedirs(self.run_dir)
            writer = tf.summary.create_file_writer(self.run_dir)
            writer.flush()
        except (OSError, tf.errors.OpError) as error:
            raise ValueError(
                f"`log_dir` must be a folder GateMonitor can write; creating "
                f"{self.run_dir!r} failed: {error}"
            ) from None
        self._writer = writer

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- the summaries ---------------------------------------------------------

    def _trace(self, model: keras.Model) -> dict[str, dict[str, np.ndarray]]:
        """Tag -> the watched entries of each target's trace on the probe."""
        traces = {}
        for target in self._targets:
            # The model feeds each layer (a direction of a Bidirectional, one
            # in a sub-model) its sequences, mask and state.
            trace = trace_gates(model, self.probe, layer=target.tag)
            traces[target.tag] = _monitored(target, trace)
        return traces

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        start = time.perf_counter()
        self._write(epoch)
        self.seconds_per_write.append(time.perf_counter() - start)

    def _write(self, step: int) -> None:
        """Trace the probe now and write every summary at `step`."""
        import tensorflow as tf

        from keras_gates import plots  # matplotlib: only when writing

        model = self.model  # with JAX, this brings the trained state back
        with _states_kept(model):
            traces = self._trace(model)
            flow = (
                measure_gradient_flow(model, self.probe) if self.gradient_flow else None
            )
        # Keras's TensorBoard callback may hold a record_if(batch predicate)
        # around the epoch; these summaries are due whatever it says.
        with self._writer.as_default(step=int(step)), tf.summary.record_if(True):
            for tag, trace in traces.items():
                for name in trace:
                    values = trace[name][np.isfinite(trace[name])]
                    tf.summary.histogram(f"{tag}/{name}", values)
                    for key, value in _gate_statistics(name, values).items():
                        tf.summary.scalar(f"{tag}/{name}/{key}", value)
                first, tokens, steps = _first_sequence(trace, self.tokens)
                figure = plots.plot_gate_heatmap(
                    first,
                    tokens=tokens,
                    gates=list(first),
                    max_units=self.max_units,
                    title=f"{tag}, epoch {int(step) + 1}, probe sequence 0{steps}",
                )
                tf.summary.image(f"{tag}/heatmap", _pixels(figure, HEATMAP_DPI))
            if flow is not None:
                figure = plots.plot_gradient_flow(
                    {model.name: flow},
                    title=f"Gradient flow, epoch {int(step) + 1}",
                )
                tf.summary.image("gradient_flow/curve", _pixels(figure, CURVE_DPI))
                tf.summary.scalar("gradient_flow/at_start", float(flow["norm"][-1]))
        self._writer.flush()
