"""See the gates on your own text: an HTML view, each token coloured by a gate.

The lectures explain the LSTM as selective reading, writing and forgetting of
words; readers of such explanations look at the text itself coloured by the
network (Karpathy et al. 2015's cell-activation text, LSTMVis). ``GateView``
traces a keras_gates layer with ``keras_gates.trace_gates`` (so a model's own
mask, the state it feeds the layer and the layer it picks follow that
function's rules) and renders one self-contained HTML fragment:

- every step's token coloured by one quantity, chosen with a switch:
  ``i`` (i_t), ``f`` (f_t; the GRU's is 1 - i_t, the LSTM's with
  ``forget_gate=False`` is 1), ``o`` (o_t), ``delta_s`` (|s_t - s_{t-1}|, the
  previous step in reading order; s_{-1} is the initial state), ``s`` (s_t)
  and, for the LSTM, ``h`` (h_t);
- a unit picker: the mean over the units, or one unit, the units listed by
  how much they move (the sum of |s_t - s_{t-1}| over every step read);
- hovering a token shows every trace entry there (and in a line under the
  controls); a step the layer does not read (masked) is grey and dashed;
- one line per sentence, and the model's prediction under it when the model
  ends in a head ((batch, classes) output).

Colours (the page's script and this module apply the same rule; RGB channels
rounded half up): a gate v in [0, 1] mixes white into blue (33, 113, 181) by
v; ``delta_s`` mixes white into orange (230, 85, 13) by v / (the largest
shown value); ``s`` and ``h`` mix white into red (203, 24, 29) by v > 0 and
into blue by -v, clipped to 1. Text is white on a background whose
0.299 R + 0.587 G + 0.114 B is under 150.

The page holds its numbers as JSON in ``<script type="application/json"
class="kg-gate-data">`` (each float32 written in its shortest exact form; a
masked step is ``null``, its state being the one carried from the last step
read) and a small script that recolours the tokens. No network: no external
scripts, styles or fonts. The colours of the first quantity are also written
into the HTML, so a page shown without scripts (an untrusted notebook,
GitHub) is still coloured. A saved page reads ``#quantity=f&unit=3`` from its
address and sets its own controls to it (through their change events).

References: Karpathy, Johnson & Fei-Fei (2015), Visualizing and Understanding
Recurrent Networks; Strobelt et al. (2017), LSTMVis.
"""

from __future__ import annotations

import html
import json
import math
import numbers
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_gates.base import GatedCell
from keras_gates.introspection import trace_gates
from keras_gates.validation import describe

__all__ = ["GateView", "QUANTITIES", "token_colour"]

# Every quantity a view can colour by, in the switch's order (h: LSTM only).
QUANTITIES = ("i", "f", "o", "delta_s", "s", "h")
SYMBOLS = {
    "o": "o_t",
    "i": "i_t",
    "f": "f_t",
    "s_tilde": "s~_t",
    "s": "s_t",
    "h": "h_t",
    "delta_s": "|s_t - s_{t-1}|",
}
WHITE, BLUE, ORANGE, RED = (255, 255, 255), (33, 113, 181), (230, 85, 13), (203, 24, 29)
DARK = 150  # backgrounds darker than this (0.299 R + 0.587 G + 0.114 B) get white text


def _mix(towards: tuple[int, int, int], weight: float) -> tuple[int, int, int]:
    weight = min(max(weight, 0.0), 1.0)
    return tuple(math.floor(w + (t - w) * weight + 0.5) for w, t in zip(WHITE, towards))


def token_colour(quantity: str, value: float, largest: float = 1.0) -> tuple:
    """The background (r, g, b) of a token whose `quantity` is `value`.

    Args:
        quantity: One of ``QUANTITIES``.
        value: The shown value (one unit's, or the mean over units).
        largest: For ``delta_s``: the largest value shown in the view.

    Returns:
        (r, g, b) integers in [0, 255] (module docstring: the rule).

    Example:

    >>> keras_gates.gate_view.token_colour("i", 0.5)
    (144, 184, 218)
    """
    if quantity == "delta_s":
        return _mix(ORANGE, value / largest if largest > 0 else 0.0)
    if quantity in ("s", "h"):
        return _mix(RED, value) if value >= 0 else _mix(BLUE, -value)
    return _mix(BLUE, value)


