"""The benchmark runs end to end (tiny shapes) and reports what it promises.

No timing thresholds here: the numbers belong to the benchmark, not to tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}


def bench(*arguments, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "keras_gates.cli", "bench", *arguments],
        capture_output=True, text=True, env=ENV, timeout=timeout,
    )  # fmt: skip


def test_quick_benchmark_writes_the_matrix(tmp_path):
    """One graph, one XLA and (if installed) the JAX configuration, both
    families, both batches, inference and training, and the exports."""
    out = tmp_path / "bench.json"
    configs = "tf-graph,tf-xla-function,jax,torch"
    result = bench(
        "--quick", "--repeats", "1", "--no-memory", "--configs", configs,
        "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    cells = {
        (r["config"], r["ours"], r["theirs"], r["batch"], r["mode"])
        for r in results["rows"]
    }
    for config in ("tf-graph", "tf-xla-function"):
        assert (config, "keras_gates.LSTM", "keras.layers.LSTM", 1, "infer") in cells
        assert (config, "keras_gates.LSTM", "keras.layers.LSTM", 8, "train") in cells
        for theirs in ("keras.layers.GRU(reset_after=False)", "keras.layers.GRU"):
            assert (config, "keras_gates.GRU", theirs, 8, "infer") in cells
    if importlib.util.find_spec("jax") is not None:
        assert ("jax", "keras_gates.GRU", "keras.layers.GRU", 8, "train") in cells
    if importlib.util.find_spec("torch") is None:
        assert "torch" in results["skipped"]
    assert not any(r["config"] == "tf-xla-model" for r in results["rows"])
    assert all(r["ours_ms"] > 0 and r["theirs_ms"] > 0 for r in results["rows"])
    assert all(r["min_ratio"] > 0 for r in results["rows"])
    exports = {(r["family"], r["jit_compile"]) for r in results["serving"]}
    assert exports == {("LSTM", False), ("LSTM", True), ("GRU", False), ("GRU", True)}
    assert len(results["load_before"]) == 3 and results["started"]
    assert {r["batch"] for r in results["serving"]} == {1}
    assert "| exported model (C++ loader) |" in result.stdout
    assert "| tf-xla-function | keras_gates.GRU |" in result.stdout


def test_memory_child_reports_the_training_step():
    result = bench("--memory-child", "GRU", "keras_gates.GRU", "5", "3", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    entry = json.loads(result.stdout.strip().splitlines()[-1])
    assert entry["peak_rss_mib"] > 0 and entry["growth_mib"] >= 0


def test_unknown_configuration_is_refused_in_one_line():
    result = bench("--configs", "tf-graph,tpu", timeout=120)
    assert result.returncode == 2
    assert "`--configs` must name configurations among" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_batches_are_refused_in_one_line():
    result = bench("--batches", "1,eight", timeout=120)
    assert result.returncode == 2
    assert "`--batches` must be comma-separated positive integers" in result.stderr
    assert "Traceback" not in result.stderr


def test_serving_latency_rejects_bad_repeats(tmp_path):
    from keras_gates.serving.verify import serving_latency

    with pytest.raises(ValueError, match=r"`repeats` must be an integer >= 2"):
        serving_latency(tmp_path, {}, repeats=1)
