"""Every `>>>` example in keras_gates' docstrings runs, as written.

One test per docstring with examples (doctest, ELLIPSIS and
NORMALIZE_WHITESPACE), run in a temporary folder so that an example that
writes a file (a plot's `path=`) writes there. Names an example takes as the
reader's own (a model, data) are small stand-ins (`stand_ins`). The docstrings
show values as plain Python; `BackendNeutralChecker` reads the TensorFlow
backend's and NumPy 2's reprs of the same values as such (`TensorShape([2, 8])`
is `(2, 8)`, `np.True_` is `True`), and a drawing function's Figure as the
picture an example does not print. Lines marked
`# doctest: +SKIP` in the docstring are not run (they need a cluster or a long
training run); a whole docstring is skipped only when listed in SKIPPED, with
its reason.
"""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil
import re

import keras
import numpy as np
import pytest

import keras_gates

SKIPPED = {
    # run() trains three models for minutes and writes saved_models/ and
    # TensorBoard logs: the demo's job. tests/test_demo.py runs it (quick, in a
    # temporary folder) and checks what it writes.
    "keras_gates.demo.run": "trains for minutes; tests/test_demo.py runs it",
}


def _docstring_tests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = []
    for info in pkgutil.walk_packages(keras_gates.__path__, "keras_gates."):
        module = importlib.import_module(info.name)
        found += [test for test in finder.find(module) if test.examples]
    return sorted(found, key=lambda test: test.name)


TESTS = {test.name: test for test in _docstring_tests()}


class BackendNeutralChecker(doctest.OutputChecker):
    """Plain-Python values in the docstring, whatever repr the backend gives."""

    PLAIN = [
        (re.compile(r"TensorShape\(\[([^\]]*)\]\)"), lambda m: f"({m[1]})"),
        (re.compile(r"np\.(True_|False_)"), lambda m: m[1].rstrip("_")),
        (re.compile(r"np\.(?:float|int)\d+\(([^)]*)\)"), lambda m: m[1]),
    ]
    FIGURE = re.compile(r"^<Figure size \S+ with \d+ Axes>\n$")

    def check_output(self, want, got, optionflags):
        if super().check_output(want, got, optionflags):
            return True
        if not want and self.FIGURE.match(got):
            return True  # a drawing function returns its Figure: the picture
        for pattern, plain in self.PLAIN:
            got = pattern.sub(plain, got)
        got = re.sub(r"\((\d+)\)", r"(\1,)", got) if want.endswith(",)\n") else got
        return super().check_output(want, got, optionflags)


def stand_ins() -> dict:
    """The names examples take as given: the reader's model, layer and data."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3)).astype("float32")
    # One id per token of plots.REVIEW, which plots' heatmap example labels.
    review_tokens = len(keras_gates.plots.tokenize(keras_gates.plots.REVIEW))
    layer = keras_gates.LSTM(4)
    layer.build((None, None, 3))
    text_model = keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(50, 8, mask_zero=True),
            keras_gates.LSTM(4, name="lstm"),
            keras.layers.Dense(1),
        ]
    )

    def small(recurrent):
        return keras.Sequential(
            [keras.Input((None, 3)), recurrent, keras.layers.Dense(1)]
        )

    return {
        "keras": keras,
        "np": np,
        "keras_gates": keras_gates,
        "x": x,
        "x_val": x,
        "layer": layer,
        "model": text_model,
        "REVIEW": "The lead actor.",
        "token_ids": np.arange(1, review_tokens + 1)[None],
        "gradient_flow": keras_gates.gradient_flow,
        "models": {
            "rnn": small(keras.layers.SimpleRNN(4)),
            "lstm": small(keras_gates.LSTM(4)),
        },
    }


def test_examples_were_found():
    modules = {name.rsplit(".", 1)[0] for name in TESTS}
    assert {"keras_gates.lstm", "keras_gates.gru", "keras_gates.convert"} <= modules
    assert set(SKIPPED) <= set(TESTS), set(SKIPPED) - set(TESTS)


@pytest.mark.parametrize("name", sorted(TESTS))
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    if name in SKIPPED:
        pytest.skip(SKIPPED[name])
    monkeypatch.chdir(tmp_path)
    test = TESTS[name]
    test.globs = {**stand_ins(), **test.globs}
    output = io.StringIO()
    runner = doctest.DocTestRunner(
        checker=BackendNeutralChecker(),
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    try:
        result = runner.run(test, out=output.write, clear_globs=False)
    finally:
        keras.backend.clear_session()
    assert result.failed == 0, output.getvalue()
