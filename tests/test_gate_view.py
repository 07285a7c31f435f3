"""GateView: the numbers its HTML holds, and what a real browser shows.

Oracles: ``keras_gates.trace_gates`` called here for the numbers (the view's
embedded JSON, read back by parsing the HTML, must equal it); NumPy on that
trace for the derived quantities (f = 1 - i for the GRU, |s_t - s_{t-1}| in
reading order, the unit ranking); the colour rule of the module docstring,
written again here, for the colours. The browser is Debian's headless
Chromium (``apt-get install -y chromium``): it opens the saved page, whose
controls are set from the address (``#quantity=f&unit=3``) through their own
change events, and ``--dump-dom`` gives the recoloured page. Set
``KERAS_GATES_SCREENSHOT=path.png`` to keep the screenshot (the README's
picture, examples/gate_view.png, was made so).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from html.parser import HTMLParser

import keras
import numpy as np
import pytest
from conftest import VARIANTS

import keras_gates
from keras_gates.plots import REVIEW

CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason="the browser test needs headless Chromium at /usr/bin/chromium "
    "(Debian: apt-get install -y chromium); it is not installed",
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SENTENCES = [
    REVIEW,
    "A dull, dry film.",
    "The lead actor was amazing!",
]


class ViewParser(HTMLParser):
    """The parts of a view's HTML: root attributes, data, tokens, options."""

    def __init__(self):
        super().__init__()
        self.root, self.data_text, self.tokens, self.options = None, None, [], {}
        self._in_data = self._token = self._select = None
        self._sentence = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if "kg-gate-view" in classes:
            self.root = attrs
        if "kg-sentence" in classes:
            self._sentence = int(attrs["data-sentence"])
        if tag == "script" and "kg-gate-data" in classes:
            self._in_data = []
        if "kg-token" in classes:
            self._token = {**attrs, "sentence": self._sentence, "text": ""}
        if tag == "select":
            self._select = classes[0]
            self.options[self._select] = []
        if tag == "option":
            self.options[self._select].append(attrs["value"])

    def handle_endtag(self, tag):
        if tag == "script" and self._in_data is not None:
            self.data_text, self._in_data = "".join(self._in_data), None
        if tag == "span" and self._token is not None:
            self.tokens.append(self._token)
            self._token = None

    def handle_data(self, data):
        if self._in_data is not None:
            self._in_data.append(data)
        if self._token is not None:
            self._token["text"] += data


def parse(markup: str) -> ViewParser:
    parser = ViewParser()
    parser.feed(markup)
    assert parser.root is not None and parser.data_text, "no gate view in the HTML"
    return parser


def embedded(markup: str) -> dict:
    """The view's JSON, each trace entry as a float32 (time, units) array."""
    data = json.loads(parse(markup).data_text)
    units = data["units"]
    for sentence in data["sentences"]:
        for name, rows in sentence["trace"].items():
            sentence["trace"][name] = np.array(
                [
                    [math.nan] * units
                    if row is None
                    else [math.nan if v is None else v for v in row]
                    for row in rows
                ],
                dtype="float64",
            ).astype("float32")
    return data


def assert_embedded_trace_is(markup: str, want: dict) -> dict:
    """Read steps hold trace_gates' numbers, exactly; masked steps nothing
    (their state is the one carried, which the page does not repeat)."""
    data = embedded(markup)
    assert data["names"] == list(want)
    read = ~np.isnan(want["i"]).all(-1)
    for b, sentence in enumerate(data["sentences"]):
        for name, value in want.items():
            # Exact: each float32 is written in its shortest exact form.
            expected = np.where(read[b][:, None], value[b], np.float32("nan"))
            np.testing.assert_array_equal(sentence["trace"][name], expected, name)
    return data


def randomize(model: keras.Model, seed: int = 0, scale: float = 0.8) -> None:
    rng = np.random.default_rng(seed)
    model.set_weights(
        [rng.normal(scale=scale, size=w.shape).astype(w.dtype) for w in model.weights]
    )