def _text_colour(rgb: tuple[int, int, int]) -> str:
    light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return "rgb(255, 255, 255)" if light < DARK else "rgb(17, 17, 17)"


def _steps(
    trace: dict[str, np.ndarray], s_start: np.ndarray, backwards: bool, name: str
) -> np.ndarray:
    """(time, units) values of quantity `name` for one sentence's trace."""
    if name == "f" and "f" not in trace:
        # LSTM(forget_gate=False): s_t = s_{t-1} + i_t s~_t; GRU: f_t = 1 - i_t.
        return np.ones_like(trace["i"]) if "h" in trace else 1.0 - trace["i"]
    if name == "delta_s":
        s_t = trace["s"]
        start = s_start[None]
        if backwards:
            s_tm1 = np.concatenate([s_t[1:], start])
        else:
            s_tm1 = np.concatenate([start, s_t[:-1]])
        return np.abs(s_t - s_tm1)
    return trace[name]


def _json_rows(values: np.ndarray, read: np.ndarray) -> str:
    """(time, units) float32 as JSON: each number in its shortest exact form;
    a step not read is null."""
    rows = []
    for t, row in enumerate(values):
        if not read[t]:
            rows.append("null")
            continue
        numbers_ = ",".join("null" if math.isnan(v) else str(v) for v in row)
        rows.append(f"[{numbers_}]")
    return "[" + ",".join(rows) + "]"


