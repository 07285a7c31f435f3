"""Check a SavedModel the way TF Serving will load it: with its own C++ loader.

    keras-gates verify DIR/NAME/VERSION [--model MODEL.keras] [--latency STEPS]

A SavedModel that loads with ``tf.saved_model.load`` can still fail in
``tensorflow_model_server`` (see the README): the server restores by session, not by
object graph, knows only the ops compiled into it, and has no Python. So this
check runs in a child process that never imports the tensorflow Python package:
it loads ``libtensorflow_cc.so.2`` from the installed wheel with ctypes and
calls the C API ``TF_LoadSessionFromSavedModel`` / ``TF_SessionRun``, which
run ``tensorflow::LoadSavedModel``, the loader the server calls. The protos are
read with protobuf classes built from the descriptors in the wheel's ``*_pb2.py``
files, without executing them (they import ``tensorflow``).

The child (`keras_gates.serving.loader_child`, each check a named function) checks,
in order:

0. ``saved_model.pb`` and ``variables/variables.index`` with its data shards
   are present (unless the graph has no variables to restore);
1. the serve meta graph and a ``serving_default`` predict signature exist, and
   every signature has named inputs and outputs (not ``keras_tensor_N``,
   ``output_N``, ``args_N``) with a dynamic batch (and time) dimension;
2. every op of the graph and its function library is an op registered in the
   C++ library; no ``PyFunc`` / ``EagerPyFunc`` (they need Python) and no
   ``CudnnRNN*`` (GPU only);
3. the session loads (variables restore by name, as in the server);
4. every signature runs at batch 1, 2 and 7 and two sequence lengths, with
   finite outputs whose first axis is the batch;
5. the warmup file ``assets.extra/tf_serving_warmup_requests`` (if present)
   parses as PredictionLog TFRecords (at most 1000, CRCs checked) and replays.

With ``--model``, the parent process then runs the `.keras` model in Keras on
the very inputs the child fed ``serving_default`` and compares (float32,
``atol=1e-5, rtol=1e-4``; a model with float16/bfloat16 layers, trained under a
mixed-precision policy, ``atol=rtol=2e-2``: a few bfloat16 ulps).

This module is the parent side: it starts the child (which imports
`keras_gates.serving.loader_child` with the package ``__init__`` files stubbed out, so
that neither keras nor TensorFlow's Python package is imported there) and reads
its one-line report. The parent itself imports Keras only for ``--model``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keras_gates.serving.loader_child import REPORT_PREFIX, Report

BATCH_SIZES = (1, 2, 7)
TIME_STEPS = (3, 8)
# Tolerances with --model: keras_gates.serving.proofs.tolerance (as at export).


def _check_dir(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"`path` must be a SavedModel directory path; received {path!r}."
        )
    path = Path(path)
    if not (path / "saved_model.pb").is_file():
        raise ValueError(
            "`path` must be a SavedModel directory (DIR/NAME/VERSION holding "
            f"saved_model.pb); received {str(path)!r}, which has no saved_model.pb."
        )
    return path


def _run_child(job: dict, timeout: float) -> dict:
    """Run the loader child in a fresh interpreter; return its report."""
    with tempfile.TemporaryDirectory(prefix="keras_gates_verify_") as scratch:
        job_path = Path(scratch) / "job.json"
        job_path.write_text(json.dumps(job))
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # The child imports keras_gates.serving.loader_child with the two package
        # __init__ files stubbed out: running them would import keras and
        # with it TensorFlow's Python package, which the server does not have.
        code = (
            "import sys, types\n"
            "root = sys.argv[1]\n"
            "for name, path in (('keras_gates', root), "
            "('keras_gates.serving', root + '/serving')):\n"
            "    module = types.ModuleType(name)\n"
            "    module.__path__ = [path]\n"
            "    sys.modules[name] = module\n"
            "from keras_gates.serving import loader_child\n"
            "sys.exit(loader_child.child_main(sys.argv[2]))\n"
        )
        package_root = Path(__file__).resolve().parents[1]
        process = subprocess.run(
            [sys.executable, "-c", code, str(package_root), str(job_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        for line in reversed(process.stdout.splitlines()):
            if line.startswith(REPORT_PREFIX):
                return json.loads(line[len(REPORT_PREFIX) :])
        tail = (process.stderr or process.stdout or "").strip().splitlines()[-15:]
        return {
            "checks": [
                [
                    "the C++ loader process ran to completion",
                    False,
                    f"exit status {process.returncode}; last output:\n      "
                    + "\n      ".join(tail),
                ]
            ],
            "runs": 0,
        }


def _raise_failed(result: dict) -> None:
    """A requests job's report: RuntimeError naming each failed check."""
    failed = [c for c in result["checks"] if not c[1]]
    if failed:
        raise RuntimeError(
            "TF Serving's C++ loader failed: "
            + "; ".join(f"{name}: {detail}" for name, _, detail in failed)
        )


