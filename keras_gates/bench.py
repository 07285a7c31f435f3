"""`keras-gates bench`: keras_gates.LSTM/GRU against the Keras built-ins, everywhere.

The matrix: for each way users run a model, ``keras_gates.LSTM`` against
``keras.layers.LSTM`` and ``keras_gates.GRU`` against
``keras.layers.GRU(reset_after=False)`` (the built-in it replaces: the same
maths) and ``keras.layers.GRU`` (Keras's default, ``reset_after=True``: what
a user would pick, another model), at batch 1, 8, 32 and 64 (what a serving
batcher sends, and a training batch), inference and, from batch 8, the training
step (forward, gradients, SGD update):

- ``tf-graph``: ``tf.function`` with a dynamic batch dimension, as a serving
  signature has it;
- ``tf-xla-model``: ``model.compile(jit_compile=True)``, ``predict_on_batch``
  and ``train_on_batch``;
- ``tf-xla-function``: a bare ``tf.function(jit_compile=True)``;
- ``jax``: KERAS_BACKEND=jax, ``model.compile(jit_compile=True)`` (``jax.jit``);
- ``torch``: KERAS_BACKEND=torch, ``model.compile()``, for information (if
  torch is installed).

Every comparison runs in one process, interleaved (ours, theirs, ours, ...;
the order alternates between rounds); each cell reports the median and the
minimum over the rounds, and the ratio ours / theirs of each. On a shared
machine the median moves with the other load; the minimum, the run least
disturbed, moves less. JAX and torch run in child processes (Keras fixes its
backend at import).

Also: the batch-1 and batch-8 latency of exported SavedModels under TF
Serving's C++ loader (``keras_gates.serving.verify.serving_latency``): ours plain and
XLA-compiled (``export_for_serving(..., jit_compile=True)``) against Keras's
own ``model.export``; and the peak memory of a 1000-step training step, each
layer in its own process. The machine's load average is recorded before and
after.

Usage:

    keras-gates bench [--quick] [--json PATH] [--repeats N] [--no-memory]
                      [--configs tf-graph,...] [--batches 1,8,...]
    python benchmarks/bench.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

SHAPE = {"full": (100, 64, 128), "quick": (10, 8, 16)}  # time, features, units
BATCHES = {"full": (1, 8, 32, 64), "quick": (1, 8)}
SERVING_BATCHES = {"full": (1, 8), "quick": (1,)}
CONFIGS = {
    "tensorflow": ("tf-graph", "tf-xla-model", "tf-xla-function"),
    "jax": ("jax",),
    "torch": ("torch",),
}
CONFIG_TITLES = {
    "tf-graph": "TF graph (tf.function, dynamic batch)",
    "tf-xla-model": "TF + XLA (model.compile(jit_compile=True))",
    "tf-xla-function": "TF + XLA (bare tf.function(jit_compile=True))",
    "jax": "JAX (model.compile(jit_compile=True))",
    "torch": "torch backend (model.compile(), for information)",
}
MEMORY_STEPS = {"full": 1000, "quick": 50}


def _layers():
    """(label, how to build it) per family; the first of each is ours, the
    second the built-in it replaces."""
    import keras

    import keras_gates

    return {
        "LSTM": [
            ("keras_gates.LSTM", lambda u: keras_gates.LSTM(u)),
            ("keras.layers.LSTM", lambda u: keras.layers.LSTM(u)),
        ],
        "GRU": [
            ("keras_gates.GRU", lambda u: keras_gates.GRU(u)),
            (
                "keras.layers.GRU(reset_after=False)",
                lambda u: keras.layers.GRU(u, reset_after=False),
            ),
            ("keras.layers.GRU", lambda u: keras.layers.GRU(u)),
        ],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="tiny shapes, few repeats (smoke test)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed rounds per measurement"
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory subprocesses"
    )
    parser.add_argument(
        "--no-serving", action="store_true", help="skip the exported-model latency"
    )
    parser.add_argument(
        "--configs",
        default=",".join(c for cs in CONFIGS.values() for c in cs),
        help="comma-separated configurations to time (default: all): "
        + ", ".join(c for cs in CONFIGS.values() for c in cs),
    )
    parser.add_argument(
        "--batches",
        default=None,
        help="comma-separated batch sizes of the matrix (default: "
        + ",".join(map(str, BATCHES["full"]))
        + "; --quick: "
        + ",".join(map(str, BATCHES["quick"]))
        + ")",
    )
    parser.add_argument("--memory-child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--backend-child", help=argparse.SUPPRESS)


def _check_backend():
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ValueError(
            "`KERAS_BACKEND` must be 'tensorflow' for `keras-gates bench` (the backend "
            f"TF Serving runs; JAX and torch run in child processes); received "
            f"{backend!r}."
        )


def _data(batch, steps, features, units, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, steps, features)).astype("float32")
    y = rng.normal(size=(batch, units)).astype("float32")
    return x, y


def _model(make, steps, features, units):
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((None, features)), make(units)])


def _fns(config, make, batch, steps, features, units):
    """{"infer": fn, "train": fn} for one layer in one configuration."""
    import keras

    x, y = _data(batch, steps, features, units)
    model = _model(make, steps, features, units)
    if config in ("tf-xla-model", "jax", "torch"):
        model.compile(
            optimizer=keras.optimizers.SGD(1e-3),
            loss="mse",
            jit_compile=config != "torch",
        )
        return {
            "infer": lambda: model.predict_on_batch(x),
            "train": lambda: model.train_on_batch(x, y),
        }
    import tensorflow as tf

    layer = model.layers[0]
    optimizer = keras.optimizers.SGD(1e-3)
    optimizer.build(layer.trainable_variables)
    options = {"jit_compile": config == "tf-xla-function"}
    if config == "tf-graph":  # the batch dimension a serving signature has
        spec = tf.TensorSpec((None, None, features), tf.float32)
        options["input_signature"] = [spec]

    @tf.function(**options)
    def forward(x):
        return layer(x)

    @tf.function(**options)
    def train(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(layer(x, training=True)))
        grads = tape.gradient(loss, layer.trainable_variables)
        optimizer.apply(grads, layer.trainable_variables)
        return loss

    x = tf.constant(x)
    return {"infer": lambda: forward(x).numpy(), "train": lambda: train(x).numpy()}


def _interleaved(fns: dict, repeats: int, inner: int) -> dict:
    """{name: (median, minimum)} seconds per call, timed in interleaved rounds."""
    for fn in fns.values():  # trace, compile and warm up
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
    return {
        name: (statistics.median(values), min(values))
        for name, values in samples.items()
    }


def matrix_rows(
    backend: str, quick: bool, repeats: int, configs: tuple, log=print, batches=None
) -> list[dict]:
    """Every cell of the matrix this process's backend can measure."""
    size = "quick" if quick else "full"
    steps, features, units = SHAPE[size]
    rows = []
    for config in (c for c in CONFIGS[backend] if c in configs):
        for family, candidates in _layers().items():
            for batch in batches or BATCHES[size]:
                modes = ("infer",) if batch == 1 else ("infer", "train")
                fns = {
                    label: _fns(config, make, batch, steps, features, units)
                    for label, make in candidates
                }
                inner = 5 if batch == 1 and not quick else 1
                for mode in modes:
                    timed = _interleaved(
                        {label: f[mode] for label, f in fns.items()}, repeats, inner
                    )
                    ours_label = candidates[0][0]
                    ours_median, ours_min = timed[ours_label]
                    for label, _ in candidates[1:]:
                        median, minimum = timed[label]
                        row = {
                            "backend": backend,
                            "config": config,
                            "family": family,
                            "ours": ours_label,
                            "theirs": label,
                            "batch": batch,
                            "mode": mode,
                            "shape": f"{batch}x{steps}x{features}->{units}",
                            "ours_ms": ours_median * 1e3,
                            "theirs_ms": median * 1e3,
                            "ratio": ours_median / median,
                            "ours_min_ms": ours_min * 1e3,
                            "theirs_min_ms": minimum * 1e3,
                            "min_ratio": ours_min / minimum,
                        }
                        rows.append(row)
                        log(_format_row(row))
    return rows