def _safe_json(value: Any) -> str:
    """JSON that cannot close the <script> element it sits in."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _traced_layer(layer_or_model: Any, layer: Any) -> Any:
    """The layer `trace_gates` traces (it has validated the choice), for its
    direction and name; None where this module cannot tell."""
    if not isinstance(layer_or_model, keras.Model) or isinstance(
        layer_or_model, keras.layers.RNN
    ):
        return layer_or_model
    if isinstance(layer, keras.layers.Layer):
        return layer
    candidates, tags = [], {}
    for sub in layer_or_model.layers:
        candidates.append(sub)
        if isinstance(sub, keras.layers.Bidirectional):
            for direction in ("forward", "backward"):
                inner = getattr(sub, f"{direction}_layer")
                candidates.append(inner)
                tags[f"{sub.name}/{inner.name}"] = inner  # GateMonitor's tag
                tags[f"{sub.name}/{direction}"] = inner
    if layer is None:
        gated = [
            c for c in candidates if isinstance(getattr(c, "cell", None), GatedCell)
        ]
        return gated[0] if len(gated) == 1 else None
    if isinstance(layer, str):
        return tags.get(layer) or next((c for c in candidates if c.name == layer), None)
    if isinstance(layer, numbers.Integral):
        return layer_or_model.layers[int(layer)]
    return None


def _as_inputs(layer_or_model: Any, inputs: Any) -> tuple[Any, list[str] | None]:
    """What the model takes, and the texts when `inputs` are texts."""
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str):
        if not all(isinstance(text, str) for text in inputs):
            raise TypeError(
                f"`inputs` must be all texts or all token ids; received {inputs!r}."
            )
        texts = list(inputs)
        array = np.array(texts, dtype=object)
        model_inputs = getattr(layer_or_model, "inputs", None) or []
        if model_inputs and len(model_inputs[0].shape) == 2:
            array = array[:, None]  # a model that takes (batch, 1) strings
        return array, texts
    if isinstance(inputs, np.ndarray) and inputs.dtype.kind in "OSU":
        return inputs, [str(text) for text in np.asarray(inputs).reshape(len(inputs))]
    return (np.asarray(inputs) if isinstance(inputs, (list, tuple)) else inputs), None


def _vectorizer(model: Any) -> Any:
    for sub in getattr(model, "layers", []):
        if isinstance(sub, keras.layers.TextVectorization):
            return sub
    return None


def _check_texts(layer_or_model: Any, texts: list[str] | None, tokens: Any) -> None:
    if texts is not None and tokens is None and _vectorizer(layer_or_model) is None:
        raise ValueError(
            "`inputs` as texts need a model with its own TextVectorization layer "
            f"to split them; received texts for {type(layer_or_model).__name__} "
            f"'{getattr(layer_or_model, 'name', '')}', which has none. Pass token "
            "ids and `vocabulary` (or `tokens`)."
        )


def _tokens(
    layer_or_model: Any,
    inputs: Any,
    texts: list[str] | None,
    tokens: Any,
    vocabulary: Sequence[str] | None,
    shape: tuple[int, int],
) -> list[list[str]]:
    """One label per step of each sentence, checked against the traced shape."""
    batch, steps = shape
    if tokens is None and texts is not None:
        vectorize = _vectorizer(layer_or_model)
        vocabulary = vectorize.get_vocabulary()
        ids = keras.ops.convert_to_numpy(vectorize(np.array(texts, dtype=object)))
        tokens = [[str(vocabulary[i]) for i in row] for row in ids]
    elif tokens is None:
        values = np.asarray(keras.ops.convert_to_numpy(inputs))
        if values.ndim == 2 and values.dtype.kind in "iu":
            if vocabulary is not None:
                if values.size and not 0 <= values.min() <= values.max() < len(
                    vocabulary
                ):
                    raise ValueError(
                        f"`vocabulary` must name every token id of `inputs` (ids "
                        f"0..{len(vocabulary) - 1}); received ids from "
                        f"{values.min()} to {values.max()}."
                    )
                tokens = [[str(vocabulary[i]) for i in row] for row in values]
            else:
                tokens = [[str(i) for i in row] for row in values]
        else:  # floats into a layer: the step numbers
            tokens = [[str(t) for t in range(steps)] for _ in range(batch)]
    if isinstance(tokens, str) or not all(
        isinstance(row, Sequence) and not isinstance(row, str) for row in tokens
    ):
        raise TypeError(
            "`tokens` must be one list of strings per sentence (e.g. [['the', "
            f"'movie'], ...]); received {describe(tokens)}."
        )
    lengths = [len(row) for row in tokens]
    if len(tokens) != batch or any(length != steps for length in lengths):
        raise ValueError(
            f"`tokens` must hold one token per step of the traced inputs: {batch} "
            f"sentences of {steps} steps; received {len(tokens)} sentences of "
            f"{sorted(set(lengths))} tokens."
        )
    return [[str(token) for token in row] for row in tokens]


def _prediction_lines(
    layer_or_model: Any, inputs: Any, labels: Sequence[str] | None
) -> tuple[list[list[float]] | None, list[str] | None]:
    """The model's output per sentence and its line, when it ends in a head."""
    if not isinstance(layer_or_model, keras.Model) or isinstance(
        layer_or_model, keras.layers.RNN
    ):
        return None, None
    output = layer_or_model(inputs, training=False)
    if isinstance(output, (list, tuple, dict)):
        return None, None
    output = np.asarray(keras.ops.convert_to_numpy(output), dtype="float64")
    if output.ndim != 2:
        return None, None  # a sequence output (a tagger): no single answer
    classes = output.shape[1]
    wanted = 2 if classes == 1 else classes
    if labels is not None and len(labels) != wanted:
        raise ValueError(
            f"`labels` must name the model's {wanted} classes (two for a single "
            f"sigmoid output: the negative class, then the positive); received "
            f"{len(labels)} labels {list(labels)}."
        )
    lines = []
    for row in output:
        if classes == 1:
            name = f"P({labels[1]})" if labels is not None else "output"
            lines.append(f"{name} = {row[0]:.3f}")
        else:
            top = np.argsort(-row, kind="stable")[:3]
            lines.append(
                ", ".join(
                    f"{labels[k] if labels is not None else f'class {k}'} {row[k]:.3f}"
                    for k in top
                )
            )
    return output.tolist(), lines