def id_model(variant: str, units: int = 5, classes: int = 3, **kwargs):
    layer_class, _, extra = VARIANTS[variant]
    model = keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(20, 4, mask_zero=True),
            layer_class(units, name="rnn", **extra, **kwargs),
            keras.layers.Dense(classes, activation="softmax", name="head"),
        ]
    )
    randomize(model)
    return model


def text_model(variant: str, units: int = 6, **kwargs):
    vectorize = keras.layers.TextVectorization(output_sequence_length=24)
    vectorize.adapt(SENTENCES)
    layer_class, _, extra = VARIANTS[variant]
    model = keras.Sequential(
        [
            keras.Input((1,), dtype="string"),
            vectorize,
            keras.layers.Embedding(vectorize.vocabulary_size(), 6, mask_zero=True),
            layer_class(units, name="rnn", **extra, **kwargs),
            keras.layers.Dense(1, activation="sigmoid", name="head"),
        ]
    )
    randomize(model, seed=3, scale=1.0)
    return model


IDS = np.array([[3, 7, 1, 9, 0, 0], [0, 0, 4, 4, 12, 5], [8, 0, 2, 0, 19, 6]])


def mix(towards, weight):
    weight = min(max(weight, 0.0), 1.0)
    return tuple(math.floor(255 + (c - 255) * weight + 0.5) for c in towards)


def expected_colour(quantity, value, largest):
    """The module docstring's rule, written again."""
    blue, orange, red = (33, 113, 181), (230, 85, 13), (203, 24, 29)
    if quantity == "delta_s":
        return mix(orange, value / largest)
    if quantity in ("s", "h"):
        return mix(red, value) if value >= 0 else mix(blue, -value)
    return mix(blue, value)


def rgb(style: str) -> tuple[int, ...]:
    inside = style.split("background-color: rgb(")[1].split(")")[0]
    return tuple(int(c) for c in inside.split(","))


def quantity_steps(trace, b, quantity, s_start, backwards):
    """NumPy on the trace: the (time, units) values of `quantity`."""
    if quantity == "f" and "f" not in trace:
        i_t = trace["i"][b]
        return np.ones_like(i_t) if "h" in trace else 1.0 - i_t
    if quantity == "delta_s":
        s = trace["s"][b].astype("float64")
        steps = len(s)
        order = range(steps - 1, -1, -1) if backwards else range(steps)
        out, before = np.empty_like(s), np.asarray(s_start, "float64")
        for t in order:
            out[t] = np.abs(s[t] - before)
            before = s[t]
        return out
    return trace[quantity][b]


def assert_colours(tokens, trace, quantity, unit, read, s_start=None, backwards=False):
    """Every read token's colour is the rule applied to the trace's value."""
    units = trace["s"].shape[-1]
    s_start = np.zeros((len(read), units)) if s_start is None else s_start
    shown = []
    for b in range(len(read)):
        values = quantity_steps(trace, b, quantity, s_start[b], backwards)
        values = np.asarray(values, "float64")
        shown.append(values.mean(-1) if unit is None else values[:, unit])
    largest = max(v for b, row in enumerate(shown) for v in row[read[b]])
    checked = 0
    for token in tokens:
        b, t = token["sentence"], int(token["data-step"])
        if not read[b, t]:
            assert "kg-masked" in token["class"] and "background" not in token.get(
                "style", ""
            )
            continue
        want = expected_colour(quantity, shown[b][t], largest)
        got = rgb(token["style"])
        # One channel step: a mean summed in another order can round apart.
        assert max(abs(g - w) for g, w in zip(got, want)) <= 1, (b, t, got, want)
        checked += 1
    assert checked == read.sum()
    return shown