def _backend_child(
    backend: str, quick: bool, repeats: int, configs: tuple, batches=None
) -> int:
    """Runs in a child process under KERAS_BACKEND=backend: prints its rows."""
    import keras

    if keras.backend.backend() != backend:
        raise ValueError(
            f"the child expected KERAS_BACKEND={backend!r}; Keras runs "
            f"{keras.backend.backend()!r}."
        )
    rows = matrix_rows(
        backend, quick, repeats, configs, log=lambda line: None, batches=batches
    )
    print(json.dumps(rows))
    return 0


def _other_backend(
    backend: str, quick: bool, repeats: int, configs, log, batches=None
) -> dict:
    """The matrix rows of another backend, from a child process."""
    import importlib.util

    if importlib.util.find_spec(backend) is None:
        log(f"{backend}: not installed, skipped")
        return {"rows": [], "skipped": f"{backend} is not installed"}
    command = [sys.executable, "-m", "keras_gates.cli", "bench"]
    command += ["--backend-child", backend, "--repeats", str(repeats)]
    command += ["--configs", ",".join(configs)]
    command += ["--quick"] if quick else []
    command += ["--batches", ",".join(map(str, batches))] if batches else []
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if backend == "jax":
        env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        log(f"{backend}: failed: {reason}")
        return {"rows": [], "skipped": f"the {backend} child failed: {reason}"}
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    for row in rows:
        log(_format_row(row))
    return {"rows": rows}


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
    fns = _fns("tf-graph", make, 64, steps, features, units)
    # Warm the runtime on a forward pass (a training step would leave its
    # freed buffers in the allocator and hide the next one's); the growth then
    # counts the training step's activations and gradients, and its tracing.
    fns["infer"]()
    before = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    fns["train"]()
    peak = _status_mib("VmHWM")
    print(json.dumps({"peak_rss_mib": peak, "growth_mib": peak - before}))
    return 0


