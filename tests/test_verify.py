"""keras-gates export / verify: refusals, atomic writes, and what the server rejects.

`keras-gates verify` runs a SavedModel through TF Serving's own C++ loader (the C
API of the tensorflow wheel, in a process without TensorFlow's Python package).
Here it must pass a keras_gates export (and match the Keras model), and reject two
SavedModels that `tf.saved_model.load` accepts but the server cannot serve: one
written with plain `tf.saved_model.save` (its variables are not found by name in
the session: "Could not find variable") and one calling `tf.py_function`
(EagerPyFunc needs Python).

Runtime: ~6 loader processes, ~40 s.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_gates
import keras_gates.serving.export
from keras_gates import cli, serving
from keras_gates.serving import export_for_serving


def make_model() -> keras.Model:
    model = keras.Sequential(
        [keras.Input((None, 3)), keras_gates.LSTM(4), keras.layers.Dense(2)]
    )
    rng = np.random.default_rng(3)
    model.set_weights(
        [rng.normal(scale=0.5, size=w.shape).astype("float32") for w in model.weights]
    )
    return model


def snapshot(folder) -> dict[str, str]:
    """Every file under `folder` -> the SHA-256 of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A verified export (export_for_serving runs the loader before the rename)."""
    base = tmp_path_factory.mktemp("saved_models")
    model = make_model()
    keras_file = base.parent / "model.keras"
    model.save(keras_file)
    path = export_for_serving(model, base, "adder")  # verify=True by default
    return base, path, keras_file


def test_export_layout_and_models_config(exported):
    base, path, _ = exported
    assert path == base / "adder" / "1"
    for name in (
        "saved_model.pb",
        "variables",
        "assets.extra/tf_serving_warmup_requests",
    ):
        assert (path / name).exists(), name
    config = (base / "models.config").read_text()
    assert config.count('name: "adder"') == 1
    assert 'base_path: "/models/adder"' in config
    assert (
        "pad_variable_length_inputs: true"
        in (base / "batching_parameters.txt").read_text()
    )
    # No staging folder left beside the versions or beside the base.
    assert sorted(p.name for p in (base / "adder").iterdir()) == ["1"]
    assert not list(base.parent.glob(f".{base.name}.keras-gates-export-*"))


def test_verify_cli_passes_and_matches_keras(exported, capsys):
    _, path, keras_file = exported
    assert cli.main(["verify", str(path), "--model", str(keras_file)]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out
    assert "[ok  ] outputs equal the Keras model's" in out
    assert "[ok  ] the warmup requests replay" in out
    assert "[ok  ] the loader process imported no tensorflow Python module" in out


def test_reexport_is_refused_and_leaves_version_byte_identical(exported, capsys):
    base, path, keras_file = exported
    before = snapshot(path)
    with pytest.raises(FileExistsError, match="overwrite"):
        export_for_serving(make_model(), base, "adder", version=1)
    status = cli.main(
        [
            "export",
            str(keras_file),
            "--name",
            "adder",
            "--base",
            str(base),
            "--version",
            "1",
        ]
    )
    assert status == 1
    assert "already exists" in capsys.readouterr().err
    assert snapshot(path) == before


def test_failed_export_leaves_no_version_folder(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full while writing warmup requests")

    monkeypatch.setattr(serving.export, "write_warmup", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_for_serving(make_model(), tmp_path, "broken", verify=False)
    # No version, no model folder, no models.config, no staging folder (which
    # lies beside the base).
    assert list(tmp_path.iterdir()) == []
    assert not list(tmp_path.parent.glob(f".{tmp_path.name}.keras-gates-export-*"))


def test_next_version_and_overwrite(tmp_path):
    first = export_for_serving(make_model(), tmp_path, "m", verify=False)
    second = export_for_serving(make_model(), tmp_path, "m", verify=False)
    assert (first.name, second.name) == ("1", "2")
    marker = first / "assets.extra" / "marker"
    marker.write_text("old")
    replaced = export_for_serving(
        make_model(), tmp_path, "m", version=1, overwrite=True, verify=False
    )
    assert replaced == first and not marker.exists()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2"]
    assert (tmp_path / "models.config").read_text().count('name: "m"') == 1


def test_verify_reports_non_finite_outputs(tmp_path, capsys):
    model = make_model()
    dense = model.layers[-1]
    dense.set_weights([np.full(w.shape, np.nan, "float32") for w in dense.weights])
    path = export_for_serving(model, tmp_path, "nan", verify=False)
    assert cli.main(["verify", str(path)]) == 1
    assert "[FAIL] all outputs are finite: non-finite: " in capsys.readouterr().out


def test_bad_arguments_name_argument_and_value(tmp_path):
    with pytest.raises(ValueError, match="`name`.*'a/b'"):
        export_for_serving(make_model(), tmp_path, "a/b")
    with pytest.raises(ValueError, match="`version`.*0"):
        export_for_serving(make_model(), tmp_path, "m", version=0)
    stateful = keras.Sequential(
        [keras.Input((5, 3), batch_size=2), keras_gates.GRU(4, stateful=True)]
    )
    with pytest.raises(ValueError, match="stateful=True"):
        export_for_serving(stateful, tmp_path, "m")
    builtin = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(4)])
    with pytest.raises(ValueError, match="keras_gates.LSTM or keras_gates.GRU"):
        export_for_serving(builtin, tmp_path, "m")
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_plain_tf_saved_model_save_is_rejected(tmp_path, capsys):
    path = tmp_path / "plain" / "1"
    tf.saved_model.save(make_model(), str(path))
    loaded = tf.saved_model.load(str(path))  # loads fine in Python...
    assert "serving_default" in loaded.signatures
    assert cli.main(["verify", str(path)]) == 1  # ...and fails in the server
    out = capsys.readouterr().out
    assert "FAILED" in out
    assert "Could not find variable" in out


def test_py_function_is_rejected(tmp_path, capsys):
    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((None, None, 3), tf.float32)])
        def serve(self, inputs):
            doubled = tf.py_function(lambda a: a * 2.0, [inputs], tf.float32)
            return {"outputs": doubled}

    module = Doubler()
    path = tmp_path / "pyfunc" / "1"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    loaded = tf.saved_model.load(str(path))
    np.testing.assert_allclose(
        loaded.signatures["serving_default"](tf.ones((1, 2, 3)))["outputs"], 2.0
    )
    assert cli.main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "EagerPyFunc needs the Python interpreter" in out
    # The op check stops the runs: running EagerPyFunc in a process without
    # Python can abort it (absl mutex check) and lose the report.
    assert "not run: the graph holds ops a C++ server cannot run" in out
    assert "the C++ loader process ran to completion" not in out


def test_verify_refuses_a_folder_without_saved_model(tmp_path, capsys):
    assert cli.main(["verify", str(tmp_path)]) == 1
    assert "saved_model.pb" in capsys.readouterr().err


def test_next_export_removes_a_dead_exports_staging_folder(tmp_path):
    """A killed export's staging folder (beside the base) goes at the next
    export; a running export's (its lock held) stays."""
    base = tmp_path / "base"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".base.keras-gates-export-{dead.stdout.strip()}-abc"
    (stale / "export").mkdir(parents=True)
    live = tmp_path / f".base.keras-gates-export-{os.getpid()}-def"
    live.mkdir()
    # A running export holds a lock on its staging folder (the kernel drops it
    # when the process dies, whatever its PID namespace).
    held = os.open(live, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        export_for_serving(make_model(), base, "m", verify=False)
    finally:
        os.close(held)
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "base"]