def verify_saved_model(
    path: str | os.PathLike,
    model: Any = None,
    *,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    time_steps: tuple[int, ...] = TIME_STEPS,
    timeout: float = 300.0,
) -> Report:
    """Load and run a SavedModel with TF Serving's C++ loader (child process).

    Args:
        path: The version folder (DIR/NAME/VERSION) holding saved_model.pb.
        model: Optional keras.Model or `.keras` path: serving_default's outputs
            must then equal the model's on the same inputs.
        batch_sizes: Batch sizes each signature runs at.
        time_steps: Sequence lengths each signature runs at.
        timeout: Seconds the child may take.

    Returns:
        A `Report`; `report.ok` is False if any check failed.

    Raises:
        FileNotFoundError: `model` names no file.
        ValueError: `model` is not a valid .keras file, or a bad argument.
    """
    path = _check_dir(path)
    if isinstance(model, (str, os.PathLike)):  # load first: fail before the child
        from keras_gates.serving.modelfile import load_keras_file

        model = load_keras_file(model)
    for name, sizes in (("batch_sizes", batch_sizes), ("time_steps", time_steps)):
        if not sizes or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes
        ):
            raise ValueError(
                f"`{name}` must be a non-empty tuple of positive integers; "
                f"received {sizes!r}."
            )
    with tempfile.TemporaryDirectory(prefix="keras_gates_verify_") as scratch:
        out = Path(scratch) / "served.npz"
        result = _run_child(
            {
                "saved_model": str(path.resolve()),
                "mode": "check",
                "batch_sizes": list(batch_sizes),
                "time_steps": list(time_steps),
                "out": str(out),
            },
            timeout,
        )
        report = Report(str(path), [tuple(c) for c in result["checks"]], result["runs"])
        if model is not None and out.exists():
            _compare_with_keras(report, model, np.load(out, allow_pickle=False))
        elif model is not None:
            report.add("outputs equal the Keras model's", False, "nothing was served")
    return report


@dataclass(frozen=True)
class FromRequest:
    """An input taken from an earlier request's output (e.g. the step state).

    Attributes:
        index: The earlier request's position in `requests`.
        output: The name of its output.
    """

    index: int
    output: str


def run_signatures(
    path: str | os.PathLike,
    requests: list[tuple[str, dict[str, Any]]],
    *,
    timeout: float = 300.0,
) -> list[dict[str, np.ndarray]]:
    """Run requests through the C++ loader; returns each request's outputs.

    Args:
        path: The version folder holding saved_model.pb.
        requests: (signature name, {input name: array}) pairs, run in order in
            one session. Strings may be str or bytes arrays; a `FromRequest`
            value feeds an earlier request's output (to stream the `step`
            signature with its state).

    Returns:
        One {output name: array} dict per request, in order.

    Raises:
        RuntimeError: The loader or a run failed (the message says which).
    """
    path = _check_dir(path)
    if not isinstance(requests, (list, tuple)) or not all(
        isinstance(r, (list, tuple)) and len(r) == 2 and isinstance(r[1], dict)
        for r in requests
    ):
        raise TypeError(
            "`requests` must be a list of (signature name, {input: array}) pairs; "
            f"received {type(requests).__name__}."
        )
    with tempfile.TemporaryDirectory(prefix="keras_gates_verify_") as scratch:
        feeds_path = Path(scratch) / "feeds.npz"
        arrays, links = {}, {}
        for index, (signature, inputs) in enumerate(requests):
            for name, value in inputs.items():
                if isinstance(value, FromRequest):
                    if not 0 <= value.index < index:
                        raise ValueError(
                            f"`requests[{index}]`: input {name!r} must come from an "
                            f"earlier request; received index {value.index}."
                        )
                    links[f"{index}:{signature}:{name}"] = [value.index, value.output]
                    continue
                value = np.asarray(value)
                if value.dtype == object:
                    value = value.astype(str)
                arrays[f"{index}:{signature}:{name}"] = value
        np.savez(feeds_path, **arrays)
        out = Path(scratch) / "outputs.npz"
        result = _run_child(
            {
                "saved_model": str(path.resolve()),
                "mode": "requests",
                "feeds": str(feeds_path),
                "links": links,
                "out": str(out),
            },
            timeout,
        )
        _raise_failed(result)
        outputs: list[dict[str, np.ndarray]] = [{} for _ in requests]
        with np.load(out, allow_pickle=False) as served:
            for key in served.files:
                index, name = key.split(":", 1)
                if name != "__seconds__":
                    outputs[int(index)][name] = served[key]
    return outputs


