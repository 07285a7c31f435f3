"""`keras-gates demo`: SimpleRNN vs LSTM vs GRU on the adding problem.

The adding problem (Hochreiter & Schmidhuber, 1997, experiment 4; the form
used by Le et al., 2015 and Arjovsky et al., 2016): each input step is a pair
(value, marker), values uniform in [0, 1], exactly two markers set to 1 (one
in each half of the sequence). The target is the sum of the two marked
values. A model that cannot carry a value across the sequence can do no
better than answering the mean, 1.0, for a mean squared error of
Var(u1 + u2) = 2/12 = 0.167. At sequence length 100 a vanilla RNN stays
there; an LSTM or GRU that learns to read at the markers (input gate), keep
(forget gate near 1) and write at the end (output gate) goes below 0.01.

What the demo leaves in ``--out`` (default ./demo_output):

    results.json        {"task": {...}, "models": {"rnn": ..., "lstm": ..., "gru": ...}}
    gradient_flow.png   ||d loss_T / d x_{T-d}|| against d, before and after training
    gates_lstm.png      the trained LSTM's o, i, f, s on one test sequence,
    gates_gru.png       markers outlined in red; same for the GRU
    gate_histograms.png how open the trained LSTM's gates are
    gates_review.png    an (untrained) LSTM's gates over the lecture's review
    tensorboard/lstm, tensorboard/gru
                        GateMonitor logs: every gate while training
                        (``tensorboard --logdir demo_output/tensorboard``)

and exports the trained models into the TF Serving base ``--serving-base``
(default ./saved_models): adding_rnn/N, adding_lstm/N, adding_gru/N, each run
adding the next version N, and their names in its models.config.

Run ``keras-gates demo`` for the full run (sequence length 100, minutes on a
CPU), ``keras-gates demo --quick`` for a smoke run (length 30, < 2 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# The published baseline: answer 1.0 always, MSE = Var(u1 + u2) = 1/6.
BASELINE_MSE = 1.0 / 6.0
SOLVED_MSE = 0.01

FULL = {
    "seq_len": 100,
    "units": 32,
    "batch_size": 64,
    "max_steps": 6000,
    "eval_every": 250,
    "learning_rate": 2e-3,
    "stop_below": 1e-3,
    "test_size": 2000,
}
QUICK = {
    "seq_len": 30,
    "units": 16,
    "batch_size": 64,
    "max_steps": 900,
    "eval_every": 150,
    "learning_rate": 5e-3,
    "stop_below": 1e-3,
    "test_size": 1000,
}
MODEL_KEYS = ("rnn", "lstm", "gru")


def adding_problem(
    count: int, seq_len: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`count` sequences of the adding problem.

    Args:
        count: Number of sequences.
        seq_len: Steps per sequence (at least 2).
        rng: NumPy random generator.

    Returns:
        inputs (count, seq_len, 2) float32 = (value, marker) per step, and
        targets (count, 1) float32 = the sum of the two marked values.

    Example:

    >>> x, y = adding_problem(4, 100, np.random.default_rng(0))
    >>> x.shape, y.shape
    ((4, 100, 2), (4, 1))
    """
    if seq_len < 2:
        raise ValueError(f"`seq_len` must be at least 2; received {seq_len}.")
    values = rng.uniform(size=(count, seq_len))
    markers = np.zeros((count, seq_len))
    rows = np.arange(count)
    half = seq_len // 2
    markers[rows, rng.integers(0, half, size=count)] = 1.0
    markers[rows, rng.integers(half, seq_len, size=count)] = 1.0
    inputs = np.stack([values, markers], axis=-1).astype("float32")
    targets = (values * markers).sum(axis=1, keepdims=True).astype("float32")
    return inputs, targets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `keras-gates demo` options.

    Args:
        parser: The subcommand's parser.

    Returns:
        None.

    Example:

    >>> parser = argparse.ArgumentParser(); add_arguments(parser)
    """
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: length 30, few steps, under 2 minutes on 2 CPU cores",
    )
    parser.add_argument(
        "--out", default="demo_output", help="output folder (default ./demo_output)"
    )
    parser.add_argument("--seq-len", type=int, help="sequence length (full: 100)")
    parser.add_argument("--steps", type=int, help="most training steps per model")
    parser.add_argument("--units", type=int, help="recurrent units per model")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--models",
        default=",".join(MODEL_KEYS),
        help="comma-separated subset of rnn,lstm,gru (default all)",
    )
    parser.add_argument(
        "--serving-base",
        default="saved_models",
        help="TF Serving model base the trained models are exported into, each as "
        "its next version (default ./saved_models: the repository's, when run "
        "from its root)",
    )
    parser.add_argument(
        "--no-export", action="store_true", help="skip the TF Serving export"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _config(args: argparse.Namespace) -> dict[str, Any]:
    config = dict(QUICK if args.quick else FULL)
    for key, option, value in (
        ("seq_len", "--seq-len", args.seq_len),
        ("max_steps", "--steps", args.steps),
        ("units", "--units", args.units),
    ):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(
                    f"`{option}` must be a positive integer; received {value!r}."
                )
            config[key] = value
    if config["seq_len"] < 2:
        raise ValueError(
            f"`--seq-len` must be at least 2; received {config['seq_len']}."
        )
    models = [key.strip() for key in str(args.models).split(",") if key.strip()]
    unknown = [key for key in models if key not in MODEL_KEYS]
    if unknown or not models:
        raise ValueError(
            f"`--models` must be a comma-separated subset of {','.join(MODEL_KEYS)}; "
            f"received {args.models!r}."
        )
    config["models"] = models
    config["eval_every"] = min(config["eval_every"], config["max_steps"])
    return config


def _build(key: str, config: dict[str, Any], seed: int):
    import keras

    import keras_gates

    keras.utils.set_random_seed(seed)
    units = config["units"]
    recurrent = {
        "rnn": lambda: keras.layers.SimpleRNN(units, name="rnn"),
        "lstm": lambda: keras_gates.LSTM(units, name="lstm"),
        "gru": lambda: keras_gates.GRU(units, name="gru"),
    }[key]()
    model = keras.Sequential(
        [
            keras.Input((None, 2), name="sequence"),
            recurrent,
            keras.layers.Dense(1, name="sum"),
        ],
        name=f"adding_{key}",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(config["learning_rate"], clipnorm=1.0),
        loss="mse",
    )
    return model


class _Batches:
    """Fresh training batches forever (no sequence is seen twice)."""

    def __init__(self, config: dict[str, Any], seed: int):
        self.rng = np.random.default_rng(seed)
        self.config = config

    def __iter__(self):
        while True:
            yield adding_problem(
                self.config["batch_size"], self.config["seq_len"], self.rng
            )


def _gate_monitor(x_test, log_dir) -> list:
    """TensorBoard logs of the gates as they train (`tensorboard --logdir`)."""
    if log_dir is None:
        return []
    from keras_gates.monitor import GateMonitor

    return [GateMonitor(x_test[:8], log_dir, gradient_flow=True)]


def _train(model, config, test, seed, verbose, log_dir=None) -> dict[str, Any]:
    import keras

    x_test, y_test = test
    history: list[list[float]] = []
    stop_below = config["stop_below"]

    class EvaluateEvery(keras.callbacks.Callback):
        """Test MSE after every `eval_every` steps; stop once below the bar."""

        def on_epoch_end(self, epoch, logs=None):
            mse = float((logs or {}).get("val_loss", np.nan))
            history.append([(epoch + 1) * config["eval_every"], mse])
            if mse < stop_below:
                self.model.stop_training = True

    epochs = max(1, config["max_steps"] // config["eval_every"])
    start = time.perf_counter()
    model.fit(
        iter(_Batches(config, seed)),
        steps_per_epoch=config["eval_every"],
        epochs=epochs,
        validation_data=(x_test, y_test),
        # The batches come from a generator, which Keras cannot shuffle (it
        # warns that shuffle=True is ignored); they are fresh every time.
        shuffle=False,
        callbacks=[EvaluateEvery()] + _gate_monitor(x_test, log_dir),
        verbose=1 if verbose else 0,
    )
    seconds = time.perf_counter() - start
    test_mse = float(model.evaluate(x_test, y_test, verbose=0))
    return {
        "test_mse": test_mse,
        "steps": int(history[-1][0]) if history else 0,
        "seconds": round(seconds, 2),
        "params": int(model.count_params()),
        "solved": bool(test_mse < SOLVED_MSE),
        "history": history,
    }


def _export(models: dict[str, Any], base: Path) -> dict[str, Any]:
    """Each trained model as the next version of `base/adding_<key>`.

    keras_gates models go through `export_for_serving` (every signature proven
    against the model, then checked with TF Serving's C++ loader); the
    SimpleRNN baseline through Keras's own `model.export`, published the same
    way (`keras_gates.serving.publish`: staged, locked, moved into place in one
    rename). Existing versions are never touched.
    """
    import keras_gates
    from keras_gates.serving import publish
    from keras_gates.serving.export import export_for_serving

    paths, errors, notes = {}, {}, {}
    for key, model in models.items():
        name = f"adding_{key}"
        gated = any(
            isinstance(layer, (keras_gates.LSTM, keras_gates.GRU))
            for layer in model.layers
        )
        try:
            if gated:
                path = export_for_serving(model, base, name)
            else:
                base_path = publish.check_base(base)
                created = publish.make_dirs(base_path.parent)
                try:
                    with publish.Staging(base_path) as staging:
                        model.export(
                            str(staging.export_dir),
                            format="tf_saved_model",
                            verbose=False,
                        )
                        path = staging.publish(name, None, shown_base=base)
                        created = []
                finally:
                    publish.remove_empty(created)
                publish.update_models_config(base_path, name)
                notes[key] = "keras.Model.export (not a keras_gates model)"
            paths[key] = str(path)
        except Exception as error:  # reported in results.json and the exit code
            errors[key] = f"{type(error).__name__}: {error}"
    result: dict[str, Any] = {"format": "tf_serving", "base": str(base), "paths": paths}
    if notes:
        result["notes"] = notes
    if errors:
        result["errors"] = errors
    return result


def _pictures(models, flows_before, flows_after, test, config, out) -> list[str]:
    import keras

    import keras_gates
    from keras_gates import plots
    from keras_gates.introspection import trace_gates

    written = []
    curves = {}
    for key in models:
        curves[f"{key} (trained)"] = flows_after[key]
    for key in models:
        curves[f"{key} (initial weights)"] = flows_before[key]
    path = out / "gradient_flow.png"
    plots.plot_gradient_flow(
        curves,
        title=f"Adding problem, T = {config['seq_len']}: gradient reaching step T-1-d",
        path=path,
    )
    written.append(path.name)

    x_test, y_test = test
    sample = x_test[:1]
    marks = [int(t) for t in np.flatnonzero(sample[0, :, 1])]
    for key in ("lstm", "gru"):
        if key not in models:
            continue
        trace = trace_gates(models[key], sample, layer=key)
        prediction = float(np.asarray(models[key](sample))[0, 0])
        gates = ["i", "f", "o", "s"] if key == "lstm" else ["i", "o", "s"]
        path = out / f"gates_{key}.png"
        plots.plot_gate_heatmap(
            trace,
            gates=gates,
            highlight=marks,
            title=(
                f"Trained {key.upper()} on one test sequence: markers at t = "
                f"{marks} (red); target {float(y_test[0, 0]):.3f}, "
                f"prediction {prediction:.3f}"
            ),
            path=path,
        )
        written.append(path.name)
    if "lstm" in models:
        trace = trace_gates(models["lstm"], x_test[:64], layer="lstm")
        path = out / "gate_histograms.png"
        plots.plot_gate_histograms(
            trace,
            title="Trained LSTM, 64 test sequences: gate values over all steps",
            path=path,
        )
        written.append(path.name)

    # The lecture's review through an untrained Embedding + LSTM: the tool at
    # work on a text (a trained sentiment model is examples/' job).
    tokens = plots.tokenize(plots.REVIEW)
    vocabulary = {word: index + 1 for index, word in enumerate(dict.fromkeys(tokens))}
    ids = np.array([[vocabulary[word] for word in tokens]], dtype="int32")
    keras.utils.set_random_seed(0)
    reader = keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(len(vocabulary) + 1, 8, mask_zero=True),
            keras_gates.LSTM(8, name="lstm"),
        ]
    )
    path = out / "gates_review.png"
    plots.plot_gate_heatmap(
        trace_gates(reader, ids, layer="lstm"),
        tokens=tokens,
        gates=["i", "f", "o"],
        title="Untrained LSTM (random weights) over the review: the tool, not a "
        "learned reading",
        path=path,
    )
    written.append(path.name)
    return written


def _table(results: dict[str, Any]) -> str:
    lines = [
        f"{'model':<6} {'test MSE':>10} {'steps':>6} {'seconds':>8} {'params':>7}  "
        f"solved (< {SOLVED_MSE})",
    ]
    for key, row in results.items():
        lines.append(
            f"{key:<6} {row['test_mse']:>10.4f} {row['steps']:>6d} "
            f"{row['seconds']:>8.1f} {row['params']:>7d}  "
            f"{'yes' if row['solved'] else 'no'}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Train the three models, write results.json, pictures and exports.

    Args:
        args: Parsed ``keras-gates demo`` options (see ``add_arguments``).

    Returns:
        0 on success; 1 if an export failed (the rest is still written).

    Example:

    >>> parser = argparse.ArgumentParser(); add_arguments(parser)
    >>> run(parser.parse_args(["--quick", "--out", "/tmp/demo"]))
    0
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        config = _config(args)
    except ValueError as error:  # a bad option: one line, no traceback
        print(f"keras-gates demo: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    verbose = not args.quiet

    import keras

    from keras_gates.introspection import gradient_flow

    total_start = time.perf_counter()
    rng = np.random.default_rng(args.seed + 1)
    test = adding_problem(config["test_size"], config["seq_len"], rng)
    probe = test[0][:32]
    print(
        f"Adding problem, T = {config['seq_len']}: always answering 1.0 gives MSE "
        f"{float(np.mean((test[1] - 1.0) ** 2)):.4f} on this test set "
        f"(expected {BASELINE_MSE:.3f}); solved means < {SOLVED_MSE}."
    )
    models, results, flows_before, flows_after = {}, {}, {}, {}
    for index, key in enumerate(config["models"]):
        print(f"\n[{key}] training (at most {config['max_steps']} steps)")
        model = _build(key, config, args.seed)
        flows_before[key] = gradient_flow(model, probe)
        log_dir = None if key == "rnn" else out / "tensorboard" / key
        results[key] = _train(
            model, config, test, args.seed + 10 + index, verbose, log_dir
        )
        flows_after[key] = gradient_flow(model, probe)
        results[key]["gradient_norm"] = {
            stage: {
                f"d={d}": float(flow[key]["norm"][d])
                for d in sorted({0, config["seq_len"] // 2, config["seq_len"] - 1})
            }
            for stage, flow in (("initial", flows_before), ("trained", flows_after))
        }
        models[key] = model
        print(f"[{key}] test MSE {results[key]['test_mse']:.4f}")

    pictures = _pictures(models, flows_before, flows_after, test, config, out)
    export = (
        {"format": "none", "note": "--no-export"}
        if args.no_export
        else _export(models, Path(args.serving_base))
    )
    document = {
        "task": {
            "name": "adding problem",
            "reference": "Hochreiter & Schmidhuber (1997), experiment 4",
            "seq_len": config["seq_len"],
            "baseline_mse": BASELINE_MSE,
            "solved_below": SOLVED_MSE,
            "quick": bool(args.quick),
            "seed": args.seed,
            "training": {
                k: config[k]
                for k in (
                    "units",
                    "batch_size",
                    "max_steps",
                    "eval_every",
                    "learning_rate",
                    "stop_below",
                    "test_size",
                )
            },
            "backend": keras.backend.backend(),
            "keras": keras.__version__,
        },
        "models": results,
        "pictures": pictures,
        "export": export,
        "seconds_total": round(time.perf_counter() - total_start, 1),
    }
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    print("\n" + _table(results))
    print(f"\nWrote {out / 'results.json'}, {', '.join(pictures)}")
    if export.get("format") == "tf_serving":
        for key, path in export["paths"].items():
            print(f"Exported {key} for TF Serving: {path}")
        for key, error in export.get("errors", {}).items():
            print(f"Export of {key} failed: {error}", file=sys.stderr)
        if export.get("errors"):
            return 1
    else:
        print(f"Not exported ({export.get('note', 'no export')}).")
    return 0
