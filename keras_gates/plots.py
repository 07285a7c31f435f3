"""Pictures of the gates and of the gradients, with matplotlib.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot
(so nothing depends on, or changes, the session's backend: it works in a
headless job and shows inline in a notebook) and, given ``path``, also
writes it as a PNG.

- ``plot_gate_heatmap``: units x time heatmaps of o_t, i_t, f_t, ... from a
  ``keras_gates.trace_gates`` trace, labelled with the tokens of a text
  (``REVIEW`` is the lecture's example) or with step numbers.
- ``plot_gate_histograms``: how open each gate is over all steps and units
  (a gate near 0 or 1 is a decision; near 0.5 is indecision).
- ``plot_gradient_flow``: ||d loss_T / d x_{T-d}|| against the distance d,
  log scale, one curve per model (``keras_gates.introspection.gradient_flow``):
  the vanilla RNN's straight line down is the vanishing gradient.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

__all__ = [
    "REVIEW",
    "plot_gate_heatmap",
    "plot_gate_histograms",
    "plot_gradient_flow",
    "tokenize",
]

# The lecture's running example: a review whose sentiment turns halfway.
REVIEW = (
    "The first half of the movie is dry but the second half really picked up the "
    "pace. The lead actor delivered an amazing performance."
)

# How each trace entry is titled and coloured: gates live in [0, 1], the
# candidate, state and output in [-1, 1] (s can exceed it; the scale clips).
GATE_TITLES = {
    "o": ("o_t  output gate (selective write)", (0.0, 1.0), "viridis"),
    "i": ("i_t  input gate (selective read)", (0.0, 1.0), "viridis"),
    "f": ("f_t  forget gate (selective forget)", (0.0, 1.0), "viridis"),
    "s_tilde": ("s~_t  candidate state", (-1.0, 1.0), "RdBu_r"),
    "s": ("s_t  state", (-1.0, 1.0), "RdBu_r"),
    "h": ("h_t  output", (-1.0, 1.0), "RdBu_r"),
}


def tokenize(text: str) -> list[str]:
    """Lower-case words and punctuation marks, in order.

    Args:
        text: Any text.

    Returns:
        The tokens, e.g. ``["the", "first", ..., "pace", ".", ...]``.

    Example:

    >>> tokenize("The lead actor.")
    ['the', 'lead', 'actor', '.']
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a str; received {type(text).__name__}.")
    return re.findall(r"[a-z0-9']+|[^\sa-z0-9']", text.lower())


def _save(figure: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110, bbox_inches="tight")
    return figure


def _check_trace(trace: Any) -> Mapping[str, np.ndarray]:
    if not isinstance(trace, Mapping) or not trace:
        raise TypeError(
            "`trace` must be the dict returned by keras_gates.trace_gates (name -> "
            f"(batch, time, units) array); received {type(trace).__name__}."
        )
    for name, value in trace.items():
        if np.ndim(value) != 3:
            raise ValueError(
                f"`trace[{name!r}]` must be a (batch, time, units) array; received "
                f"shape {np.shape(value)}."
            )
    return trace


def _pick_gates(trace: Mapping[str, np.ndarray], gates: Sequence[str] | None):
    if gates is None:
        # The trace's own order: trace_gates returns the entries as the cell
        # declares them (GatedCell.trace_names).
        return [name for name in trace if name in GATE_TITLES]
    if isinstance(gates, str):
        gates = [gates]
    missing = [name for name in gates if name not in trace]
    if missing:
        raise ValueError(
            f"`gates` must name entries of the trace ({sorted(trace)}); received "
            f"{list(gates)}, with {missing} not in it."
        )
    return list(gates)


