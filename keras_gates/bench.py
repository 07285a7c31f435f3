"""`keras-gates bench`: time keras_gates.LSTM/GRU against the Keras built-ins.

Every comparison runs in one process, interleaved (ours, theirs, ours, ...),
and reports medians, so a noisy shared machine slows both sides alike. The
table gives, per configuration and shape (batch x time x features -> units):

- forward (inference) and train step (forward, gradients, SGD update) times
  of ``keras_gates.LSTM`` vs ``keras.layers.LSTM`` and ``keras_gates.GRU`` vs
  ``keras.layers.GRU`` (its default ``reset_after=True``, what a user would
  pick, and ``reset_after=False``, the same maths as ours);
- the FLOP rate of our layer against the machine's measured sgemm rate for
  the same matrix shapes (the recurrent (batch, units) x (units, g * units)
  product);
- ``torch.nn.LSTM`` / ``GRU`` on the same shapes, for context, if torch is
  importable;
- the peak memory (resident set growth) of a 1000-step training step, each
  layer in its own subprocess.

Runs under the TensorFlow backend (the one TF Serving runs). Usage:

    keras-gates bench [--quick] [--json PATH]
    python benchmarks/bench.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

# (name, batch, time, features, units, modes)
FULL_CONFIGS = [
    ("serving", 1, 100, 64, 128, ("forward",)),
    ("batch64", 64, 100, 64, 128, ("forward", "train")),
    ("large", 64, 200, 64, 256, ("forward", "train")),
]
QUICK_CONFIGS = [
    ("serving", 1, 10, 8, 16, ("forward",)),
    ("batch64", 8, 10, 8, 16, ("forward", "train")),
]
MEMORY_STEPS = {"full": 1000, "quick": 50}


# (label, how to build it) per family; the first of each family is ours.
def _layers():
    import keras

    import keras_gates

    return {
        "LSTM": [
            ("keras_gates.LSTM", lambda u: keras_gates.LSTM(u)),
            ("keras.layers.LSTM", lambda u: keras.layers.LSTM(u)),
        ],
        "GRU": [
            ("keras_gates.GRU", lambda u: keras_gates.GRU(u)),
            ("keras.layers.GRU", lambda u: keras.layers.GRU(u)),
            (
                "keras.layers.GRU(reset_after=False)",
                lambda u: keras.layers.GRU(u, reset_after=False),
            ),
        ],
    }


GATE_BLOCKS = {"LSTM": 4, "GRU": 3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny shapes and a few repeats (smoke test)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed rounds per measurement"
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory subprocesses"
    )
    parser.add_argument("--memory-child", nargs=5, help=argparse.SUPPRESS)


def _check_backend():
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ValueError(
            "`KERAS_BACKEND` must be 'tensorflow' for `keras-gates bench` (the backend "
            f"TF Serving runs); received {backend!r}."
        )


def _make_fns(make, batch, steps, features, units, seed=0):
    """A built layer's compiled forward and train-step functions."""
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    layer = make(units)
    layer.build((None, None, features))
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(batch, steps, features)).astype("float32"))
    optimizer = keras.optimizers.SGD(1e-3)
    optimizer.build(layer.trainable_variables)

    @tf.function
    def forward(x):
        return layer(x)

    @tf.function
    def train(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(layer(x, training=True)))
        grads = tape.gradient(loss, layer.trainable_variables)
        optimizer.apply(grads, layer.trainable_variables)
        return loss

    return {"forward": lambda: forward(x).numpy(), "train": lambda: train(x).numpy()}


def _torch_fns(family, batch, steps, features, units):
    try:
        import torch
    except ImportError:
        return None
    module = (torch.nn.LSTM if family == "LSTM" else torch.nn.GRU)(
        features, units, batch_first=True
    )
    x = torch.randn(batch, steps, features)
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3)

    def forward():
        with torch.no_grad():
            return module(x)[0][:, -1]

    def train():
        optimizer.zero_grad()
        loss = module(x)[0][:, -1].square().mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    return {"forward": forward, "train": train}


def _interleaved(fns: dict, repeats: int, inner: int) -> dict:
    """Median seconds per call of each fn, timed in interleaved rounds."""
    for fn in fns.values():  # trace and warm up
        fn()
        fn()
    samples = {name: [] for name in fns}
    order = list(fns.items())
    for round_index in range(repeats):
        # Alternate the order so neither side always follows the other.
        for name, fn in order if round_index % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(values) for name, values in samples.items()}