@pytest.mark.parametrize("mask", ["model", "explicit"])
def test_html_numbers_equal_trace_gates(variant, mask):
    model = id_model(variant)
    explicit = None if mask == "model" else np.array(IDS % 3 != 1)
    want = keras_gates.trace_gates(model, IDS, layer="rnn", mask=explicit)
    view = keras_gates.GateView(model, IDS, layer="rnn", mask=explicit)
    markup = view._repr_html_()
    data = assert_embedded_trace_is(markup, want)
    read = ~np.isnan(want["i"]).all(-1)
    assert [s["read"] for s in data["sentences"]] == read.tolist()
    assert data["kind"] == ("LSTM" if "h" in want else "GRU")
    # Ids are the tokens without a vocabulary; the model's head predicts.
    assert [s["tokens"] for s in data["sentences"]] == IDS.astype(str).tolist()
    head = keras.ops.convert_to_numpy(model(IDS, training=False))
    np.testing.assert_allclose(
        [s["prediction"] for s in data["sentences"]], head, rtol=1e-6
    )
    # Units ranked by the sum over read steps of |s_t - s_{t-1}|.
    moved = sum(
        np.where(read[b][:, None], quantity_steps(want, b, "delta_s", 0, False), 0)
        for b in range(len(IDS))
    ).sum(0)
    np.testing.assert_allclose(data["movement"], moved, rtol=1e-6)
    assert data["ranking"] == sorted(range(5), key=lambda u: (-moved[u], u))
    # The colours written into the HTML (shown without scripts) follow the rule.
    assert_colours(parse(markup).tokens, want, "i", None, read)


def test_one_unit_and_derived_quantities_colour_the_html(variant):
    model = id_model(variant, go_backwards=True)
    want = keras_gates.trace_gates(model, IDS, layer="rnn")
    read = ~np.isnan(want["i"]).all(-1)
    for quantity in ("f", "delta_s", "s"):
        view = keras_gates.GateView(model, IDS, quantity=quantity, unit=2)
        assert view.backwards
        assert_colours(
            parse(view.html()).tokens, want, quantity, 2, read, backwards=True
        )


def test_texts_through_the_models_text_vectorization():
    model = text_model("lstm")
    texts = np.array(SENTENCES, dtype=object)[:, None]
    want = keras_gates.trace_gates(model, texts, layer="rnn")
    view = keras_gates.GateView(model, SENTENCES, labels=["negative", "positive"])
    data = assert_embedded_trace_is(view.html(), want)
    words = model.layers[0].get_vocabulary()
    ids = keras.ops.convert_to_numpy(model.layers[0](np.array(SENTENCES)))
    assert [s["tokens"] for s in data["sentences"]] == [
        [words[i] for i in row] for row in ids
    ]
    assert data["sentences"][1]["tokens"][:4] == ["a", "dull", "dry", "film"]
    p = keras.ops.convert_to_numpy(model(texts))[:, 0]
    assert data["sentences"][2]["prediction_line"] == f"P(positive) = {p[2]:.3f}"
    assert f"prediction: P(positive) = {p[0]:.3f}" in view.html()


def test_vocabulary_names_the_ids_and_initial_state_starts_delta_s():
    layer_class, _, extra = VARIANTS["gru"]
    layer = layer_class(4)
    layer.build((None, None, 3))
    x = np.random.default_rng(5).normal(size=(2, 4, 3)).astype("float32")
    s_0 = np.random.default_rng(6).normal(size=(2, 4)).astype("float32")
    want = keras_gates.trace_gates(layer, x, initial_state=[s_0])
    view = keras_gates.GateView(layer, x, initial_state=[s_0], quantity="delta_s")
    data = assert_embedded_trace_is(view.html(), want)
    np.testing.assert_array_equal(
        np.float32([s["s_start"] for s in data["sentences"]]), s_0
    )
    assert data["sentences"][0]["tokens"] == ["0", "1", "2", "3"]  # step numbers
    assert data["sentences"][0]["prediction"] is None  # a layer has no head
    read = np.ones((2, 4), bool)
    assert_colours(parse(view.html()).tokens, want, "delta_s", None, read, s_0)

    model = id_model("lstm")
    vocabulary = [f"w{i}" for i in range(20)]
    view = keras_gates.GateView(model, IDS, vocabulary=vocabulary)
    assert view.tokens[0][:2] == ["w3", "w7"]


def test_a_stateful_layer_starts_delta_s_from_its_state():
    layer = keras_gates.GRU(4, stateful=True)
    x = np.random.default_rng(7).normal(size=(2, 3, 3)).astype("float32")
    layer(x)  # now its state is the end of x
    state = keras.ops.convert_to_numpy(layer.states[0])
    assert np.abs(state).max() > 0.05
    want = keras_gates.trace_gates(layer, x)
    view = keras_gates.GateView(layer, x, quantity="delta_s", unit=0)
    data = assert_embedded_trace_is(view.html(), want)
    np.testing.assert_array_equal(
        np.float32([s["s_start"] for s in data["sentences"]]), state
    )
    read = np.ones((2, 3), bool)
    assert_colours(parse(view.html()).tokens, want, "delta_s", 0, read, state)


