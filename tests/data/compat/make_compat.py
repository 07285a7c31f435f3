"""Writes the `.keras` files that tests/test_serialization.py loads across Keras.

Run once with each end of the declared range (each run writes files named
after its Keras minor version, and records the versions in a manifest):

    # newest: the project's venv (TF 2.21, Keras 3.15)
    .venv/bin/python tests/data/compat/make_compat.py
    # oldest: TF 2.20 + Keras 3.13 in a venv of its own
    python3 -m venv /tmp/venv-old
    /tmp/venv-old/bin/pip install "tensorflow==2.20.*" "keras==3.13.*" \\
        "tensorboard==2.20.*" "tensorflow-serving-api==2.20.*" matplotlib
    PYTHONPATH=. /tmp/venv-old/bin/python tests/data/compat/make_compat.py
    # and once with Keras 3.14 (TF 2.21), for the README table's middle column:
    #   pip install "tensorflow==2.21.*" "keras==3.14.*" ... in a third venv

Files written 2026-12-02 with keras_gates at the commit that added them; the
manifest records each file's Keras and TensorFlow versions.

Two models per Keras: keras_gates layers plus a Dense (`gates`), and the same
shape built from keras.layers.LSTM (`builtin`), which tells a keras_gates
problem from a Keras one. Beside each file, its outputs on a fixed input.
"""

from __future__ import annotations

import json
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_gates  # noqa: E402

HERE = pathlib.Path(__file__).parent


def models() -> dict[str, keras.Model]:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, 3), name="x")
    hidden = keras_gates.LSTM(4, return_sequences=True, name="lstm")(inputs)
    hidden = keras_gates.GRU(3, name="gru")(hidden)
    gates = keras.Model(inputs, keras.layers.Dense(1, name="dense")(hidden))
    builtin = keras.Sequential(
        [keras.Input((None, 3)), keras.layers.LSTM(4), keras.layers.Dense(1)]
    )
    return {"gates": gates, "builtin": builtin}


def main() -> None:
    version = ".".join(keras.__version__.split(".")[:2])
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype("float32")
    np.save(HERE / "input.npy", x)
    manifest_path = HERE / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    files = {}
    for name, model in models().items():
        stem = f"{name}_keras-{version}"
        model.save(HERE / f"{stem}.keras")
        np.save(HERE / f"{stem}_output.npy", np.asarray(model(x)))
        files[name] = {"file": f"{stem}.keras", "output": f"{stem}_output.npy"}
    manifest[version] = {
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "files": files,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"wrote {sorted(files)} with Keras {keras.__version__}, TF {tf.__version__}")


if __name__ == "__main__":
    main()
