"""benchmarks/gpu_check.py runs before a GPU is lent: on this CPU machine it
says so in one line, and its proofs and timing cells run at a tiny size."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "gpu_check.py"
PROOF_CASES = ("plain", "right_padded", "go_backwards", "return_state", "bidirectional")


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0():
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines() == [
        "gpu_check: no GPU visible to TensorFlow here; nothing to check (exit 0)."
    ]


def test_proofs_compare_every_case_and_the_export(gpu_check):
    """Here cuDNN cannot run, so the proofs compare the package's kernel with
    itself and with keras.layers.LSTM's loop: they pass, and they record that
    cuDNN did not run (on a GPU the same fields say it did)."""
    report = gpu_check.proofs("tiny")
    assert [row["case"] for row in report["cases"]] == list(gpu_check.PROOF_CASES)
    for row in report["cases"]:
        assert row["cudnn_ran"] is False and row["keras_cudnn_ran"] is False
        assert row["outputs_vs_keras"] <= gpu_check.TOLERANCE, row
        assert row["gradients_vs_keras"] <= gpu_check.TOLERANCE, row
    assert report["export"]["gpu_only_ops_in_export"] == []
    assert report["passed"] is True


def test_a_matrix_cell_and_a_forms_cell_run(gpu_check):
    rows, skipped = gpu_check.tf_matrix("tiny", 1, time.monotonic() + 0.5)
    assert rows and rows[0]["family"] == "LSTM" and rows[0]["ratio"] > 0
    assert skipped  # the rest, past the deadline, is named
    rows, _ = gpu_check.forms_matrix("tiny", 1, time.monotonic() + 0.5)
    assert set(rows[0]) >= {"small_ms", "large_ms"}


def test_without_tensorflow_the_jax_column_runs_with_its_own_proofs():
    """A machine with JAX on its GPU and no TensorFlow (--no-tensorflow makes
    this one such): the TensorFlow sections say they are not run, and the
    JAX proofs compare both layers with Keras's own, case by case."""
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--no-tensorflow",
            "--allow-cpu",
            "--repeats",
            "1",
            "--budget",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    lines = done.stdout.splitlines()
    assert "  tensorflow: not installed" in lines
    assert any("the cuDNN proofs are not run" in line for line in lines)
    proofs = [line for line in lines if "vs Keras's own" in line]
    # (LSTM, LSTM on its own kernel, GRU) x the cases
    assert len(proofs) == 3 * len(PROOF_CASES)
    assert "  jax proofs passed" in lines


def test_without_tensorflow_or_a_gpu_it_says_so_in_one_line():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--no-tensorflow"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines() == [
        "gpu_check: no TensorFlow here and no GPU visible to JAX; "
        "nothing to check (exit 0)."
    ]


def test_gradients_are_held_to_the_tolerance_of_their_scale(gpu_check):
    row = {"outputs_vs_keras": 0.0, "gradients_vs_keras": 1.3e-5}
    assert gpu_check._within_tolerance({**row, "largest_gradient": 49.0})
    assert not gpu_check._within_tolerance({**row, "largest_gradient": 0.5})
    row = {"outputs_vs_keras": 2e-5, "gradients_vs_keras": 0.0}
    assert not gpu_check._within_tolerance({**row, "largest_gradient": 49.0})