def serving_latency(
    path: str | os.PathLike,
    inputs: dict[str, Any],
    *,
    signature: str = "serving_default",
    repeats: int = 200,
    timeout: float = 300.0,
) -> dict[str, float]:
    """Latency of one request under TF Serving's C++ loader (no Python TF).

    The request runs `repeats` times in one session (the first, which
    warms the session, is dropped) in a process that never imports the
    tensorflow Python package: what `tensorflow_model_server` would spend in
    the model, without its network and batching layers.

    Args:
        path: The version folder holding saved_model.pb.
        inputs: {input name: array} of the request.
        signature: The signature to run.
        repeats: How many times to run it (at least 2).

    Returns:
        {"median_ms": ..., "p90_ms": ..., "runs": ...}.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2:
        raise ValueError(f"`repeats` must be an integer >= 2; received {repeats!r}.")
    path = _check_dir(path)
    with tempfile.TemporaryDirectory(prefix="keras_gates_latency_") as scratch:
        feeds_path = Path(scratch) / "feeds.npz"
        np.savez(
            feeds_path,
            **{f"0:{signature}:{name}": np.asarray(v) for name, v in inputs.items()},
        )
        out = Path(scratch) / "outputs.npz"
        result = _run_child(
            {
                "saved_model": str(path.resolve()),
                "mode": "requests",
                "feeds": str(feeds_path),
                "links": {},
                "out": str(out),
                "repeat": repeats,
            },
            timeout,
        )
        _raise_failed(result)
        with np.load(out, allow_pickle=False) as served:
            seconds = np.asarray(served["0:__seconds__"])[1:]
    return {
        "median_ms": float(np.median(seconds) * 1e3),
        "p90_ms": float(np.percentile(seconds, 90) * 1e3),
        "runs": int(seconds.size),
    }


def latency_of_export(path: str | os.PathLike, time_steps: int) -> dict[str, Any]:
    """`serving_latency` of serving_default at batch 1 on the export's own
    sample input of `time_steps` steps (from its keras_gates.json).

    Returns:
        serving_latency's dict, plus "jit_compile" (whether the export says its
        signatures are XLA-compiled).
    """
    from keras_gates.serving import samples
    from keras_gates.serving.layout import METADATA_PATH

    path = _check_dir(path)
    metadata_path = path / METADATA_PATH
    if not metadata_path.is_file():
        raise ValueError(
            f"`path`: {path} has no {METADATA_PATH}; time a keras_gates export, "
            "or call serving_latency with your own inputs."
        )
    metadata = json.loads(metadata_path.read_text())
    x = samples.sequence(metadata, 1, time_steps, seed=0, pad=False)
    if x.dtype == object:
        x = x.astype(str)
    timing = serving_latency(path, {metadata["input_name"]: x})
    return {**timing, "jit_compile": bool(metadata.get("jit_compile"))}


def _compare_with_keras(report: Report, model: Any, served) -> None:
    """`model` (a keras.Model: verify_saved_model loads paths first) vs served."""
    import keras

    from keras_gates.serving.proofs import first_line, tolerance

    atol, rtol = tolerance(model)
    worst = 0.0
    compared = 0
    for key in served.files:
        # feed:<run>:<input> / out:<run>:<output>, serving_default runs only
        if not key.startswith("feed:"):
            continue
        _, run, _ = key.split(":", 2)
        x = served[key]
        if x.dtype.kind in "US":
            x = x.astype(str)
            if len(model.inputs[0].shape) == 2:  # the model takes (batch, 1)
                x = x[:, None]
        try:
            want = keras.ops.convert_to_numpy(model(x, training=False))
        except Exception as error:  # the report says why, not a bare traceback
            report.add(
                "outputs equal the Keras model's",
                False,
                f"the Keras model refuses the served input of shape {x.shape} "
                f"(does --model match this export?): {type(error).__name__}: "
                f"{first_line(error)}",
            )
            return
        got = served[f"out:{run}:outputs"]
        if want.shape != got.shape:
            report.add(
                "outputs equal the Keras model's",
                False,
                f"run {run}: served shape {got.shape}, Keras {want.shape}",
            )
            return
        worst = max(worst, float(np.max(np.abs(want - got), initial=0.0)))
        if not np.allclose(got, want, atol=atol, rtol=rtol):
            report.add(
                "outputs equal the Keras model's",
                False,
                f"run {run} (input shape {x.shape}): max |served - keras| = "
                f"{np.max(np.abs(want - got)):.3g} > atol {atol} + rtol {rtol}",
            )
            return
        compared += 1
    report.add(
        "outputs equal the Keras model's",
        compared > 0,
        f"{compared} serving_default runs, max |served - keras| = {worst:.2g}"
        if compared
        else "no serving_default runs to compare",
    )
