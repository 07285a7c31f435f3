"""Config and `.keras` round trips; the file loads in a fresh Python process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import VARIANTS, as_numpy, make_layer

import keras_gates

NON_DEFAULT = dict(
    activation="relu",
    recurrent_activation="hard_sigmoid",
    use_bias=True,
    kernel_initializer=keras.initializers.RandomNormal(stddev=0.3, seed=1),
    recurrent_initializer="glorot_normal",
    bias_initializer="ones",
    kernel_regularizer=keras.regularizers.L2(1e-3),
    recurrent_regularizer="l1",
    bias_regularizer=None,
    activity_regularizer="l2",
    kernel_constraint=keras.constraints.MaxNorm(3.0),
    recurrent_constraint="non_neg",
    bias_constraint=None,
    dropout=0.2,
    recurrent_dropout=0.1,
    seed=11,
    return_sequences=True,
    return_state=True,
    go_backwards=True,
    stateful=False,
    unroll=True,
    zero_output_for_mask=True,
    name="custom_name",
)


def test_layer_config_round_trip(variant):
    layer_class, _, extra = VARIANTS[variant]
    layer = layer_class(9, **extra, **NON_DEFAULT)
    config = layer.get_config()
    json.dumps(config)  # plain JSON, as `.keras` files store it
    clone = layer_class.from_config(config)
    assert clone.get_config() == config
    for name in (
        "units",
        "dropout",
        "recurrent_dropout",
        "seed",
        "go_backwards",
        "unroll",
    ):
        assert getattr(clone, name) == getattr(layer, name)
    assert keras.activations.serialize(clone.activation) == "relu"
    if "forget_gate" in extra:
        assert clone.forget_gate is False


def test_cell_config_round_trip():
    for cell in (
        keras_gates.LSTMCell(4, forget_gate=False, unit_forget_bias=False),
        keras_gates.GRUCell(4, dropout=0.3),
    ):
        config = keras.saving.serialize_keras_object(cell)
        assert config["registered_name"].startswith("keras_gates>")
        clone = keras.saving.deserialize_keras_object(config)
        assert clone.get_config() == cell.get_config()


def test_generic_serialization_without_custom_objects(variant):
    layer = make_layer(variant, 3, 2)
    config = keras.layers.serialize(layer)
    clone = keras.layers.deserialize(config)
    assert type(clone) is type(layer)


def _model(variant):
    layer_class, _, extra = VARIANTS[variant]
    inputs = keras.Input((None, 3))
    x = keras.layers.Masking(0.0)(inputs)
    x = keras.layers.Bidirectional(layer_class(5, return_sequences=True, **extra))(x)
    x = layer_class(4, **extra)(x)
    outputs = keras.layers.Dense(2)(x)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "mse")
    return model


def test_keras_file_loads_in_fresh_process(variant, tmp_path):
    model = _model(variant)
    x = np.random.default_rng(0).normal(size=(3, 6, 3)).astype("float32")
    x[0, 4:] = 0.0  # right padding that Masking turns into a mask
    model.fit(x, np.ones((3, 2)), epochs=1, verbose=0)  # optimizer state too
    path = tmp_path / "model.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", as_numpy(model(x)))
    script = textwrap.dedent(
        f"""
        import numpy as np, keras
        import keras_gates  # registers the classes: no custom_objects needed
        model = keras.saving.load_model({str(path)!r})
        got = keras.ops.convert_to_numpy(model(np.load({str(tmp_path / "x.npy")!r})))
        np.testing.assert_allclose(got, np.load({str(tmp_path / "want.npy")!r}),
                                   rtol=1e-6, atol=1e-6)
        kinds = sorted({{type(l).__module__.split('.')[0] for l in model.layers}})
        print("OK", kinds)
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


def test_keras_file_without_import_names_the_package(tmp_path):
    """Without `import keras_gates`, Keras says which package is missing."""
    layer = make_layer("lstm", 3, 2)
    model = keras.Sequential([keras.Input((None, 2)), layer])
    path = tmp_path / "m.keras"
    model.save(path)
    script = f"import keras; keras.saving.load_model({str(path)!r})"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert "keras_gates>LSTM" in result.stderr