def plot_gate_heatmap(
    trace: Mapping[str, np.ndarray],
    tokens: Sequence[str] | None = None,
    gates: Sequence[str] | None = None,
    example: int = 0,
    max_units: int = 16,
    highlight: Sequence[int] = (),
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """One units x time heatmap per gate, for one example of a trace.

    Args:
        trace: ``keras_gates.trace_gates`` output (name -> (batch, time,
            units)).
        tokens: Optional labels of the time steps (the words of the text fed
            in); default the step numbers.
        gates: Which entries to draw, in order; default all of o, i, f,
            s_tilde, s, h that the trace has.
        example: Which row of the batch to draw.
        max_units: Draw at most this many units (the first ones).
        highlight: Time steps to outline (e.g. the marked numbers of the
            adding problem).
        title: Figure title.
        path: If given, also write the figure there as PNG.

    Returns:
        The matplotlib Figure. Masked steps (NaN gates) are left blank.

    Example:

    >>> trace = keras_gates.trace_gates(model, token_ids, layer="lstm")
    >>> plot_gate_heatmap(trace, tokens=tokenize(REVIEW), gates=["i", "f", "o"])
    """
    trace = _check_trace(trace)
    names = _pick_gates(trace, gates)
    batch, steps, units = np.shape(trace[names[0]])
    if not 0 <= example < batch:
        raise ValueError(
            f"`example` must be a batch index in [0, {batch}); received {example}."
        )
    if tokens is not None and len(tokens) != steps:
        raise ValueError(
            f"`tokens` must label every one of the {steps} time steps; received "
            f"{len(tokens)} tokens."
        )
    shown_units = min(units, max_units)
    width = min(max(6.0, 0.32 * steps + 2.5), 24.0)
    height = 0.6 + len(names) * max(1.3, 0.16 * shown_units + 0.6)
    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    for axis, name in zip(axes, names, strict=True):
        label, (low, high), cmap = GATE_TITLES.get(name, (name, (None, None), "gray"))
        values = np.asarray(trace[name], dtype="float64")[example, :, :shown_units].T
        image = axis.imshow(
            np.ma.masked_invalid(values),
            aspect="auto",
            cmap=cmap,
            vmin=low,
            vmax=high,
            interpolation="nearest",
        )
        axis.set_title(label, fontsize=9, loc="left")
        axis.set_ylabel("unit", fontsize=8)
        axis.tick_params(labelsize=7)
        for step in highlight:
            axis.axvline(step - 0.5, color="red", linewidth=0.8)
            axis.axvline(step + 0.5, color="red", linewidth=0.8)
        figure.colorbar(image, ax=axis, fraction=0.025, pad=0.01)
    if tokens is not None:
        axes[-1].set_xticks(range(steps))
        axes[-1].set_xticklabels(list(tokens), rotation=60, ha="right", fontsize=8)
    else:
        axes[-1].set_xlabel("time step t")
    if shown_units < units:
        figure.text(0.99, 0.0, f"first {shown_units} of {units} units", ha="right")
    if title:
        figure.suptitle(title, fontsize=11)
    return _save(figure, path)


def plot_gate_histograms(
    trace: Mapping[str, np.ndarray],
    gates: Sequence[str] | None = None,
    bins: int = 40,
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Histograms of each gate's values over the whole trace (all steps, units).

    Args:
        trace: ``keras_gates.trace_gates`` output, or several merged
            (``{"lstm i": ..., "gru i": ...}`` works too: any names).
        gates: Which entries; default every gate of the trace (o, i, f,
            s_tilde).
        bins: Histogram bins.
        title: Figure title.
        path: If given, also write the figure there as PNG.

    Returns:
        The matplotlib Figure. NaN (masked steps) are left out.

    Example:

    >>> plot_gate_histograms(keras_gates.trace_gates(layer, x), path="hist.png")
    """
    trace = _check_trace(trace)
    if gates is None:
        gates = [n for n in ("o", "i", "f", "s_tilde") if n in trace] or list(trace)
    names = _pick_gates(trace, gates)
    figure = Figure(figsize=(3.2 * len(names), 2.8), layout="constrained")
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    for axis, name in zip(axes, names, strict=True):
        values = np.asarray(trace[name], dtype="float64").ravel()
        values = values[np.isfinite(values)]
        label, (low, high), _ = GATE_TITLES.get(name, (name, (None, None), None))
        value_range = (low, high) if low is not None else None
        axis.hist(values, bins=bins, range=value_range, color="tab:blue")
        axis.set_title(label.split("  ")[0] + f"  mean {values.mean():.2f}", fontsize=9)
        axis.set_yscale("log")
        axis.tick_params(labelsize=7)
    axes[0].set_ylabel("count (log)")
    if title:
        figure.suptitle(title, fontsize=11)
    return _save(figure, path)


def plot_gradient_flow(
    flows: Mapping[str, Any],
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Gradient norm against distance, log scale, one curve per model.

    Args:
        flows: label -> ``gradient_flow`` result (a dict with ``distance``
            and ``norm``), or label -> a 1-D array of norms indexed by
            distance.
        title: Figure title.
        path: If given, also write the figure there as PNG.

    Returns:
        The matplotlib Figure.

    Example:

    >>> flows = {name: gradient_flow(model, x) for name, model in models.items()}
    >>> plot_gradient_flow(flows, path="gradient_flow.png")
    """
    if not isinstance(flows, Mapping) or not flows:
        raise TypeError(
            "`flows` must be a non-empty dict label -> gradient_flow result; "
            f"received {type(flows).__name__}."
        )
    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    axis = figure.subplots()
    tiny = np.finfo("float64").tiny
    for label, flow in flows.items():
        if isinstance(flow, Mapping):
            distance, norm = np.asarray(flow["distance"]), np.asarray(flow["norm"])
        else:
            norm = np.asarray(flow, dtype="float64")
            distance = np.arange(norm.shape[0])
        axis.semilogy(distance, np.maximum(norm, tiny), label=label, linewidth=1.6)
    axis.set_xlabel("distance d from the last step (k = T - 1 - d)")
    axis.set_ylabel("|| d loss_T / d x_k ||  (batch mean)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    axis.set_title(title or "Gradient flow back through time", fontsize=11)
    return _save(figure, path)
