"""Every instruction in the README is run here, or marked in the README as not run.

Each fenced code block of README.md is one of:
- a Python block, run here top to bottom in a temporary folder, with the few
  names it leaves to the reader (`model`, `x`, `token_ids`, ...) bound to small
  stand-ins below (SETUP: only inputs, never the code under test);
- a block preceded by `<!-- run by: tests/test_X.py ... -->`: another test runs
  that instruction (the file must exist);
- a block preceded by `<!-- not run: reason -->` (two machines, a Docker
  server, a signature summary, ...).

Code shown to users that nobody ran is how the multi-worker recipe came to fail.
"""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_gates

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.S | re.M)
MARKER = re.compile(r"<!--\s*(not run|run by):\s*(.+?)\s*-->")


def blocks() -> list[tuple[int, str, str, tuple[str, str] | None]]:
    """(line, language, code, marker) for every fenced block of the README."""
    text = (ROOT / "README.md").read_text()
    found = []
    for match in FENCE.finditer(text):
        line = text[: match.start()].count("\n") + 1
        before = [s for s in text[: match.start()].splitlines() if s.strip()]
        marker = MARKER.search(before[-1]) if before else None
        indent = len(match.group(1))
        code = "\n".join(s[indent:] for s in match.group(3).splitlines())
        found.append((line, match.group(2), code, marker.groups() if marker else None))
    return found


def _float_model(units=2, features=3):
    model = keras.Sequential(
        [keras.Input((None, features)), keras_gates.LSTM(units), keras.layers.Dense(1)]
    )
    model.compile("sgd", "mse")
    return model


def _data(rows=8, time=4, features=3, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(rows, time, features)).astype("float32"),
        rng.normal(size=(rows, 1)).astype("float32"),
    )


def _trace_inputs():
    from keras_gates import plots

    words = len(plots.tokenize(plots.REVIEW))
    return {"token_ids": np.random.default_rng(0).integers(1, 100, (2, words))}


def _builtin_model():
    return {
        "trained_model": keras.Sequential(
            [keras.Input((None, 3)), keras.layers.LSTM(4, name="lstm")]
        )
    }


def _fit_inputs():
    x, y = _data()
    x_val, y_val = _data(seed=1)
    return {"model": _float_model(), "x": x, "y": y, "x_val": x_val, "y_val": y_val}


# first line of a block -> the names it leaves to the reader
SETUP = {
    "trace = keras_gates.trace_gates(model, token_ids": _trace_inputs,
    "ours = keras_gates.from_keras(trained_model": _builtin_model,
    "monitor = keras_gates.GateMonitor(": _fit_inputs,
    'keras_gates.export_for_serving(model, "saved_models"': lambda: {
        "model": _float_model()
    },
    "callback = keras_gates.ExactBackupAndRestore(": _fit_inputs,
}

BLOCKS = blocks()


def test_every_block_is_run_or_marked():
    unmarked_shell = [
        line
        for line, language, _, marker in BLOCKS
        if language != "python" and not marker
    ]
    assert not unmarked_shell, (
        "README shell blocks without `<!-- run by: ... -->` or `<!-- not run: "
        f"reason -->` before them, at lines {unmarked_shell}"
    )
    for line, _, _, marker in BLOCKS:
        if marker and marker[0] == "run by":
            test_file = marker[1].split()[0]
            assert (ROOT / test_file).is_file(), f"line {line}: no {test_file}"
        if marker and marker[0] == "not run":
            assert len(marker[1]) > 10, f"line {line}: say why it is not run"


@pytest.mark.parametrize(
    "line, code",
    [
        pytest.param(line, code, id=f"line{line}")
        for line, language, code, marker in BLOCKS
        if language == "python" and not marker
    ],
)
def test_python_block_runs(line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"keras": keras, "keras_gates": keras_gates, "np": np}
    for needle, setup in SETUP.items():
        if needle in code:
            namespace.update(setup())
    exec(compile(code, f"README.md:{line}", "exec"), namespace)
