"""The `keras-gates` command as a user meets it: `--help` without TensorFlow,
no TensorFlow banner, errors on stderr; exit status 2 for bad usage (nothing
run), 1 for a failed job, for every subcommand; and `keras_gates` as it was
(every class registered on import) everywhere but in the console script.

The subprocess tests start the command the way pip's console script does: a
file named `keras-gates` that runs `from keras_gates.cli import main;
sys.exit(main())` (setup.cfg's entry point); one runs the script pip
installed. How fast `--help` answers is measured, not tested here (no timing
thresholds in unit tests): the CHANGELOG has the numbers.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_gates
from keras_gates import cli

# pip's generated console script, with a report of what it imported
CONSOLE_SCRIPT = """
import sys
from keras_gates.cli import main
try:
    status = main()
except SystemExit as exit:
    status = exit.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "jax"})
print("IMPORTED:" + ",".join(heavy), file=sys.stderr)
sys.exit(status)
"""


@functools.cache
def console_script() -> str:
    """CONSOLE_SCRIPT in a file named as pip names it (`keras-gates`)."""
    path = Path(tempfile.mkdtemp(prefix="keras-gates-cli-")) / "keras-gates"
    path.write_text(CONSOLE_SCRIPT)
    return str(path)


def console(*argv: str, cwd=None) -> tuple[int, str, str, list[str]]:
    """(exit status, stdout, stderr without the import report, heavy modules
    imported) of `keras-gates ARGV` in a fresh process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    result = subprocess.run(
        [sys.executable, console_script(), *argv],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=600,
    )  # fmt: skip
    lines = result.stderr.splitlines()
    assert lines and lines[-1].startswith("IMPORTED:"), result.stderr[-3000:]
    imported = [m for m in lines[-1].removeprefix("IMPORTED:").split(",") if m]
    return result.returncode, result.stdout, "\n".join(lines[:-1]), imported


BANNER_WORDS = ("absl", "oneDNN", "cuda", "cuInit", "cpu_feature_guard", "I0000")


def assert_no_banner(stderr: str) -> None:
    for word in BANNER_WORDS:
        assert word not in stderr, f"TensorFlow banner on stderr:\n{stderr[-3000:]}"


@pytest.mark.parametrize(
    "argv", [["--help"], ["demo", "--help"], ["export", "--help"],
             ["verify", "--help"], ["bench", "--help"]],
    ids=["main", "demo", "export", "verify", "bench"],
)  # fmt: skip
def test_help_answers_without_tensorflow(argv):
    status, out, err, imported = console(*argv)
    assert status == 0
    assert out.startswith("usage: keras-gates")
    assert err == ""
    assert imported == []


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "a command is required"),
        (["train"], "unknown command 'train'"),
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
        (["export", "model.keras"], "the following arguments are required: --name"),
        (["verify"], "the following arguments are required: path"),
        (["verify", "x", "--latency", "0"], "must be a positive number of time steps"),
        (["bench", "--configs"], "expected one argument"),
    ],
    ids=["none", "unknown", "demo", "export", "verify", "verify_latency", "bench"],
)
def test_bad_usage_is_exit_2_on_stderr_before_any_import(argv, message, tmp_path):
    status, out, err, imported = console(*argv, cwd=tmp_path)
    assert status == 2
    assert out == ""
    assert message in err and "Traceback" not in err
    assert imported == []
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--steps", "0"], "`--steps` must be a positive integer; received 0"),
        (["demo", "--units", "-3"], "`--units` must be a positive integer"),
        (["bench", "--repeats", "0"], "`--repeats` must be a positive integer"),
        (
            ["bench", "--json", "missing_dir/x.json"],
            "`--json` must be a file in an existing folder",
        ),
    ],
    ids=["demo_steps", "demo_units", "bench_repeats", "bench_json_folder"],
)
def test_bad_option_is_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # missing_dir is relative to here
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"keras-gates {argv[0]}: ")
    assert message in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert "Traceback" not in captured.err + captured.out
    assert os.listdir(tmp_path) == []  # nothing written (no demo_output either)


def test_bench_json_folder_is_checked_before_anything_runs(capsys, tmp_path):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert cli.main(["bench", "--json", str(folder)]) == 2
    assert "must be a file path" in capsys.readouterr().err


def test_failed_export_and_verify_are_exit_1_one_line_no_banner(tmp_path):
    """A job that fails after TensorFlow is imported: its reason is the only
    line on stderr (no banner), nothing on stdout."""
    missing = tmp_path / "missing.keras"
    status, out, err, _ = console(
        "export", str(missing), "--name", "m", "--base", str(tmp_path / "base")
    )
    assert (status, out) == (1, "")
    assert err == f"keras-gates export: cannot read {missing}: no such file"
    status, out, err, imported = console("verify", str(tmp_path))
    assert (status, out) == (1, "")
    assert err.startswith("keras-gates verify: ") and "saved_model.pb" in err
    assert len(err.splitlines()) == 1, err
    assert "tensorflow" in imported  # the banner had its chance