class GateView:
    """An HTML view of a gated layer's gates on text, token by token.

    Args:
        layer_or_model: A built keras_gates ``LSTM``/``GRU``, or a model that
            holds one (as for ``keras_gates.trace_gates``).
        inputs: What the layer or model takes, one row per sentence: token
            ids, floats for a layer, or texts (a list of str; they go through
            the model's own ``TextVectorization``).
        tokens: Optional labels, one list per sentence with one token per step
            of the traced layer. Default: the TextVectorization's words for
            texts, ``vocabulary[id]`` for ids, else the ids or step numbers.
        vocabulary: Optional id -> token (a list), for token ids.
        layer: With a model: the traced layer, passed to ``trace_gates``.
        mask: Optional (sentences, time) booleans, passed to ``trace_gates``.
        initial_state: Optional initial state, passed to ``trace_gates``; its
            s is the s_{-1} of the first step's |s_t - s_{t-1}| (else a
            stateful layer's state, or zeros: a model that feeds the layer a
            state should pass that state here).
        labels: Optional class names of the model's head, for the
            prediction line (two for a single sigmoid output).
        quantity: The quantity shown first, one of ``QUANTITIES``.
        unit: The unit shown first, or None for the mean over the units.
        title: A heading; default the layer's kind, name and units.

    Attributes:
        trace: The ``trace_gates`` dict (sentences, time, units) shown.
        tokens: The labels, one list per sentence.
        read: (sentences, time) booleans, the steps the layer reads.
        quantities: The quantities this layer offers (no ``h`` for the GRU).
        movement: (units,) the sum of |s_t - s_{t-1}| over the steps read.
        ranking: The units ordered by ``movement``, largest first.
        predictions: The model's (sentences, classes) output, or None.
        s_start: (sentences, units) the s_{-1} before the first step read.
        backwards: Whether the traced layer reads the time axis backwards.
        kind: ``"LSTM"`` or ``"GRU"``; title: the heading.

    Example:

    >>> view = keras_gates.GateView(model, np.array([[4, 8, 15, 16, 0]]))
    >>> view.quantities
    ('i', 'f', 'o', 'delta_s', 's', 'h')
    >>> view.read.tolist()
    [[True, True, True, True, False]]
    >>> view.save("gates.html")  # a page that opens offline
    PosixPath('gates.html')
    """

    def __init__(
        self,
        layer_or_model: Any,
        inputs: Any,
        *,
        tokens: Sequence[Sequence[str]] | None = None,
        vocabulary: Sequence[str] | None = None,
        layer: Any = None,
        mask: Any = None,
        initial_state: Any = None,
        labels: Sequence[str] | None = None,
        quantity: str = "i",
        unit: int | None = None,
        title: str | None = None,
    ):
        inputs, texts = _as_inputs(layer_or_model, inputs)
        _check_texts(layer_or_model, texts, tokens)
        trace_layer = {} if layer is None else {"layer": layer}
        self.trace = trace_gates(
            layer_or_model,
            inputs,
            mask=mask,
            initial_state=initial_state,
            **trace_layer,
        )
        batch, steps, units = self.trace["s"].shape
        self.quantities = tuple(q for q in QUANTITIES if q != "h" or "h" in self.trace)
        if quantity not in self.quantities:
            raise ValueError(
                f"`quantity` must be one of {self.quantities}; received {quantity!r}."
            )
        if unit is not None and (
            isinstance(unit, bool)
            or not isinstance(unit, numbers.Integral)
            or not 0 <= unit < units
        ):
            raise ValueError(
                f"`unit` must be None (the mean over units) or a unit index in "
                f"[0, {units}); received {describe(unit)}."
            )
        self.quantity, self.unit = quantity, None if unit is None else int(unit)
        self.tokens = _tokens(
            layer_or_model, inputs, texts, tokens, vocabulary, (batch, steps)
        )
        self.read = ~np.isnan(self.trace["i"]).all(axis=-1)  # trace_gates' NaN
        target = _traced_layer(layer_or_model, layer)
        self.backwards = bool(getattr(target, "go_backwards", False))
        states = initial_state
        if states is None and getattr(target, "stateful", False):
            states = getattr(target, "states", None)  # where a stateful layer starts
        if states is None:
            self.s_start = np.zeros((batch, units), "float32")
        else:
            states = states if isinstance(states, (list, tuple)) else [states]
            self.s_start = np.asarray(
                keras.ops.convert_to_numpy(states[-1]), "float32"
            )  # the carried s: the last of [h, s] or [s]
        moved = np.stack([self._values(b, "delta_s") for b in range(batch)])
        self.movement = np.where(self.read[..., None], moved, 0.0).sum(axis=(0, 1))
        self.ranking = [int(u) for u in np.argsort(-self.movement, kind="stable")]
        self.predictions, self._prediction_lines = _prediction_lines(
            layer_or_model, inputs, labels
        )
        kind = "LSTM" if "h" in self.trace else "GRU"
        name = getattr(target, "name", None) or str(layer)
        self.title = title or f"{kind} '{name}' ({units} units)"
        self.kind = kind

    def _values(self, sentence: int, quantity: str) -> np.ndarray:
        one = {name: value[sentence] for name, value in self.trace.items()}
        return _steps(one, self.s_start[sentence], self.backwards, quantity)

    def _data(self) -> str:
        sentences = []
        for b in range(len(self.tokens)):
            entries = ",".join(
                f'"{name}":' + _json_rows(value[b], self.read[b])
                for name, value in self.trace.items()
            )
            meta = {
                "tokens": self.tokens[b],
                "read": self.read[b].tolist(),
                "prediction": None if self.predictions is None else self.predictions[b],
                "prediction_line": None
                if self._prediction_lines is None
                else self._prediction_lines[b],
            }
            sentences.append(
                _safe_json(meta)[:-1]
                + ',"s_start":'
                + _json_rows(self.s_start[b][None], np.ones(1, bool))[1:-1]
                + ',"trace":{'
                + entries
                + "}}"
            )
        head = {
            "format": "keras_gates.GateView/1",
            "kind": self.kind,
            "names": list(self.trace),
            "units": int(self.trace["s"].shape[-1]),
            "backwards": self.backwards,
            "quantities": list(self.quantities),
            "symbols": SYMBOLS,
            "quantity": self.quantity,
            "unit": self.unit,
            "ranking": self.ranking,
            "movement": [float(v) for v in self.movement],
        }
        return _safe_json(head)[:-1] + ',"sentences":[' + ",".join(sentences) + "]}"

    def _shown(self, sentence: int, quantity: str, unit: int | None) -> np.ndarray:
        values = np.asarray(self._values(sentence, quantity), "float64")
        return values.mean(axis=-1) if unit is None else values[:, unit]

    def _hover(self, sentence: int, step: int, unit: int | None) -> str:
        token = self.tokens[sentence][step]
        head = f"'{token}' step {step}"
        which = "mean over units" if unit is None else f"unit {unit}"
        if not self.read[sentence, step]:
            return f"{head}: masked (not read; the state is kept)"
        names = [*self.trace, *(["f"] if "f" not in self.trace else []), "delta_s"]
        lines = [
            f"{SYMBOLS[n]} = {self._shown(sentence, n, unit)[step]:.3f}" for n in names
        ]
        return "\n".join([head, *lines, f"({which})"])

    def _label(self, quantity: str) -> str:
        notes = {
            "i": "input gate (selective read)",
            "f": "forget gate (selective forget)",
            "o": "output gate (selective write)",
            "delta_s": "how much the token moved the state",
            "s": "state",
            "h": "output",
        }
        if quantity == "f" and "f" not in self.trace:
            notes["f"] = "= 1 (no forget gate)" if "h" in self.trace else "= 1 - i_t"
        if quantity == "o" and "h" not in self.trace:
            notes["o"] = "output gate (what of s_{t-1} reaches s~_t)"
        return f"{SYMBOLS[quantity]} {notes[quantity]}"

    def html(self) -> str:
        """The view as one HTML fragment (styles, data and script inline)."""
        view_id = f"kg-gate-view-{uuid.uuid4().hex[:12]}"
        shown = [
            self._shown(b, self.quantity, self.unit) for b in range(len(self.tokens))
        ]
        read_values = [
            v for b, values in enumerate(shown) for v in values[self.read[b]]
        ]
        largest = max(read_values, default=0.0)
        quantity_options = "".join(
            f'<option value="{q}"{" selected" if q == self.quantity else ""}>'
            f"{html.escape(self._label(q))}</option>"
            for q in self.quantities
        )
        unit_options = '<option value="mean">mean over units</option>' + "".join(
            f'<option value="{u}"{" selected" if u == self.unit else ""}>unit {u} '
            f"(moves {self.movement[u]:.2f})</option>"
            for u in self.ranking
        )
        lines = []
        for b, row in enumerate(self.tokens):
            spans = []
            for t, token in enumerate(row):
                text = html.escape(token) if token else "&middot;"
                hover = html.escape(self._hover(b, t, self.unit))
                if not self.read[b, t]:
                    spans.append(
                        f'<span class="kg-token kg-masked" data-step="{t}" '
                        f'title="{hover}">{text}</span>'
                    )
                    continue
                value = float(shown[b][t])
                rgb = token_colour(self.quantity, value, largest)
                spans.append(
                    f'<span class="kg-token" data-step="{t}" data-value="{value!r}" '
                    f'style="background-color: rgb{rgb}; color: {_text_colour(rgb)};" '
                    f'title="{hover}">{text}</span>'
                )
            prediction = ""
            if self._prediction_lines is not None:
                prediction = (
                    '<div class="kg-prediction">prediction: '
                    f"{html.escape(self._prediction_lines[b])}</div>"
                )
            lines.append(
                f'<div class="kg-sentence" data-sentence="{b}">'
                f'<div class="kg-tokens">{" ".join(spans)}</div>{prediction}</div>'
            )
        return (
            f'<div class="kg-gate-view" id="{view_id}" data-quantity="{self.quantity}" '
            f'data-unit="{"mean" if self.unit is None else self.unit}">'
            f"<style>{_CSS}</style>"
            f'<div class="kg-title">{html.escape(self.title)}</div>'
            '<div class="kg-controls">'
            f'<label>colour by <select class="kg-quantity">{quantity_options}'
            "</select></label> "
            f'<label>unit <select class="kg-unit">{unit_options}</select></label>'
            '<span class="kg-scale"></span></div>'
            '<div class="kg-info">hover a token to see its gates</div>'
            f"{''.join(lines)}"
            f'<script type="application/json" class="kg-gate-data">{self._data()}'
            "</script>"
            f"<script>({_JS})(document.getElementById({json.dumps(view_id)}));"
            "</script></div>"
        )

    def _repr_html_(self) -> str:
        return self.html()

    def save(self, path: str | Path) -> Path:
        """Write the view as a standalone HTML page (opens offline).

        Returns:
            The path written.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        page = (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title></head>"
            f'<body style="margin: 16px;">{self.html()}</body></html>\n'
        )
        path.write_text(page, encoding="utf-8")
        return path


_CSS = """
.kg-gate-view { font-family: system-ui, sans-serif; font-size: 14px;
  line-height: 2.1; color: #111; background: #fff; padding: 8px; }
.kg-gate-view .kg-title { font-weight: 600; }
.kg-gate-view .kg-controls { margin: 4px 0; }
.kg-gate-view .kg-controls select { font-size: 13px; margin-right: 12px; }
.kg-gate-view .kg-scale { font-size: 12px; color: #555; }
.kg-gate-view .kg-info { font-family: monospace; font-size: 12px; color: #333;
  white-space: pre-wrap; line-height: 1.4; min-height: 1.4em; margin: 4px 0; }
.kg-gate-view .kg-sentence { margin: 6px 0 10px 0; }
.kg-gate-view .kg-token { padding: 2px 3px; border-radius: 3px; cursor: default;
  border: 1px solid transparent; }
.kg-gate-view .kg-token.kg-masked { background: #f2f2f2; color: #999;
  border: 1px dashed #bbb; font-size: 11px; }
.kg-gate-view .kg-prediction { font-size: 12px; color: #444; line-height: 1.4; }
"""

# The page's script: recolours the tokens from the embedded data when a control
# changes; the address's #quantity=...&unit=... sets the controls (through their
# own change events).
_JS = r"""function (root) {
  var data = JSON.parse(root.querySelector("script.kg-gate-data").textContent);
  var quantity = root.querySelector("select.kg-quantity");
  var unit = root.querySelector("select.kg-unit");
  var info = root.querySelector(".kg-info");
  var scale = root.querySelector(".kg-scale");
  var colours = {gate: [33, 113, 181], delta_s: [230, 85, 13], plus: [203, 24, 29]};
  function mix(to, w) {
    w = Math.min(Math.max(w, 0), 1);
    return [0, 1, 2].map(function (c) {
      return Math.floor(255 + (to[c] - 255) * w + 0.5);
    });
  }
  function colour(q, v, largest) {
    if (q === "delta_s") return mix(colours.delta_s, largest > 0 ? v / largest : 0);
    if (q === "s" || q === "h") {
      return v >= 0 ? mix(colours.plus, v) : mix(colours.gate, -v);
    }
    return mix(colours.gate, v);
  }
  function steps(sentence, q) {
    var trace = sentence.trace;
    if (q === "f" && !trace.f) {
      return trace.i.map(function (row) {
        if (row === null) return null;
        return row.map(function (v) { return trace.h ? 1 : 1 - v; });
      });
    }
    if (q === "delta_s") {  /* s_{t-1}: the last step read before, in reading order */
      var s = trace.s, out = [], before = sentence.s_start, t;
      for (var k = 0; k < s.length; k++) {
        t = data.backwards ? s.length - 1 - k : k;
        if (s[t] === null) { out[t] = null; continue; }
        out[t] = s[t].map(function (v, u) { return Math.abs(v - before[u]); });
        before = s[t];
      }
      return out;
    }
    return trace[q];
  }
  function pick(row, which) {
    if (row === null) return null;
    if (which !== "mean") return row[Number(which)];
    var sum = 0;
    for (var u = 0; u < row.length; u++) sum += row[u];
    return sum / row.length;
  }
  var names = data.names.slice();
  if (names.indexOf("f") < 0) names.push("f");
  names.push("delta_s");
  function hover(sentence, every, t, which) {
    var head = "'" + sentence.tokens[t] + "' step " + t;
    if (!sentence.read[t]) return head + ": masked (not read; the state is kept)";
    var note = "(" + (which === "mean" ? "mean over units" : "unit " + which) + ")";
    var lines = names.map(function (n) {
      return data.symbols[n] + " = " + pick(every[n][t], which).toFixed(3);
    });
    return [head].concat(lines, [note]).join("\n");
  }
  function render() {
    var q = quantity.value, which = unit.value, shown = [], largest = 0;
    root.dataset.quantity = q;
    root.dataset.unit = which;
    data.sentences.forEach(function (sentence, b) {
      var rows = steps(sentence, q);
      shown[b] = rows.map(function (row, t) {
        var v = sentence.read[t] ? pick(row, which) : null;
        if (v !== null && v > largest) largest = v;
        return v;
      });
    });
    scale.textContent = q === "delta_s" ? "white 0 to orange " + largest.toFixed(3)
      : (q === "s" || q === "h") ? "blue -1, white 0, red +1" : "white 0 to blue 1";
    root.querySelectorAll(".kg-sentence").forEach(function (line) {
      var b = Number(line.dataset.sentence), sentence = data.sentences[b];
      var every = {};
      names.forEach(function (n) { every[n] = steps(sentence, n); });
      line.querySelectorAll(".kg-token").forEach(function (span) {
        var t = Number(span.dataset.step), v = shown[b][t];
        span.title = hover(sentence, every, t, which);
        if (v === null) return;
        var rgb = colour(q, v, largest);
        var light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2];
        span.dataset.value = String(v);
        span.style.backgroundColor = "rgb(" + rgb.join(", ") + ")";
        span.style.color = light < 150 ? "rgb(255, 255, 255)" : "rgb(17, 17, 17)";
      });
    });
  }
  quantity.addEventListener("change", render);
  unit.addEventListener("change", render);
  root.addEventListener("mouseover", function (event) {
    var target = event.target;
    if (target.classList.contains("kg-token")) info.textContent = target.title;
  });
  render();
  var wanted = {};
  location.hash.replace(/^#/, "").split("&").forEach(function (pair) {
    var kv = pair.split("=");
    try {
      if (kv.length === 2) {
        wanted[decodeURIComponent(kv[0])] = decodeURIComponent(kv[1]);
      }
    } catch (error) { /* not this view's address: ignored */ }
  });
  [[quantity, wanted.quantity], [unit, wanted.unit]].forEach(function (item) {
    var select = item[0], value = item[1];
    var known = Array.prototype.some.call(select.options, function (option) {
      return option.value === value;
    });
    if (value === undefined || !known) return;
    select.value = value;
    select.dispatchEvent(new Event("change"));
  });
}"""