def test_a_sub_layer_of_a_bidirectional_traced_with_its_mask():
    # trace_gates traces one direction at a time: here the backward layer, on
    # what the model feeds it (the embedding) and the model's mask.
    embedding = keras.layers.Embedding(20, 4, mask_zero=True)
    bidi = keras.layers.Bidirectional(keras_gates.LSTM(3, name="lstm"))
    model = keras.Sequential([keras.Input((None,), dtype="int32"), embedding, bidi])
    randomize(model)
    features = keras.ops.convert_to_numpy(embedding(IDS))
    for direction in (bidi.forward_layer, bidi.backward_layer):
        want = keras_gates.trace_gates(direction, features, mask=IDS != 0)
        view = keras_gates.GateView(direction, features, mask=IDS != 0, unit=1)
        data = assert_embedded_trace_is(view.html(), want)
        assert data["backwards"] == direction.go_backwards
        assert_colours(
            parse(view.html()).tokens,
            want,
            "i",
            1,
            IDS != 0,
            backwards=direction.go_backwards,
        )
    try:  # a model's Bidirectional direction, where trace_gates looks it up
        want = keras_gates.trace_gates(model, IDS, layer=bidi.backward_layer)
    except (TypeError, ValueError) as error:
        pytest.skip(f"trace_gates does not trace a Bidirectional's direction: {error}")
    view = keras_gates.GateView(model, IDS, layer=bidi.backward_layer)
    assert embedded(view.html())["backwards"]
    assert_embedded_trace_is(view.html(), want)


def test_save_writes_a_standalone_page(tmp_path):
    tokens = [["</script>", "<b>&", '"x"', "y", "z", "w"]] * 3
    view = keras_gates.GateView(id_model("lstm"), IDS, tokens=tokens)
    path = view.save(tmp_path / "sub" / "view.html")
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for network in ("http:", "https:", "src=", "href=", "@import", "url(", "//"):
        assert network not in page, network
    assert len(page) < 40_000, len(page)
    data = embedded(page)
    assert data["sentences"][0]["tokens"] == tokens[0]  # escaped, then read back
    assert [t["text"] for t in parse(page).tokens][:3] == tokens[0][:3]


def test_bad_input_names_the_argument():
    model = id_model("gru")
    wrong_length = r"`tokens` must hold one token per step.*3 sentences of 6 steps; "
    with pytest.raises(ValueError, match=wrong_length + r"received 3 .* of \[5\]"):
        keras_gates.GateView(model, IDS, tokens=[["a"] * 5] * 3)
    with pytest.raises(ValueError, match="`tokens`.*received 1 sentences"):
        keras_gates.GateView(model, IDS, tokens=[["a"] * 6])
    with pytest.raises(TypeError, match="`tokens` must be one list of strings"):
        keras_gates.GateView(model, IDS, tokens="a b c")
    with pytest.raises(
        ValueError,
        match=r"`quantity` must be one of \('i', 'f', 'o', 'delta_s', "
        r"'s'\); received 'h'",
    ):
        keras_gates.GateView(model, IDS, quantity="h")  # a GRU has no h
    with pytest.raises(ValueError, match=r"`unit` must be None.*\[0, 5\); received 5"):
        keras_gates.GateView(model, IDS, unit=5)
    with pytest.raises(ValueError, match="`labels` must name the model's 3 classes"):
        keras_gates.GateView(model, IDS, labels=["a", "b"])
    with pytest.raises(ValueError, match=r"`vocabulary` must name every token id"):
        keras_gates.GateView(model, IDS, vocabulary=["a", "b"])
    with pytest.raises(ValueError, match="`inputs` as texts need a model with its"):
        keras_gates.GateView(model, ["no vectorizer here"])
    builtin = keras.Sequential(
        [keras.Input((None, 2)), keras.layers.LSTM(3, name="plain")]
    )
    x = np.zeros((1, 3, 2), "float32")
    # trace_gates' one way of finding a layer says there is none to select
    with pytest.raises(ValueError, match=r"`layer` must select a keras_gates.*'plain'"):
        keras_gates.GateView(builtin, x, layer="plain")
    with pytest.raises(ValueError, match=r"`layer`.*has none"):
        keras_gates.GateView(builtin, x)
    with pytest.raises(TypeError, match="`layer_or_model` must be a keras_gates"):
        keras_gates.GateView(keras.layers.Dense(2), x)


