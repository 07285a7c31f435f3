"""The GPU check: keras_gates on a GPU, proven against cuDNN, and timed.

Run on a machine with a GPU (Colab's GPU runtime, a lent device), from the
repository root, in one command (under 8 minutes on one datacenter GPU):

    python benchmarks/gpu_check.py [--json PATH] [--budget SECONDS]

It does three things and prints each as it goes:

1. **Where it runs**: the GPU, its driver, CUDA and cuDNN as TensorFlow was
   built with them, the TensorFlow / Keras / JAX / torch versions.
2. **Proofs** (TensorFlow; TF32 off, so float32 means float32): for each case
   (no mask; right-padded mask; go_backwards; return_state; Bidirectional),
   ``keras_gates.LSTM`` on its cuDNN path against the same layer on its own
   kernel (``use_cudnn=False``) and against ``keras.layers.LSTM`` on cuDNN
   with the same weights: outputs, final states and the gradients of a loss
   with respect to the inputs and every weight, each the largest absolute
   difference (pass: <= 1e-5; for gradients, 1e-5 of the largest gradient
   where that is above 1: float32's rounding grows with the size). It also
   checks that the traced graph holds a CudnnRNNV3 op (cuDNN really ran)
   and that a serving export of the model holds none (a CPU-only TF Serving
   loads it).
3. **The matrix**: LSTM and GRU at batch 1, 64 and 512 (100 steps, 64
   features, 128 units), inference and a training step (forward, gradients,
   SGD update), under the TF graph (``tf.function``), TF + XLA
   (``tf.function(jit_compile=True)``, what ``jit_compile="auto"`` gives a
   model on a GPU where no layer refuses XLA) and JAX (torch too if
   installed): ours / built-in and the absolute milliseconds (medians of
   interleaved rounds). The LSTM is compared with ``keras.layers.LSTM``
   (cuDNN in the TF graph; under XLA, where cuDNN cannot run, with
   ``use_cudnn=False``); the GRU with ``keras.layers.GRU(reset_after=False)``
   (the model it replaces) and, for information, Keras's default cuDNN GRU
   (another model). Then the kernels' forms (``keras_gates.kernels``) timed
   one by one at inference, the data to choose a GPU's forms by.

Where TensorFlow is not installed (a machine with JAX on its GPU and no
TensorFlow wheel for it), the TensorFlow sections are not run and say so,
and the JAX column runs alone, with its own proofs: ``keras_gates.LSTM`` and
``GRU`` against ``keras.layers.LSTM`` / ``GRU(reset_after=False)`` on the
same weights under JAX (matmul precision "highest"), the same cases,
outputs and gradients; then the matrix and each kernel form timed under
``jax.jit``.

On a machine without a GPU it says so in one line and exits 0.
``--allow-cpu`` runs everything on the CPU at a tiny size (the test suite
does, so the script is known to run before a GPU is lent).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

if os.environ.get("GPU_CHECK_NO_TENSORFLOW"):  # (--no-tensorflow: the TF-free run)
    import importlib.abc

    class _NoTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.partition(".")[0] == "tensorflow":
                raise ModuleNotFoundError(f"{name}: --no-tensorflow")

    sys.meta_path.insert(0, _NoTensorFlow())

SHAPES = {"full": (100, 64, 128), "tiny": (6, 4, 5)}  # time, features, units
BATCHES = {"full": (1, 64, 512), "tiny": (1, 3)}
TOLERANCE = 1e-5
PROOF_CASES = ("plain", "right_padded", "go_backwards", "return_state", "bidirectional")


def _say(line: str = "") -> None:
    print(line, flush=True)


# --- 1. where it runs --------------------------------------------------------


def versions() -> dict:
    import keras

    try:
        import tensorflow as tf
    except ImportError:
        found = {"tensorflow": "not installed", "keras": keras.__version__}
    else:
        info = tf.sysconfig.get_build_info()
        found = {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "cuda (TF build)": info.get("cuda_version"),
            "cudnn (TF build)": info.get("cudnn_version"),
            "gpus (TF)": [d.name for d in tf.config.list_physical_devices("GPU")],
        }
    if shutil.which("nvidia-smi"):
        query = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
        )
        found["nvidia-smi"] = query.stdout.strip() or query.stderr.strip()
    for name in ("jax", "torch"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        found[name] = module.__version__
    if "jax" in found and found["tensorflow"] == "not installed":
        import jax  # (with TensorFlow beside it, JAX's allocator stays out)

        found["devices (JAX)"] = [str(d) for d in jax.devices()]
    return found


# --- 2. proofs ---------------------------------------------------------------


def _copy_weights(source, *targets) -> None:
    for target in targets:
        for a, b in zip(source.weights, target.weights, strict=True):
            b.assign(a)


def _case_layers(case: str, units: int, features: int, makers=None):
    """The case's layers, built, the first one's random weights copied into
    the others. ``makers``: callables ``(units, **options) -> layer``; by
    default (ours on cuDNN, ours on its own kernel, keras.layers.LSTM on
    cuDNN)."""
    import keras

    import keras_gates

    options = {"return_sequences": True}
    if case == "go_backwards":
        options["go_backwards"] = True
    if case == "return_state":
        options = {"return_state": True}
    if makers is None:
        makers = (
            keras_gates.LSTM,
            lambda u, **o: keras_gates.LSTM(u, use_cudnn=False, **o),
            keras.layers.LSTM,
        )
    layers = []
    for make in makers:
        layer = make(units, **options)
        if case == "bidirectional":
            layer = keras.layers.Bidirectional(layer)
        layer.build((None, None, features))
        layers.append(layer)
    keras.utils.set_random_seed(1)
    for variable in layers[0].weights:
        variable.assign(keras.random.uniform(variable.shape, -0.5, 0.5))
    _copy_weights(layers[0], *layers[1:])
    return layers


def _graph_ops(concrete) -> set:
    graph = concrete.graph.as_graph_def()
    found = {node.op for node in graph.node}
    for function in graph.library.function:
        found.update(node.op for node in function.node_def)
    return found


def _within_tolerance(row: dict) -> bool:
    """Outputs within TOLERANCE; gradients within TOLERANCE of their scale.

    The outputs lie in (-1, 1); a gradient's float32 rounding grows with its
    size (on an H200, GRU gradients up to 49 differed by 1.3e-5 between two
    orders of the same sums: 3e-7 of the largest), so a gradient's
    difference is measured against max(1, its largest magnitude).
    """
    scale = max(1.0, row["largest_gradient"])
    return all(
        value <= TOLERANCE * (scale if key.startswith("gradients") else 1.0)
        for key, value in row.items()
        if key.endswith(("_vs_own", "_vs_keras"))
    )


def _largest_of(first, second) -> float:
    """The largest difference between two lists of arrays, pairwise."""
    return max(
        (_largest(a, b) for a, b in zip(first, second, strict=True)), default=0.0
    )


def _largest(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def prove(case: str, batch: int, steps: int, features: int, units: int) -> dict:
    """One proof case: the largest differences, and whether cuDNN ran."""
    import numpy as np
    import tensorflow as tf

    x, mask, shown = _case_inputs(case, batch, steps, features)
    x = tf.constant(x)
    if mask is not None:
        mask, shown = tf.constant(mask), tf.constant(shown.copy())
    layers = _case_layers(case, units, features)

    def run(layer):
        @tf.function
        def forward_and_gradients(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                out = layer(x, mask=mask) if mask is not None else layer(x)
                outs = list(out) if isinstance(out, (list, tuple)) else [out]
                if shown is not None:
                    outs = [o * tf.cast(shown, o.dtype)[:, :, None] for o in outs]
                loss = tf.add_n([tf.reduce_sum(tf.square(o)) for o in outs])
            grads = tape.gradient(loss, [x, *layer.trainable_weights])
            return outs, grads

        outs, grads = forward_and_gradients(x)
        ops = _graph_ops(forward_and_gradients.get_concrete_function(x))
        return [o.numpy() for o in outs], [g.numpy() for g in grads], ops

    ours, own, builtin = (run(layer) for layer in layers)
    return {
        "case": case,
        "cudnn_ran": "CudnnRNNV3" in ours[2],
        "keras_cudnn_ran": "CudnnRNNV3" in builtin[2],
        "own_kernel_free_of_cudnn": "CudnnRNNV3" not in own[2],
        "outputs_vs_own": _largest_of(ours[0], own[0]),
        "gradients_vs_own": _largest_of(ours[1], own[1]),
        "outputs_vs_keras": _largest_of(ours[0], builtin[0]),
        "gradients_vs_keras": _largest_of(ours[1], builtin[1]),
        "largest_gradient": max(float(np.abs(g).max()) for g in builtin[1]),
    }


def export_check(features: int, units: int) -> dict:
    """A serving export made here: GPU-only ops in it, and the C++ loader."""
    import keras

    import keras_gates
    from keras_gates.serving.export import GPU_ONLY_OPS, graph_ops

    model = keras.Sequential(
        [
            keras.Input((None, features)),
            keras_gates.LSTM(units, return_sequences=True),
            keras.layers.Dense(1),
        ]
    )
    with tempfile.TemporaryDirectory() as base:
        path = keras_gates.export_for_serving(model, base, "gpu_check", verify=True)
        gpu_ops = sorted(graph_ops(path) & set(GPU_ONLY_OPS))
    return {"gpu_only_ops_in_export": gpu_ops, "verified_by_cpp_loader": True}


def proofs(size: str) -> dict:
    import tensorflow as tf

    tf.config.experimental.enable_tensor_float_32_execution(False)
    steps, features, units = SHAPES["tiny"] if size == "tiny" else (20, 16, 32)
    rows = []
    for case in PROOF_CASES:
        row = prove(case, 8, steps, features, units)
        _say(
            f"  {case:<14} cuDNN ran: {row['cudnn_ran']!s:<5} "
            f"vs own kernel: out {row['outputs_vs_own']:.1e} "
            f"grad {row['gradients_vs_own']:.1e}; vs keras.layers.LSTM: "
            f"out {row['outputs_vs_keras']:.1e} grad {row['gradients_vs_keras']:.1e}"
        )
        rows.append(row)
    export = export_check(features, units)
    _say(f"  serving export: GPU-only ops {export['gpu_only_ops_in_export'] or 'none'}")
    tf.config.experimental.enable_tensor_float_32_execution(True)
    passed = (
        all(_within_tolerance(row) for row in rows)
        and all(row["own_kernel_free_of_cudnn"] for row in rows)
        and not export["gpu_only_ops_in_export"]
    )
    return {"cases": rows, "export": export, "passed": passed}


# --- 3. the matrix -----------------------------------------------------------


def _families():
    import keras

    import keras_gates

    return {
        "LSTM": {
            "tf-graph": [
                ("keras_gates.LSTM", lambda u: keras_gates.LSTM(u)),
                ("keras.layers.LSTM (cuDNN)", lambda u: keras.layers.LSTM(u)),
            ],
            "tf-xla": [
                ("keras_gates.LSTM", lambda u: keras_gates.LSTM(u)),
                (
                    "keras.layers.LSTM(use_cudnn=False)",
                    lambda u: keras.layers.LSTM(u, use_cudnn=False),
                ),
            ],
        },
        "GRU": {
            config: [
                ("keras_gates.GRU", lambda u: keras_gates.GRU(u)),
                (
                    "keras.layers.GRU(reset_after=False)",
                    lambda u: keras.layers.GRU(u, reset_after=False),
                ),
                (
                    "keras.layers.GRU (default"
                    + (", cuDNN)" if config == "tf-graph" else ", use_cudnn=False)"),
                    (lambda u: keras.layers.GRU(u))
                    if config == "tf-graph"
                    else (lambda u: keras.layers.GRU(u, use_cudnn=False)),
                ),
            ]
            for config in ("tf-graph", "tf-xla")
        },
    }


def _tf_fns(make, config, batch, steps, features, units):
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    layer = make(units)
    layer.build((None, None, features))
    optimizer = keras.optimizers.SGD(1e-3)
    optimizer.build(layer.trainable_variables)
    x = tf.constant(
        np.random.default_rng(0).normal(size=(batch, steps, features)), tf.float32
    )
    jit = config == "tf-xla"

    @tf.function(jit_compile=jit)
    def infer(x):
        return layer(x)

    @tf.function(jit_compile=jit)
    def train(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(layer(x, training=True)))
        grads = tape.gradient(loss, layer.trainable_variables)
        optimizer.apply(grads, layer.trainable_variables)
        return loss

    return {"infer": lambda: infer(x).numpy(), "train": lambda: train(x).numpy()}


def _timed(fns: dict, repeats: int) -> dict:
    """{name: median seconds per call}, interleaved rounds after a warm-up."""
    for fn in fns.values():
        fn()
        fn()
    samples = {name: [] for name in fns}
    order = list(fns.items())
    for index in range(repeats):
        for name, fn in order if index % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def _rows(config, family, batch, mode, timed, labels, steps, features, units):
    ours = labels[0]
    return [
        {
            "config": config,
            "family": family,
            "batch": batch,
            "mode": mode,
            "shape": f"{batch}x{steps}x{features}->{units}",
            "ours": ours,
            "theirs": label,
            "ours_ms": timed[ours] * 1e3,
            "theirs_ms": timed[label] * 1e3,
            "ratio": timed[ours] / timed[label],
        }
        for label in labels[1:]
    ]


def _print_row(row: dict) -> None:
    _say(
        f"  {row['config']:<9} {row['family']:<4} b{row['batch']:<4} {row['mode']:<5} "
        f"{row['ours_ms']:8.2f} ms vs {row['theirs_ms']:8.2f} ms "
        f"({row['theirs']}): {row['ratio']:.2f}x"
    )


def tf_matrix(size: str, repeats: int, deadline: float) -> tuple[list, list]:
    steps, features, units = SHAPES[size]
    rows, skipped = [], []
    for config in ("tf-graph", "tf-xla"):
        for family, by_config in _families().items():
            candidates = by_config[config]
            for batch in BATCHES[size]:
                for mode in ("infer", "train"):
                    cell = f"{config} {family} b{batch} {mode}"
                    if time.monotonic() > deadline:
                        skipped.append(cell)
                        continue
                    fns = {
                        label: _tf_fns(make, config, batch, steps, features, units)[
                            mode
                        ]
                        for label, make in candidates
                    }
                    timed = _timed(fns, repeats)
                    labels = [label for label, _ in candidates]
                    for row in _rows(
                        config,
                        family,
                        batch,
                        mode,
                        timed,
                        labels,
                        steps,
                        features,
                        units,
                    ):
                        rows.append(row)
                        _print_row(row)
    return rows, skipped


def _form_fn(function, form, jit, x, states, kernel, recurrent, bias):
    import tensorflow as tf

    def run(x):
        return function(x, *states, None, kernel, recurrent, bias, form=form)[0]

    compiled_run = tf.function(run, jit_compile=jit)
    return lambda: compiled_run(x).numpy()


def _kernels(kernels) -> tuple:
    """(name, sequence function, its forms, its gate blocks) per kernel."""
    return (
        ("LSTM", kernels.lstm_sequence, kernels.LSTM_FORMS, 4),
        ("GRU", kernels.gru_sequence, kernels.GRU_FORMS, 3),
    )


def forms_matrix(size: str, repeats: int, deadline: float) -> tuple[list, list]:
    """Each form of each kernel at inference, TF graph and XLA: ms."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_gates import kernels

    steps, features, units = SHAPES[size]
    rows, skipped = [], []
    rng = np.random.default_rng(0)
    for name, function, forms, blocks in _kernels(kernels):
        kernel = tf.constant(
            rng.uniform(-0.1, 0.1, (features, blocks * units)), "float32"
        )
        recurrent = tf.constant(
            rng.uniform(-0.1, 0.1, (units, blocks * units)), "float32"
        )
        bias = tf.zeros((blocks * units,))
        for jit in (False, True):
            for batch in BATCHES[size]:
                cell = f"forms {name} b{batch} {'xla' if jit else 'graph'}"
                if time.monotonic() > deadline:
                    skipped.append(cell)
                    continue
                x = tf.constant(rng.normal(size=(batch, steps, features)), "float32")
                states = [tf.zeros((batch, units))] * (2 if name == "LSTM" else 1)
                fns = {
                    form: _form_fn(
                        function, form, jit, x, states, kernel, recurrent, bias
                    )
                    for form in forms
                    if jit or form != "compiled"
                }
                timed = _timed(fns, repeats)
                row = {
                    "family": name,
                    "config": "tf-xla" if jit else "tf-graph",
                    "batch": batch,
                    **{f"{form}_ms": seconds * 1e3 for form, seconds in timed.items()},
                }
                rows.append(row)
                _say(
                    f"  {row['config']:<9} {name:<4} b{batch:<4} "
                    + " ".join(f"{f} {s * 1e3:.2f} ms" for f, s in timed.items())
                )
    del keras
    return rows, skipped