def _sgemm_rate(batch, units, width, repeats):
    """GFLOP/s of (batch, units) x (units, width) matmuls in one tf.function.

    32 independent products per call, so the rate includes TensorFlow's
    per-op cost as the RNN's own recurrent matmul does, but not a loop.
    """
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a = tf.constant(rng.normal(size=(32, batch, units)).astype("float32"))
    w = tf.constant(rng.normal(size=(units, width)).astype("float32"))

    @tf.function
    def products(a):
        return tf.add_n([tf.reduce_sum(tf.matmul(a[k], w)) for k in range(32)])

    seconds = _interleaved({"sgemm": lambda: products(a).numpy()}, repeats, 3)["sgemm"]
    return 2.0 * batch * units * width * 32 / seconds / 1e9


def _forward_flops(family, batch, steps, features, units):
    width = GATE_BLOCKS[family] * units
    return 2.0 * batch * steps * (features + units) * width


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _memory_child(family, label, steps, features, units):
    """Runs in a subprocess: peak RSS over one training step, and its growth.

    The process's high-water mark is reset just before the step (writing 5
    to /proc/self/clear_refs, Linux), so the peak is the step's own, not the
    import's; ru_maxrss cannot be reset and hid the step behind TF's start-up.
    """
    _check_backend()
    make = dict(_layers()[family])[label]
    fns = _make_fns(make, 64, steps, features, units)
    # Warm the runtime on a forward pass (a training step would leave its
    # freed buffers in the allocator and hide the next one's); the growth then
    # counts the training step's activations and gradients, and its tracing.
    fns["forward"]()
    before = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    fns["train"]()
    peak = _status_mib("VmHWM")
    print(json.dumps({"peak_rss_mib": peak, "growth_mib": peak - before}))
    return 0


def _memory(family, label, steps, features, units):
    command = [
        sys.executable,
        "-m",
        "keras_gates.cli",
        "bench",
        "--memory-child",
        family,
        label,
        str(steps),
        str(features),
        str(units),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_benchmark(quick=False, repeats=None, memory=True, log=print) -> dict:
    _check_backend()
    import keras
    import tensorflow as tf

    configs = QUICK_CONFIGS if quick else FULL_CONFIGS
    repeats = repeats or (3 if quick else 11)
    results = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        "repeats": repeats,
        "rows": [],
        "memory": [],
        "serving": [],
    }
    try:
        import torch

        results["machine"]["torch"] = torch.__version__
    except ImportError:
        pass
    for family, candidates in _layers().items():
        for name, batch, steps, features, units, modes in configs:
            shape = f"{batch}x{steps}x{features}->{units}"
            fns = {
                label: _make_fns(make, batch, steps, features, units)
                for label, make in candidates
            }
            torch_fns = _torch_fns(family, batch, steps, features, units)
            sgemm = _sgemm_rate(batch, units, GATE_BLOCKS[family] * units, repeats)
            flops = _forward_flops(family, batch, steps, features, units)
            inner = 1 if quick else (3 if batch == 1 else 1)
            for mode in modes:
                timed = {label: f[mode] for label, f in fns.items()}
                medians = _interleaved(timed, repeats, inner)
                if torch_fns is not None:
                    # Timed apart: torch's OpenMP threads keep spinning after a
                    # call and slowed whichever TF function ran next.
                    medians.update(
                        _interleaved({"torch": torch_fns[mode]}, repeats, inner)
                    )
                ours_label = candidates[0][0]
                ours = medians[ours_label]
                mode_flops = flops * (3 if mode == "train" else 1)
                for label, _ in candidates[1:]:
                    row = {
                        "family": family,
                        "config": name,
                        "shape": shape,
                        "mode": mode,
                        "ours": ours_label,
                        "theirs": label,
                        "ours_ms": ours * 1e3,
                        "theirs_ms": medians[label] * 1e3,
                        "ratio": ours / medians[label],
                        "ours_gflops": mode_flops / ours / 1e9,
                        "sgemm_gflops": sgemm,
                        "torch_ms": medians["torch"] * 1e3
                        if "torch" in medians
                        else None,
                    }
                    results["rows"].append(row)
                    log(_format_row(row))
    results["serving"] = _serving_rows(quick, log)
    if memory:
        steps = MEMORY_STEPS["quick" if quick else "full"]
        features, units = (8, 16) if quick else (64, 128)
        for family, candidates in _layers().items():
            for label, _ in candidates:
                entry = {
                    "family": family,
                    "layer": label,
                    "shape": f"64x{steps}x{features}->{units}",
                    **_memory(family, label, steps, features, units),
                }
                results["memory"].append(entry)
                log(f"memory {label:38s} {entry}")
    return results