def chromium(tmp_path, url, *flags):
    result = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *flags, url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@needs_chromium
@pytest.mark.parametrize(
    "kind, backwards", [("lstm", False), ("lstm_no_forget", False), ("gru", True)]
)
def test_a_browser_switches_quantity_and_unit_through_the_controls(
    kind, backwards, tmp_path
):
    from PIL import Image  # matplotlib's dependency

    model = text_model(kind, go_backwards=backwards)
    texts = np.array(SENTENCES, dtype=object)[:, None]
    want = keras_gates.trace_gates(model, texts, layer="rnn")
    read = ~np.isnan(want["i"]).all(-1)
    view = keras_gates.GateView(model, SENTENCES, labels=["negative", "positive"])
    markup = view.html()
    page = view.save(tmp_path / "view.html")
    url = page.as_uri()

    # No address: the script recolours the first quantity as the HTML has it.
    static = parse(markup)
    dumped = parse(chromium(tmp_path, url, "--dump-dom"))
    assert dumped.root["data-quantity"] == "i" and dumped.root["data-unit"] == "mean"
    for got, written in zip(dumped.tokens, static.tokens, strict=True):
        assert got.get("style") == written.get("style")
        assert got["title"] == written["title"]
    assert_colours(dumped.tokens, want, "i", None, read)

    # The address sets the controls; their change events recolour the tokens.
    unit = view.ranking[0]  # the unit that moves most: first in the picker
    assert static.options["kg-unit"][:2] == ["mean", str(unit)]
    for quantity in ("f", "delta_s", "o"):
        dumped = parse(chromium(tmp_path, f"{url}#quantity={quantity}&unit={unit}",
                                "--dump-dom"))  # fmt: skip
        assert dumped.root["data-quantity"] == quantity
        assert dumped.root["data-unit"] == str(unit)
        shown = assert_colours(
            dumped.tokens, want, quantity, unit, read, backwards=backwards
        )
    # Hovering shows every entry at that step, for the chosen unit.
    token = next(t for t in dumped.tokens if "kg-masked" not in t["class"])
    b, t = token["sentence"], int(token["data-step"])
    for name in want:
        symbol = keras_gates.gate_view.SYMBOLS[name]
        assert f"{symbol} = {want[name][b, t, unit]:.3f}" in token["title"]
    masked = next(t for t in dumped.tokens if "kg-masked" in t["class"])
    assert masked["title"].endswith(": masked (not read; the state is kept)")

    # Two tokens whose o_t differ are painted in different colours on screen.
    screenshot = tmp_path / "view.png"
    chromium(tmp_path, f"{url}#quantity=o&unit={unit}", f"--screenshot={screenshot}",
             "--window-size=1000,360", "--hide-scrollbars")  # fmt: skip
    pixels = Image.open(screenshot).convert("RGB")
    colours = {colour for _, colour in pixels.getcolors(maxcolors=1 << 20)}
    assert len(colours) > 50, "the screenshot is blank"
    painted = [tk for tk in dumped.tokens if "kg-masked" not in tk["class"]]
    values = [shown[tk["sentence"]][int(tk["data-step"])] for tk in painted]
    low, high = painted[int(np.argmin(values))], painted[int(np.argmax(values))]
    assert max(values) - min(values) > 0.05
    assert rgb(low["style"]) != rgb(high["style"])
    assert {rgb(low["style"]), rgb(high["style"])} <= colours
    if kind == "lstm" and os.environ.get("KERAS_GATES_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["KERAS_GATES_SCREENSHOT"])
