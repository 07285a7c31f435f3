"""Shared test helpers: one body runs over every cell and variant."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Quiet TensorFlow's C++ logging before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

import keras_gates

# (name, layer class, kind for tests/reference.py, extra constructor kwargs)
VARIANTS = {
    "lstm": (keras_gates.LSTM, "lstm", {}),
    "lstm_no_forget": (keras_gates.LSTM, "lstm", {"forget_gate": False}),
    "gru": (keras_gates.GRU, "gru", {}),
}

# float32 layer against the float64 NumPy oracle: a few ulps per step, grown
# over <= 12 steps of <= 16 units with weights of scale 0.5.
ATOL = 2e-5
RTOL = 1e-4


@pytest.fixture(params=sorted(VARIANTS))
def variant(request):
    return request.param


def make_layer(variant, units, input_dim, seed=0, batch=None, **kwargs):
    """A built layer of `variant` with random weights of scale 0.5."""
    layer_class, _, extra = VARIANTS[variant]
    layer = layer_class(units, **extra, **kwargs)
    layer.build((batch, None, input_dim))
    rng = np.random.default_rng(seed)
    layer.cell.set_weights(
        [
            rng.normal(scale=0.5, size=w.shape).astype("float32")
            for w in layer.cell.weights
        ]
    )
    return layer


def reference(variant, layer, x, **kwargs):
    """tests/reference.run on `layer`'s weights."""
    from reference import run

    _, kind, extra = VARIANTS[variant]
    return run(
        kind,
        x,
        [np.asarray(w) for w in layer.cell.get_weights()],
        forget_gate=extra.get("forget_gate", True),
        **kwargs,
    )


def snapshot_tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 (files) or 'dir', hidden entries included: the
    oracle for "nothing changed on disk"."""
    listing = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            listing[os.path.relpath(os.path.join(dirpath, name), root)] = "dir"
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            except FileNotFoundError:  # removed while we walked
                continue
            listing[os.path.relpath(path, root)] = digest
    return listing


# The suite runs on two workers (pytest-xdist; setup.cfg's addopts give
# `-n 2 --dist loadfile --no-loadscope-reorder`, and `-n 0` runs it in one
# process): each test file goes whole to one worker, so a module's shared
# fixtures (a trained model, an export, the demo run) are built once. The
# files that take longest (seconds on 2 cores, one worker) go out first, so
# that neither worker is left with one of them at the end; every other file
# follows in pytest-randomly's order, and every file's tests in their random
# order.
LONGEST_FILES = {
    "test_multi_worker.py": 110,
    "test_examples.py": 150,
    "test_backends.py": 115,
    "test_serving_proofs.py": 80,
    "test_demo.py": 70,
    "test_bench.py": 60,
}


@pytest.hookimpl(trylast=True)  # after pytest-randomly's shuffle
def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: -LONGEST_FILES.get(item.path.name, 0))


def as_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


# Hypothesis profiles: the suite's default keeps within the CI time budget;
# HYPOTHESIS_PROFILE=slow digs deeper (see tests/test_properties.py).
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "default",
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile(
        "slow",
        max_examples=500,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
except ImportError:  # hypothesis is a dev dependency
    pass