def _serving_rows(quick: bool, log) -> list[dict]:
    """Batch-1 latency of exported SavedModels under TF Serving's C++ loader.

    Ours through `export_for_serving`, the built-in through Keras's own
    `model.export`; the same model around each (Input -> RNN -> Dense(1)),
    the request run in a process without TensorFlow's Python package
    (keras_gates.verify.serving_latency), both measured twice, alternately.
    """
    import tempfile

    import keras
    import numpy as np

    from keras_gates.serving import export_for_serving
    from keras_gates.verify import serving_latency

    steps, features, units = (10, 8, 16) if quick else (100, 64, 128)
    runs = 20 if quick else 300
    x = np.random.default_rng(0).normal(size=(1, steps, features)).astype("float32")
    rows = []
    with tempfile.TemporaryDirectory(prefix="keras_gates_bench_") as base:
        for family, candidates in _layers().items():
            paths = {}
            for index, (label, make) in enumerate(candidates[:2]):
                keras.utils.set_random_seed(0)
                model = keras.Sequential(
                    [
                        keras.Input((None, features), name="inputs"),
                        make(units),
                        keras.layers.Dense(1),
                    ]
                )
                if index == 0:
                    paths[label] = export_for_serving(
                        model, base, f"ours_{family}", verify=False
                    )
                else:
                    paths[label] = os.path.join(base, f"builtin_{family}", "1")
                    model.export(paths[label], verbose=False)
            medians = {label: [] for label in paths}
            for _ in range(2):
                for label, path in paths.items():
                    latency = serving_latency(path, {"inputs": x}, repeats=runs)
                    medians[label].append(latency["median_ms"])
            (ours, ours_ms), (theirs, theirs_ms) = (
                (label, min(values)) for label, values in medians.items()
            )
            row = {
                "family": family,
                "shape": f"1x{steps}x{features}->{units}",
                "ours": ours,
                "theirs": theirs,
                "ours_ms": ours_ms,
                "theirs_ms": theirs_ms,
                "ratio": ours_ms / theirs_ms,
            }
            rows.append(row)
            log(f"serving {row}")
    return rows


HEADER = (
    "| layer | vs | config | shape (BxTxF->U) | mode | ours ms | theirs ms | ratio "
    "| ours GFLOP/s | sgemm GFLOP/s | torch ms |"
)


def _format_row(row) -> str:
    torch_ms = f"{row['torch_ms']:.2f}" if row["torch_ms"] is not None else "-"
    return (
        f"| {row['ours']} | {row['theirs']} | {row['config']} | {row['shape']} | "
        f"{row['mode']} | {row['ours_ms']:.2f} | {row['theirs_ms']:.2f} | "
        f"{row['ratio']:.2f}x | {row['ours_gflops']:.1f} | {row['sgemm_gflops']:.1f} | "
        f"{torch_ms} |"
    )


def format_table(results: dict) -> str:
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    lines += [_format_row(row) for row in results["rows"]]
    if results["memory"]:
        lines += ["", "| layer | shape (BxTxF->U) | train-step peak RSS growth MiB |"]
        lines += ["|---|---|---|"]
        for entry in results["memory"]:
            growth = entry.get("growth_mib")
            text = f"{growth:.0f}" if growth is not None else str(entry.get("error"))
            lines.append(f"| {entry['layer']} | {entry['shape']} | {text} |")
    if results.get("serving"):
        lines += [
            "",
            "| exported model (C++ loader, batch 1) | vs | shape | ours ms | "
            "theirs ms | ratio |",
            "|---|---|---|---|---|---|",
        ]
        for row in results["serving"]:
            lines.append(
                f"| {row['ours']} | {row['theirs']} | {row['shape']} | "
                f"{row['ours_ms']:.2f} | {row['theirs_ms']:.2f} | {row['ratio']:.2f}x |"
            )
    return "\n".join(lines)


def _option_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the options, before minutes of benchmark run."""
    if args.repeats is not None and args.repeats < 1:
        return f"`--repeats` must be a positive integer; received {args.repeats}."
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder):
            return (
                f"`--json` must be a file in an existing folder; received "
                f"{args.json!r}, and {folder!r} is not a folder."
            )
        if os.path.isdir(args.json):
            return f"`--json` must be a file path; received the folder {args.json!r}."
        if not os.access(folder, os.W_OK):
            return f"`--json`: the folder {folder!r} is not writable."
    return None


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.memory_child:
        family, label, steps, features, units = args.memory_child
        return _memory_child(family, label, int(steps), int(features), int(units))
    error = _option_error(args)
    if error:  # one line, no traceback, nothing run
        print(f"keras-gates bench: {error}", file=sys.stderr)
        return 2
    results = run_benchmark(
        quick=args.quick,
        repeats=args.repeats,
        memory=not args.no_memory,
        log=lambda line: print(line, file=sys.stderr),
    )
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0