@pytest.mark.parametrize("cells", ["lstm_gru"])
def test_stacked_cells_round_trip(cells, tmp_path):
    layer = keras.layers.RNN(
        [keras_gates.LSTMCell(4), keras_gates.GRUCell(3)], return_sequences=True
    )
    model = keras.Sequential([keras.Input((None, 2)), layer])
    x = np.random.default_rng(0).normal(size=(2, 5, 2)).astype("float32")
    want = as_numpy(model(x))
    model.save(tmp_path / "stacked.keras")
    loaded = keras.saving.load_model(tmp_path / "stacked.keras")
    np.testing.assert_allclose(as_numpy(loaded(x)), want, rtol=1e-6, atol=1e-6)


# `.keras` files across the declared Keras range, against the README's table.
ROOT = Path(__file__).parent.parent
COMPAT = Path(__file__).parent / "data" / "compat"
TABLE_TITLE = "| written by | read by Keras"


def minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def readme_version_table() -> dict[str, dict[str, bool]]:
    """The README's "which Keras reads the files" table: writer minor version
    -> {reader minor version: readable}."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(TABLE_TITLE))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    readers = [re.search(r"\d+\.\d+", cell).group() for cell in header[1:]]
    table = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip().strip("*").lower() for cell in line.strip("|").split("|")]
        assert all(cell in ("yes", "no") for cell in cells[1:]), line
        for writer in re.findall(r"\d+\.\d+", cells[0]):
            table[writer] = {
                reader: cell == "yes" for reader, cell in zip(readers, cells[1:])
            }
    return table


def declared_keras_minors() -> list[str]:
    """Keras minor versions setup.cfg declares (keras>=3.A,<3.B)."""
    text = (ROOT / "setup.cfg").read_text()
    low, high = re.search(r"keras>=3\.(\d+),<3\.(\d+)", text).groups()
    return [f"3.{n}" for n in range(int(low), int(high))]


def test_readme_version_table_covers_the_declared_range():
    table = readme_version_table()
    declared = declared_keras_minors()
    assert sorted(table, key=lambda v: int(v.split(".")[1])) == declared
    for writer, readers in table.items():
        assert list(readers) == declared, (writer, readers)
        assert readers[writer], f"Keras {writer} cannot read its own files?"


def test_compat_files_cover_both_ends_of_the_range():
    manifest = json.loads((COMPAT / "manifest.json").read_text())
    declared = declared_keras_minors()
    assert {declared[0], declared[-1]} <= set(manifest), sorted(manifest)


@pytest.mark.parametrize("kind", ["gates", "builtin"])
def test_keras_files_load_where_the_readme_says(kind):
    """Each stored file (tests/data/compat, written by the oldest and the newest
    declared Keras) loads on the running Keras, with the outputs it had, where
    the README's table says "yes", and fails to load where it says "no"."""
    reader = minor(keras.__version__)
    table = readme_version_table()
    if reader not in next(iter(table.values())):
        pytest.skip(f"Keras {keras.__version__} has no column in the README table")
    manifest = json.loads((COMPAT / "manifest.json").read_text())
    x = np.load(COMPAT / "input.npy")
    checked = []
    for writer, entry in sorted(manifest.items()):
        files = entry["files"][kind]
        path = str(COMPAT / files["file"])
        if table[writer][reader]:
            model = keras.saving.load_model(path)
            np.testing.assert_allclose(
                as_numpy(model(x)),
                np.load(COMPAT / files["output"]),
                rtol=1e-5,
                atol=1e-6,
                err_msg=f"{files['file']} (Keras {entry['keras']}) read by "
                f"Keras {keras.__version__}",
            )
        else:
            with pytest.raises(Exception) as refused:  # noqa: B017 Keras's own error
                keras.saving.load_model(path)
            # Not a keras_gates problem: the file's initializer configs.
            assert "input_axes" in str(refused.value), refused.value
        checked.append((writer, table[writer][reader]))
    assert len(checked) >= 2, checked