def backend_child(backend: str, size: str, repeats: int, budget: float) -> dict:
    """The matrix's JAX (or torch) column, in a child process."""
    env = {**os.environ, "KERAS_BACKEND": backend}
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--backend-child",
        backend,
        "--size",
        size,
        "--repeats",
        str(repeats),
        "--budget",
        str(budget),
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=budget + 120
        )
    except subprocess.TimeoutExpired:
        return {"rows": [], "skipped": [f"{backend}: timed out"]}
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        return {"rows": [], "skipped": [f"{backend}: failed: {' | '.join(tail)}"]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child_rows(backend: str, size: str, repeats: int, budget: float) -> dict:
    import keras
    import numpy as np

    import keras_gates

    deadline = time.monotonic() + budget
    proved = backend_proofs(size) if backend == "jax" else None
    matrix_deadline = time.monotonic() + 0.65 * (deadline - time.monotonic())
    steps, features, units = SHAPES[size]
    families = {
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
            ("keras.layers.GRU (default)", lambda u: keras.layers.GRU(u)),
        ],
    }
    if backend == "jax":
        # On a GPU both LSTMs above run cuDNN (Keras 3.15's JAX path); the
        # package's own kernel ("unrolled" there) against it decides whether
        # use_cudnn="auto" should prefer cuDNN on JAX.
        families["LSTM own kernel"] = [
            (
                "keras_gates.LSTM(use_cudnn=False)",
                lambda u: keras_gates.LSTM(u, use_cudnn=False),
            ),
            ("keras.layers.LSTM", lambda u: keras.layers.LSTM(u)),
        ]
    rows, skipped = [], []
    for family, candidates in families.items():
        for batch in BATCHES[size]:
            if time.monotonic() > matrix_deadline:
                skipped.append(f"{backend} {family} b{batch}")
                continue
            rng = np.random.default_rng(0)
            x = rng.normal(size=(batch, steps, features)).astype("float32")
            y = rng.normal(size=(batch, units)).astype("float32")
            fns = {}
            for label, make in candidates:
                keras.utils.set_random_seed(0)
                model = keras.Sequential([keras.Input((None, features)), make(units)])
                model.compile(
                    optimizer=keras.optimizers.SGD(1e-3),
                    loss="mse",
                    jit_compile=backend == "jax",
                )
                fns[label] = {
                    "infer": lambda m=model, x=x: np.asarray(m.predict_on_batch(x)),
                    "train": lambda m=model, x=x, y=y: m.train_on_batch(x, y),
                }
            for mode in ("infer", "train"):
                timed = _timed({k: v[mode] for k, v in fns.items()}, repeats)
                labels = [label for label, _ in candidates]
                rows += _rows(
                    backend, family, batch, mode, timed, labels, steps, features, units
                )
    forms = []
    if backend == "jax":
        forms, skipped_forms = backend_forms(size, repeats, deadline)
        skipped += skipped_forms
    return {"proofs": proved, "rows": rows, "forms": forms, "skipped": skipped}


