"""The parity tests again under KERAS_BACKEND=jax (the cells use keras.ops only).

Keras fixes its backend at import, so the JAX run is a separate pytest process
over the tests marked `jax_parity` (tests/test_layers.py, tests/test_convert.py,
tests/test_kernel_functions.py: the sequence kernels in every form, values and
gradients under jax.jit; tests/test_cudnn.py and tests/test_keras_internals.py:
the cuDNN decision and Keras's fused LSTM kernel on JAX).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed")
def test_parity_suite_passes_under_jax():
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-m",
            "jax_parity",
            "-p",
            "no:cacheprovider",
            "-n",
            "0",  # one process: this test already runs on one of the suite's workers
            str(TESTS / "test_layers.py"),
            str(TESTS / "test_convert.py"),
            str(TESTS / "test_kernel_functions.py"),
            str(TESTS / "test_cudnn.py"),
            str(TESTS / "test_keras_internals.py"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=TESTS.parent,
    )
    tail = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    assert (
        " passed" in result.stdout and "failed" not in result.stdout.splitlines()[-1]
    ), tail
    print(result.stdout.splitlines()[-1])
