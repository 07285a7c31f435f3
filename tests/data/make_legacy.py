"""Writes legacy_lstm_gru.keras and its expected outputs (run ONCE, long ago).

The files in this folder were written by keras_gates 0.1 at commit 7f43805, the
last one with the lecture's own weight layout (LSTM [o | i | f | s~], GRU
[o | i | s~] with i = 1 - z), before the cells moved to Keras's layout. The
test `tests/test_dropin.py::test_legacy_keras_file_loads` loads them with
today's code. Rerunning this script with today's code would write a file in
the new layout, so it is kept for the record only:

    git worktree add --detach /tmp/legacy 7f43805
    PYTHONPATH=/tmp/legacy .venv/bin/python tests/data/make_legacy.py tests/data
"""

from __future__ import annotations

import json
import pathlib
import sys

import keras
import numpy as np

import keras_gates


def main(folder: str) -> None:
    out = pathlib.Path(folder)
    inputs = keras.Input((None, 2), name="x")
    lstm = keras_gates.LSTM(3, return_sequences=True, name="lstm")(inputs)
    no_forget = keras_gates.LSTM(
        3, forget_gate=False, return_sequences=True, name="lstm_no_forget"
    )(inputs)
    gru = keras_gates.GRU(3, return_sequences=True, name="gru")(inputs)
    model = keras.Model(inputs, [lstm, no_forget, gru], name="legacy")
    rng = np.random.default_rng(12)
    # Random weights everywhere, biases included, so a block order mistake shows.
    model.set_weights(
        [rng.normal(0.0, 0.6, w.shape).astype("float32") for w in model.get_weights()]
    )
    x = rng.normal(0.0, 1.0, (2, 5, 2)).astype("float32")
    outputs = model.predict(x, verbose=0)
    model.save(out / "legacy_lstm_gru.keras")
    np.save(out / "legacy_input.npy", x)
    for name, value in zip(("lstm", "lstm_no_forget", "gru"), outputs):
        np.save(out / f"legacy_{name}_output.npy", value)
    (out / "legacy_lstm_gru.json").write_text(
        json.dumps(
            {
                "written_by": "keras_gates at commit 7f43805 (lecture layout)",
                "keras": keras.__version__,
                "input": "legacy_input.npy",
                "outputs": {
                    name: f"legacy_{name}_output.npy"
                    for name in ("lstm", "lstm_no_forget", "gru")
                },
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main(sys.argv[1])