def _case_inputs(case: str, batch: int, steps: int, features: int):
    """x, the mask (or None) and the steps whose outputs both layers define
    alike (or None): Keras's cuDNN LSTM writes zeros after each example's
    end, where the layers repeat h_T (go_backwards returns them in reading
    order: the mask reversed). NumPy arrays."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, steps, features)).astype("float32")
    if case not in ("right_padded", "go_backwards", "bidirectional"):
        return x, None, None
    lengths = rng.integers(1, steps + 1, size=batch)
    lengths[0] = steps
    mask = np.arange(steps)[None, :] < lengths[:, None]
    return x, mask, mask[:, ::-1] if case == "go_backwards" else mask


def _jax_forward_and_gradients(layer, x, mask, shown):
    import jax
    import jax.numpy as jnp
    import numpy as np

    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def loss(trainable, x):
        kwargs = {} if mask is None else {"mask": jnp.asarray(mask)}
        out, _ = layer.stateless_call(trainable, non_trainable, x, **kwargs)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        if shown is not None:
            outs = [o * jnp.asarray(shown, o.dtype)[:, :, None] for o in outs]
        return sum(jnp.sum(jnp.square(o)) for o in outs), outs

    run = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, outs), (weight_grads, x_grad) = run(trainable, jnp.asarray(x))
    return [np.asarray(o) for o in outs], [
        np.asarray(g) for g in (x_grad, *weight_grads)
    ]


def backend_proofs(size: str) -> dict:
    """Under JAX: the layers against Keras's own on the same weights."""
    import functools

    import jax
    import keras

    import keras_gates

    jax.config.update("jax_default_matmul_precision", "highest")
    steps, features, units = SHAPES["tiny"] if size == "tiny" else (20, 16, 32)
    pairs = {
        # On a GPU keras_gates.LSTM runs cuDNN where Keras's does (unmasked):
        # "LSTM own kernel" proves the package's kernel ("unrolled" there).
        "LSTM": (keras_gates.LSTM, keras.layers.LSTM),
        "LSTM own kernel": (
            functools.partial(keras_gates.LSTM, use_cudnn=False),
            keras.layers.LSTM,
        ),
        "GRU": (
            keras_gates.GRU,
            functools.partial(keras.layers.GRU, reset_after=False),
        ),
    }
    rows = []
    try:
        _prove_pairs(pairs, steps, features, units, rows)
    finally:
        jax.config.update("jax_default_matmul_precision", None)
    return {"cases": rows, "passed": all(_within_tolerance(row) for row in rows)}


