"""The `keras-gates` command: one subcommand per capability.

    keras-gates demo     train SimpleRNN vs LSTM vs GRU on the adding problem
    keras-gates export   a .keras model -> a verified TF Serving version folder
    keras-gates verify   run a SavedModel through TF Serving's own C++ loader
    keras-gates bench    time keras_gates against keras.layers.LSTM/GRU

`demo` and `bench` live in the modules named for them (`add_arguments(parser)`,
`run(args) -> int`); the serving commands' arguments are parsed here and run
`keras_gates.serving`. A subcommand's module is imported only when it runs.

In the console script (`keras-gates`, setup.cfg's entry point) the package's
imports wait (see `keras_gates/__init__.py`): `--help`, bad usage and this
module import neither Keras nor TensorFlow, and answer at once. Before
a subcommand runs, `prepare()` imports TensorFlow with the C++ start-up lines
it writes to stderr filtered out (`BANNER`), then the whole package.

Exit status: 0 done; 1 the job failed (its reason on stderr; a failed check's
report on stdout); 2 bad usage (one line on stderr, nothing run). The C++
loader check itself runs in a child process that never imports TensorFlow's
Python package.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path

# What TensorFlow's C++ side writes to stderr while it is imported: absl's note
# (TF 2.21 logs through absl, before absl is initialized, so
# TF_CPP_MIN_LOG_LEVEL no longer filters these lines; TF 2.20 honours it, but
# still prints its cuInit error on a machine without a GPU), info lines (oneDNN,
# CUDA probing, CPU features), and the CUDA plugins' warnings and errors on a
# machine without a GPU or with several registrations. Anything else is kept.
BANNER = re.compile(
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called"
    # absl's prefix (TF 2.21): I0000 00:00:1796290208.491952    6308 port.cc:153]
    r"|^I\d{4} [\d:.]+ +\d+ \S+:\d+\]"
    r"|^[WE]\d{4} [\d:.]+ +\d+ \S+:\d+\] .*"
    r"(cuda|cuDNN|cuFFT|cuBLAS|cuInit|TensorRT|GPU will not be used)"
    # TensorFlow's own prefix (TF 2.20): 2026-12-03 10:21:39.698966: I tensorflow/...]
    r"|^\d{4}-\d\d-\d\d [\d:.]+: I \S+:\d+\]"
    r"|^\d{4}-\d\d-\d\d [\d:.]+: [WE] \S+:\d+\] .*"
    r"(cuda|cuDNN|cuFFT|cuBLAS|cuInit|TensorRT|GPU will not be used)"
    r"|^To enable the following instructions: .*rebuild TensorFlow"
    r"|^TF-TRT Warning: Could not find TensorRT"
)


def _error(command: str, message: str) -> None:
    """One line on stderr: why `keras-gates COMMAND` failed."""
    print(f"keras-gates {command}: {message}", file=sys.stderr)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and find its devices with the C++ start-up lines
    (`BANNER`) left out.

    Those lines are written to file descriptor 2 by C++ code, below Python's
    `sys.stderr`: the descriptor points at a temporary file while TensorFlow
    is imported, and what is not banner is written to stderr afterwards
    (Python warnings, errors). Nothing happens if TensorFlow is imported.
    """
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow as tf

            # the devices are looked for (CUDA probed) on first use, not at import
            tf.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().decode(errors="replace").splitlines()
            kept = [line for line in lines if not BANNER.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def prepare() -> None:
    """What a subcommand needs before it runs: TensorFlow, imported quietly,
    and every keras_gates class (registered with Keras, so `.keras` files of
    keras_gates layers load)."""
    import_tensorflow_quietly()
    import keras_gates

    keras_gates.import_all()


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `keras-gates export`."""
    parser.add_argument("model", help="the .keras file to export")
    parser.add_argument("--name", required=True, help="the model's name in the server")
    parser.add_argument(
        "--base", required=True, help="the model base directory (e.g. saved_models)"
    )
    parser.add_argument(
        "--version",
        type=int,
        default=None,
        help="the version number (default: one more than the highest)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing version"
    )
    parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the C++ loader check before moving the export into place",
    )
    parser.add_argument(
        "--jit-compile",
        action="store_true",
        help="XLA-compile every signature (faster at small batches; serve with "
        "--xla_cpu_compilation_enabled=true)",
    )


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return str(a) == str(b)


def _run_export(args: argparse.Namespace) -> int:
    """Run `keras-gates export`; returns the exit status."""
    from keras_gates.serving.export import export_for_serving, signatures_line
    from keras_gates.serving.layout import METADATA_FILE, MODELS_CONFIG

    try:
        target = export_for_serving(
            args.model,
            args.base,
            args.name,
            args.version,
            overwrite=args.overwrite,
            verify=args.verify,
            jit_compile=args.jit_compile,
        )
    except (FileExistsError, ValueError, TypeError, RuntimeError, ImportError) as error:
        _error("export", str(error))
        return 1
    except zipfile.BadZipFile as error:
        _error("export", f"{args.model} is not a valid .keras file: {error}")
        return 1
    except OSError as error:
        filename = getattr(error, "filename", None)
        reason = error.strerror or str(error)
        if filename is not None and _same_file(filename, args.model):
            _error("export", f"cannot read {args.model}: {reason}")
        else:
            where = f" ({filename})" if filename else ""
            _error(
                "export",
                f"cannot write the export under --base {args.base}{where}: {reason}",
            )
        return 1
    print(f"Exported {args.model} to {target}")
    metadata = json.loads((target / "assets.extra" / METADATA_FILE).read_text())
    print(signatures_line(metadata["signatures"], metadata["omitted_signatures"]))
    print(f"Serve it: see {Path(args.base) / MODELS_CONFIG}")
    return 0


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `keras-gates verify`."""
    parser.add_argument("path", help="the SavedModel version folder DIR/NAME/VERSION")
    parser.add_argument(
        "--model", default=None, help="a .keras file whose outputs must be matched"
    )
    parser.add_argument(
        "--latency",
        type=_positive_steps,
        default=None,
        metavar="STEPS",
        help="also time serving_default at batch 1 on STEPS time steps (median "
        "of 200 runs in the C++ loader)",
    )


def _positive_steps(text: str) -> int:
    """`--latency STEPS`: a positive integer (argparse reports anything else as
    bad usage, exit status 2)."""
    try:
        steps = int(text)
    except ValueError:
        steps = 0
    if steps < 1:
        raise argparse.ArgumentTypeError(
            f"must be a positive number of time steps; received {text!r}"
        )
    return steps


def _run_verify(args: argparse.Namespace) -> int:
    """Run `keras-gates verify`; returns 0 when every check passed, else 1."""
    from keras_gates.serving.verify import latency_of_export, verify_saved_model

    try:
        report = verify_saved_model(args.path, args.model)
    except (TypeError, ValueError) as error:
        _error("verify", str(error))
        return 1
    except OSError as error:  # --model names no readable file
        reason = error.strerror or str(error)
        where = error.filename or args.model
        _error("verify", f"cannot read {where}: {reason}")
        return 1
    print(report.text())
    if report.ok and args.latency is not None:
        timing = latency_of_export(args.path, args.latency)
        print(
            f"serving_default at batch 1, {args.latency} steps"
            f"{' (XLA-compiled)' if timing['jit_compile'] else ''}: median "
            f"{timing['median_ms']:.3f} ms, p90 {timing['p90_ms']:.3f} ms over "
            f"{timing['runs']} runs in TF Serving's C++ loader"
        )
    return 0 if report.ok else 1


# subcommand -> (module with add_arguments/run, or None for this module; help)
COMMANDS = {
    "demo": ("keras_gates.demo", "train SimpleRNN, LSTM and GRU on the adding problem"),
    "export": (None, "export a .keras model for TF Serving"),
    "verify": (None, "check a SavedModel with TF Serving's C++ loader"),
    "bench": ("keras_gates.bench", "time keras_gates against the Keras built-ins"),
}
LOCAL = {
    "export": (_export_arguments, _run_export),
    "verify": (_verify_arguments, _run_verify),
}


def _command(name: str):
    """(add_arguments, run) of subcommand `name`."""
    module_name = COMMANDS[name][0]
    if module_name is None:
        return LOCAL[name]
    module = importlib.import_module(module_name)
    return module.add_arguments, module.run


def build_parser(load: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-gates",
        description="Gated recurrent layers you can look inside.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == load:
            _command(name)[0](sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `keras-gates ARGV`; returns the exit status (see the module's).

    `--help` and bad usage are answered by argparse (SystemExit 0 or 2) before
    anything is imported.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        parser = build_parser()
        if command is not None:
            parser.error(
                f"unknown command {command!r}; expected one of {', '.join(COMMANDS)}"
            )
        if argv and argv[0] in ("-h", "--help"):
            parser.print_help()
            return 0
        parser.print_usage(sys.stderr)
        print("keras-gates: error: a command is required", file=sys.stderr)
        return 2
    parser = build_parser(load=command)
    args = parser.parse_args(argv)
    prepare()
    return int(_command(command)[1](args) or 0)


if __name__ == "__main__":
    sys.exit(main())