def test_failed_demo_is_exit_1_on_stderr_without_banner_or_warnings(tmp_path):
    """The demo trains, then cannot export (its serving base is a file): exit
    1, the reason on stderr, and nothing else there: no TensorFlow banner, no
    Keras shuffle warning ("shuffle=True ... ignored" for generator data
    unless fit is told shuffle=False; the demo's batches come from a
    generator)."""
    not_a_folder = tmp_path / "base"
    not_a_folder.write_text("")
    status, out, err, _ = console(
        "demo", "--quick", "--quiet", "--steps", "2", "--seq-len", "5",
        "--units", "2", "--models", "lstm", "--out", str(tmp_path / "out"),
        "--serving-base", str(not_a_folder),
    )  # fmt: skip
    assert status == 1, err[-3000:]
    assert err.startswith("Export of lstm failed: "), err[-3000:]
    assert len(err.splitlines()) == 1, err[-3000:]
    assert_no_banner(err)
    assert "shuffle=True" not in err + out
    assert (tmp_path / "out" / "results.json").is_file()


def test_banner_filter_keeps_what_is_not_banner():
    """The lines TensorFlow 2.21 and 2.20 print at import (copied from runs
    without the filter) are dropped; a Python warning or an error is not."""
    banner = [
        "WARNING: All log messages before absl::InitializeLog() is called are "
        "written to STDERR",
        "I0000 00:00:1796290208.491952    6308 port.cc:153] oneDNN custom "
        "operations are on.",
        "I0000 00:00:1796290208.492542    6308 cudart_stub.cc:31] Could not find "
        "cuda drivers on your machine, GPU will not be used.",
        "E0000 00:00:1796290579.016268    8349 cuda_platform.cc:52] failed call to "
        "cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
        "To enable the following instructions: AVX2 FMA, in other operations, "
        "rebuild TensorFlow with the appropriate compiler flags.",
        # TF 2.20's own prefix
        "2026-12-03 10:21:39.698966: I external/local_xla/xla/tsl/cuda/"
        "cudart_stub.cc:31] Could not find cuda drivers on your machine",
        "2026-12-03 10:21:49.181043: E external/local_xla/xla/stream_executor/"
        "cuda/cuda_platform.cc:51] failed call to cuInit: INTERNAL: CUDA error",
    ]
    kept = [
        "UserWarning: something the user should see",
        "E0000 00:00:1796290579.016268    8349 file_io.cc:52] cannot open /x",
        "2026-12-03 10:21:49.181043: E tensorflow/core/file_io.cc:51] cannot open /x",
    ]
    assert [line for line in banner if cli.BANNER.search(line)] == banner
    assert [line for line in kept if cli.BANNER.search(line)] == []


REGISTRATION = """
import sys
{first}
import keras
import numpy as np
model = keras.saving.load_model(sys.argv[1])
print(repr(np.asarray(model(np.load(sys.argv[2]))).tolist()))
"""


@pytest.mark.parametrize(
    "first",
    [
        "import keras_gates",
        # the console script's process, once a subcommand is about to run
        "sys.argv[0] = 'keras-gates'; import keras_gates; keras_gates.import_all()",
    ],
    ids=["import", "console_script"],
)
def test_import_registers_every_class_for_keras_files(first, tmp_path):
    """`import keras_gates` and nothing else: a .keras file of its layers
    loads in a fresh process and gives the outputs it gave when saved."""
    inputs = keras.Input((4, 3))
    lstm = keras_gates.LSTM(2, return_sequences=True)(inputs)
    cell = keras.layers.RNN(keras_gates.GRUCell(2))(lstm)
    model = keras.Model(inputs, keras_gates.GRU(2)(lstm) + cell)
    x = np.random.default_rng(0).normal(size=(2, 4, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run(
        [sys.executable, "-c", REGISTRATION.format(first=first),
         str(tmp_path / "m.keras"), str(tmp_path / "x.npy")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    got = np.array(eval(result.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(got, np.asarray(model(x)), rtol=1e-6, atol=1e-6)


def test_console_script_defers_imports_until_a_public_name_is_used():
    code = (
        "import sys; sys.argv[0] = '/venv/bin/keras-gates'\n"
        "import keras_gates\n"
        "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules\n"
        "assert keras_gates.__version__\n"
        "assert 'keras' not in sys.modules\n"
        "layer = keras_gates.LSTM(2)\n"
        "assert keras_gates.GateMonitor and keras_gates.trace_gates\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_installed_command_is_the_deferring_entry_point():
    """The `keras-gates` that pip installed runs `keras_gates.cli:main`, and
    its `--help` imports neither Keras nor TensorFlow (`-X importtime`
    lists every module imported)."""
    (entry,) = importlib.metadata.entry_points(
        group="console_scripts", name="keras-gates"
    )
    assert entry.value == "keras_gates.cli:main"
    script = Path(sys.executable).parent / "keras-gates"
    if not script.exists():
        pytest.skip(f"no installed script beside {sys.executable}")
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(script), "--help"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage: keras-gates")
    imported = {line.split("|")[-1].strip().split(".")[0]
                for line in result.stderr.splitlines() if "|" in line}  # fmt: skip
    assert "keras_gates" in imported
    assert not imported & {"keras", "tensorflow", "jax"}, sorted(imported)


def test_public_names_are_the_documented_ones():
    """`__all__` lists what `keras_gates/__init__.py`'s docstring lists, and each
    name is there after a plain import."""
    for name in keras_gates.__all__:
        assert name in keras_gates.__doc__, name
        assert name in vars(keras_gates), name