def _prove_pairs(pairs, steps, features, units, rows) -> None:
    for family, makers in pairs.items():
        for case in PROOF_CASES:
            x, mask, shown = _case_inputs(case, 8, steps, features)
            layers = _case_layers(case, units, features, makers)
            ours, theirs = (
                _jax_forward_and_gradients(layer, x, mask, shown) for layer in layers
            )
            rows.append(
                {
                    "family": family,
                    "case": case,
                    "outputs_vs_keras": _largest_of(ours[0], theirs[0]),
                    "gradients_vs_keras": _largest_of(ours[1], theirs[1]),
                    "largest_gradient": max(float(abs(g).max()) for g in theirs[1]),
                }
            )


def _first_output(function, states, kernel, recurrent, bias, form):
    def run(x):
        return function(x, *states, None, kernel, recurrent, bias, form=form)[0]

    return run


def _summed(function, states, bias, form):
    """A training step's loss: the sum of the outputs, as a function of the
    inputs and both kernels."""

    def loss(x, kernel, recurrent):
        outputs = function(
            x, *states, None, kernel, recurrent, bias, form=form, training=True
        )[0]
        return outputs.sum()

    return loss


def _ready(function, *args):
    import jax

    return jax.block_until_ready(function(*args))


def backend_forms(size: str, repeats: int, deadline: float) -> tuple[list, list]:
    """Under JAX: each kernel form under jax.jit, ms: at inference, and the
    gradient of the outputs' sum ("_train")."""
    import functools

    import jax
    import numpy as np

    from keras_gates import kernels

    steps, features, units = SHAPES[size]
    rows, skipped = [], []
    rng = np.random.default_rng(0)
    for name, function, forms, blocks in _kernels(kernels):
        kernel = rng.uniform(-0.1, 0.1, (features, blocks * units)).astype("float32")
        recurrent = rng.uniform(-0.1, 0.1, (units, blocks * units)).astype("float32")
        bias = np.zeros((blocks * units,), "float32")
        for batch in BATCHES[size]:
            if time.monotonic() > deadline:
                skipped.append(f"jax forms {name} b{batch}")
                continue
            x = rng.normal(size=(batch, steps, features)).astype("float32")
            states = [np.zeros((batch, units), "float32")] * (
                2 if name == "LSTM" else 1
            )
            fns = {}
            for form in ("auto", *forms):
                if form in ("block", "bptt"):  # TensorFlow's ops and loop
                    continue
                jitted = jax.jit(
                    _first_output(function, states, kernel, recurrent, bias, form)
                )
                fns[form] = functools.partial(_ready, jitted, x)
                train = jax.jit(
                    jax.grad(_summed(function, states, bias, form), argnums=(0, 1, 2))
                )
                fns[f"{form}_train"] = functools.partial(
                    _ready, train, x, kernel, recurrent
                )
            timed = _timed(fns, repeats)
            row = {"family": name, "config": "jax", "batch": batch}
            row.update({f"{form}_ms": seconds * 1e3 for form, seconds in timed.items()})
            rows.append(row)
    return rows, skipped


