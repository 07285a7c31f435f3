"""Bad command-line options: one clear line and exit status 2, no traceback,
nothing run; and the demo's output free of Keras's shuffle warning."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from keras_gates import cli


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


def test_demo_prints_no_shuffle_warning(tmp_path):
    """Keras warns "shuffle=True ... ignored" for generator data unless fit
    is told shuffle=False; the demo's batches come from a generator."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "keras_gates.cli", "demo", "--quick", "--quiet",
         "--steps", "2", "--seq-len", "5", "--units", "2", "--models", "lstm",
         "--no-export", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "shuffle=True" not in result.stderr + result.stdout
    assert "UserWarning" not in result.stderr