def _memory(family, label, steps, features, units):
    command = [sys.executable, "-m", "keras_gates.cli", "bench", "--memory-child"]
    command += [family, label, str(steps), str(features), str(units)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _load() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def run_benchmark(
    quick=False,
    repeats=None,
    memory=True,
    serving=True,
    configs=None,
    log=print,
    batches=None,
) -> dict:
    _check_backend()
    import keras
    import tensorflow as tf

    repeats = repeats or (3 if quick else 11)
    configs = tuple(configs or (c for cs in CONFIGS.values() for c in cs))
    results = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "load_before": _load(),
        "repeats": repeats,
        "rows": [],
        "skipped": {},
        "serving": [],
        "memory": [],
    }
    for backend in ("jax", "torch"):
        try:
            module = __import__(backend)
            results["machine"][backend] = module.__version__
        except ImportError:
            pass
    results["rows"] += matrix_rows(
        "tensorflow", quick, repeats, configs, log, batches=batches
    )
    for backend in ("jax", "torch"):
        if not set(CONFIGS[backend]) & set(configs):
            continue
        other = _other_backend(backend, quick, repeats, configs, log, batches)
        results["rows"] += other["rows"]
        if "skipped" in other:
            results["skipped"][backend] = other["skipped"]
    if serving:
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
    results["load_after"] = _load()
    results["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    return results


def _serving_rows(quick: bool, log) -> list[dict]:
    """Latency of exported SavedModels under TF Serving's C++ loader.

    The same model around each layer (Input -> RNN -> Dense(1)): ours through
    ``export_for_serving`` plain and with ``jit_compile=True``, the built-in
    through Keras's own ``model.export``; each request run in a process
    without TensorFlow's Python package (``serving_latency``), every export
    measured twice, alternately, at each batch of ``SERVING_BATCHES``; the
    better of the two medians is reported.
    """
    import tempfile

    import keras
    import numpy as np

    from keras_gates.serving import export_for_serving
    from keras_gates.serving.verify import serving_latency

    size = "quick" if quick else "full"
    steps, features, units = SHAPE[size]
    runs = 20 if quick else 300
    rng = np.random.default_rng(0)
    xs = {
        batch: rng.normal(size=(batch, steps, features)).astype("float32")
        for batch in SERVING_BATCHES[size]
    }
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
                    for jit in (False, True):
                        name = f"ours_{family}_{'xla' if jit else 'plain'}"
                        paths[(label, jit)] = export_for_serving(
                            model, base, name, verify=False, jit_compile=jit
                        )
                else:
                    paths[(label, False)] = os.path.join(base, f"builtin_{family}", "1")
                    model.export(str(paths[(label, False)]), verbose=False)
            medians = {(key, b): [] for key in paths for b in xs}
            for _ in range(2):
                for batch, x in xs.items():
                    for key, path in paths.items():
                        latency = serving_latency(path, {"inputs": x}, repeats=runs)
                        medians[key, batch].append(latency["median_ms"])
            best = {key: min(values) for key, values in medians.items()}
            theirs_key = next(key for key in paths if key[0] == candidates[1][0])
            for (key, batch), ms in best.items():
                if key == theirs_key:
                    continue
                theirs_ms = best[theirs_key, batch]
                row = {
                    "family": family,
                    "batch": batch,
                    "shape": f"{batch}x{steps}x{features}->{units}",
                    "ours": key[0] + (" (jit_compile=True)" if key[1] else ""),
                    "jit_compile": key[1],
                    "theirs": theirs_key[0] + " (model.export)",
                    "ours_ms": ms,
                    "theirs_ms": theirs_ms,
                    "ratio": ms / theirs_ms,
                }
                rows.append(row)
                log(f"serving {row}")
    return rows


HEADER = (
    "| configuration | layer | vs | shape (BxTxF->U) | mode | ours ms | theirs ms "
    "| ratio (median) | ratio (min) |"
)


def _format_row(row) -> str:
    return (
        f"| {row['config']} | {row['ours']} | {row['theirs']} | {row['shape']} | "
        f"{row['mode']} | {row['ours_ms']:.2f} | {row['theirs_ms']:.2f} | "
        f"{row['ratio']:.2f}x | {row['min_ratio']:.2f}x |"
    )


def format_table(results: dict) -> str:
    lines = [
        f"load average before {results.get('load_before')}, after "
        f"{results.get('load_after')}; {results.get('started')}",
        "",
        HEADER,
        "|" + "---|" * HEADER.count(" | ") + "---|",
    ]
    lines += [_format_row(row) for row in results["rows"]]
    for backend, why in results.get("skipped", {}).items():
        lines.append(f"\n{backend}: skipped ({why})")
    if results.get("serving"):
        lines += [
            "",
            "| exported model (C++ loader) | vs | shape | ours ms | "
            "theirs ms | ratio |",
            "|---|---|---|---|---|---|",
        ]
        for row in results["serving"]:
            lines.append(
                f"| {row['ours']} | {row['theirs']} | {row['shape']} | "
                f"{row['ours_ms']:.2f} | {row['theirs_ms']:.2f} | {row['ratio']:.2f}x |"
            )
    if results["memory"]:
        lines += ["", "| layer | shape (BxTxF->U) | train-step peak RSS growth MiB |"]
        lines += ["|---|---|---|"]
        for entry in results["memory"]:
            growth = entry.get("growth_mib")
            text = f"{growth:.0f}" if growth is not None else str(entry.get("error"))
            lines.append(f"| {entry['layer']} | {entry['shape']} | {text} |")
    return "\n".join(lines)


def _option_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the options, before minutes of benchmark run."""
    if args.repeats is not None and args.repeats < 1:
        return f"`--repeats` must be a positive integer; received {args.repeats}."
    if args.batches is not None and _batches(args.batches) is None:
        return (
            "`--batches` must be comma-separated positive integers; received "
            f"{args.batches!r}."
        )
    known = [c for cs in CONFIGS.values() for c in cs]
    unknown = [c for c in args.configs.split(",") if c not in known]
    if unknown:
        return (
            f"`--configs` must name configurations among {', '.join(known)}; "
            f"received {args.configs!r}."
        )
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


def _batches(text: str | None) -> tuple | None:
    """``"1,8"`` -> ``(1, 8)``; None for None or anything else."""
    if text is None:
        return None
    parts = text.split(",")
    if not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        return None
    return tuple(int(p) for p in parts)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.memory_child:
        family, label, steps, features, units = args.memory_child
        return _memory_child(family, label, int(steps), int(features), int(units))
    if args.backend_child:
        repeats = args.repeats or (3 if args.quick else 11)
        configs = tuple(args.configs.split(","))
        return _backend_child(
            args.backend_child, args.quick, repeats, configs, _batches(args.batches)
        )
    error = _option_error(args)
    if error:  # one line, no traceback, nothing run
        print(f"keras-gates bench: {error}", file=sys.stderr)
        return 2
    results = run_benchmark(
        quick=args.quick,
        repeats=args.repeats,
        memory=not args.no_memory,
        serving=not args.no_serving,
        configs=tuple(args.configs.split(",")),
        log=lambda line: print(line, file=sys.stderr),
        batches=_batches(args.batches),
    )
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0