def _say_backend(child: dict) -> None:
    proved = child.get("proofs")
    if proved:
        for row in proved["cases"]:
            _say(
                f"  jax {row['family']:<4} {row['case']:<14} vs Keras's own: "
                f"out {row['outputs_vs_keras']:.1e} "
                f"grad {row['gradients_vs_keras']:.1e}"
                f" (largest gradient {row['largest_gradient']:.1e})"
            )
        _say(f"  jax proofs {'passed' if proved['passed'] else 'FAILED'}")
    for row in child["rows"]:
        _print_row(row)
    for row in child.get("forms", []):
        _say(
            f"  forms jax {row['family']:<4} b{row['batch']:<4} "
            + " ".join(
                f"{key[:-3]} {value:.2f} ms"
                for key, value in row.items()
                if key.endswith("_ms")
            )
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--repeats", type=int, default=10, help="rounds per cell")
    parser.add_argument(
        "--budget", type=float, default=330.0, help="seconds for the matrix"
    )
    parser.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-tensorflow", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=sorted(SHAPES), help=argparse.SUPPRESS)
    parser.add_argument("--backend-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.backend_child:
        result = _child_rows(
            args.backend_child, args.size or "full", args.repeats, args.budget
        )
        print(json.dumps(result))
        return 0
    if args.no_tensorflow and not os.environ.get("GPU_CHECK_NO_TENSORFLOW"):
        os.environ["GPU_CHECK_NO_TENSORFLOW"] = "1"  # for this run and its child
        return subprocess.run(
            [sys.executable, os.path.abspath(__file__), *argv_of(argv)]
        ).returncode

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError:
        return _without_tensorflow(args)

    tf.get_logger().setLevel("ERROR")  # each cell traces its own functions
    if not tf.config.list_physical_devices("GPU") and not args.allow_cpu:
        _say("gpu_check: no GPU visible to TensorFlow here; nothing to check (exit 0).")
        return 0
    size, started, report = _start(args)
    _say(
        "2. proofs (TF32 off; pass: every difference <= 1e-5, for gradients "
        "times their largest magnitude)"
    )
    report["proofs"] = proofs(size)
    _say(f"  proofs {'passed' if report['proofs']['passed'] else 'FAILED'}")
    _say(
        f"3. the matrix ({SHAPES[size][0]} steps x {SHAPES[size][1]} -> "
        f"{SHAPES[size][2]} units; ours / theirs, medians of {args.repeats} rounds)"
    )
    share = args.budget / 3
    deadline = time.monotonic() + 2 * share
    report["matrix"], skipped = tf_matrix(size, args.repeats, deadline)
    passed = report["proofs"]["passed"]
    for backend in ("jax", "torch"):
        try:
            __import__(backend)
        except ImportError:
            _say(f"  {backend}: not installed")
            continue
        child = backend_child(backend, size, args.repeats, share / 2)
        _say_backend(child)
        report["matrix"] += child["rows"]
        report[f"{backend}_proofs"] = child.get("proofs")
        report[f"{backend}_forms"] = child.get("forms", [])
        if backend == "jax":  # proofs that did not run (a crash) do not pass
            passed = passed and bool((child.get("proofs") or {}).get("passed"))
        skipped += child["skipped"]
    _say("  forms (inference, ms)")
    report["forms"], skipped_forms = forms_matrix(
        size, args.repeats, time.monotonic() + share / 2
    )
    report["skipped"] = skipped + skipped_forms
    return _finish(report, started, args, passed)


def _start(args) -> tuple[str, float, dict]:
    """The run's size, its start, and its report with section 1 printed."""
    size = args.size or ("tiny" if args.allow_cpu else "full")
    started = time.monotonic()
    report = {"versions": versions(), "size": size, "shape": SHAPES[size]}
    _say("1. where it runs")
    for key, value in report["versions"].items():
        _say(f"  {key}: {value}")
    return size, started, report


def argv_of(argv: list[str] | None) -> list[str]:
    return list(sys.argv[1:] if argv is None else argv)


def _finish(report: dict, started: float, args, passed: bool) -> int:
    if report["skipped"]:
        _say(f"  skipped (over the budget): {', '.join(report['skipped'])}")
    report["seconds"] = time.monotonic() - started
    report["passed"] = passed
    _say(f"done in {report['seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=1, default=str)
    return 0 if passed else 1


def _without_tensorflow(args) -> int:
    """No TensorFlow here: the JAX column alone, with its own proofs."""
    os.environ["KERAS_BACKEND"] = "jax"  # (Keras's default backend is absent)
    try:
        import jax

        gpus = jax.devices("gpu")
    except (ImportError, RuntimeError):
        gpus = []
    if not gpus and not args.allow_cpu:
        _say(
            "gpu_check: no TensorFlow here and no GPU visible to JAX; "
            "nothing to check (exit 0)."
        )
        return 0
    size, started, report = _start(args)
    _say("2. proofs: TensorFlow is not installed here: the cuDNN proofs are not run")
    _say(
        f"3. JAX alone: its proofs (matmul precision highest; pass: <= {TOLERANCE}, "
        "for gradients times their largest magnitude), "
        f"the matrix ({SHAPES[size][0]} steps x {SHAPES[size][1]} -> "
        f"{SHAPES[size][2]} units; ours / theirs, medians of {args.repeats} rounds) "
        "and the forms (inference, ms)"
    )
    child = backend_child("jax", size, args.repeats, 2 * args.budget / 3)
    _say_backend(child)
    report.update(
        {
            "jax_proofs": child.get("proofs"),
            "matrix": child["rows"],
            "jax_forms": child.get("forms", []),
            "skipped": child["skipped"],
        }
    )
    try:
        __import__("torch")
    except ImportError:
        _say("  torch: not installed")
    else:
        torch_child = backend_child("torch", size, args.repeats, args.budget / 3)
        _say_backend(torch_child)
        report["matrix"] += torch_child["rows"]
        report["skipped"] += torch_child["skipped"]
    proved = child.get("proofs")
    return _finish(report, started, args, bool(proved and proved["passed"]))


if __name__ == "__main__":
    sys.exit(main())