def test_failed_export_removes_the_folders_it_created(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full while writing warmup requests")

    monkeypatch.setattr(serving.export, "write_warmup", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_for_serving(make_model(), tmp_path / "a" / "b" / "base", "m")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_base_is_refused_before_exporting(tmp_path, monkeypatch, capsys):
    """A base the user cannot write (as root, simulated) fails at once, with
    `--base` named, and nothing is written."""
    (tmp_path / "base").mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda path, mode: (
            False
            if os.path.samefile(path, tmp_path / "base")
            else real_access(path, mode)
        ),
    )
    keras_file = tmp_path / "model.keras"
    make_model().save(keras_file)
    status = cli.main(
        ["export", str(keras_file), "--name", "m", "--base", str(tmp_path / "base")]
    )
    assert status == 1
    out = capsys.readouterr().err
    assert "--base" in out and "cannot create a version" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "model.keras"]
    assert list((tmp_path / "base").iterdir()) == []


def test_overwrite_killed_between_its_renames_keeps_the_old_version(tmp_path):
    """The state a kill leaves between `version -> staging/retired` and
    `staging/export -> version`: the next export puts the old version back."""
    base = tmp_path / "base"
    (base / "m" / "1").mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    staging = tmp_path / f".base.keras-gates-export-{dead.stdout.strip()}-abc"
    (staging / "export").mkdir(parents=True)
    (staging / "retired_from").write_text(str(base / "m" / "2"))
    (staging / "retired").mkdir()
    (staging / "retired" / "saved_model.pb").write_bytes(b"version two")
    path = export_for_serving(make_model(), base, "m", verify=False)
    assert path == base / "m" / "3"
    assert (base / "m" / "2" / "saved_model.pb").read_bytes() == b"version two"
    assert not staging.exists()


def test_the_loader_child_modules_import_neither_keras_nor_tensorflow():
    """What `keras-gates verify` runs the C++ loader in: the child's modules,
    imported as the child imports them (package __init__ files stubbed), pull
    in neither keras nor TensorFlow's Python package. (The `keras-gates`
    process itself imports keras, like every subcommand: the CLI says so.)"""
    root = os.path.dirname(keras_gates.__file__)
    code = (
        "import sys, types\n"
        f"root = {root!r}\n"
        "for name, path in (('keras_gates', root), "
        "('keras_gates.serving', root + '/serving')):\n"
        "    module = types.ModuleType(name); module.__path__ = [path]\n"
        "    sys.modules[name] = module\n"
        "from keras_gates.serving import capi, layout, loader_child, samples\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('keras', 'tensorflow', 'jax'))\n"
        "print(heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
