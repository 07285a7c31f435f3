"""The `keras-gates` command: one subcommand per capability.

    keras-gates demo     train SimpleRNN vs LSTM vs GRU on the adding problem
    keras-gates export   a .keras model -> a verified TF Serving version folder
    keras-gates verify   run a SavedModel through TF Serving's own C++ loader
    keras-gates bench    time keras_gates against keras.layers.LSTM/GRU

`demo` and `bench` live in the modules named for them (`add_arguments(parser)`,
`run(args) -> int`); the serving commands' arguments are parsed here and run
`keras_gates.serving`. A subcommand's module is imported only when it runs.
The C++ loader check itself runs in a child process that never imports
TensorFlow's Python package (the report says so); this process imports the
package, and with it Keras, like any other subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import zipfile
from pathlib import Path


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
        print(f"keras-gates export: {error}")
        return 1
    except zipfile.BadZipFile as error:
        print(f"keras-gates export: {args.model} is not a valid .keras file: {error}")
        return 1
    except OSError as error:
        filename = getattr(error, "filename", None)
        reason = error.strerror or str(error)
        if filename is not None and _same_file(filename, args.model):
            print(f"keras-gates export: cannot read {args.model}: {reason}")
        else:
            where = f" ({filename})" if filename else ""
            print(
                f"keras-gates export: cannot write the export under --base "
                f"{args.base}{where}: {reason}"
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
        type=int,
        default=None,
        metavar="STEPS",
        help="also time serving_default at batch 1 on STEPS time steps (median "
        "of 200 runs in the C++ loader)",
    )


def _run_verify(args: argparse.Namespace) -> int:
    """Run `keras-gates verify`; returns 0 when every check passed, else 1."""
    from keras_gates.serving.verify import latency_of_export, verify_saved_model

    if args.latency is not None and args.latency < 1:
        print(
            "keras-gates verify: --latency must be a positive number of time "
            f"steps; received {args.latency}."
        )
        return 1
    try:
        report = verify_saved_model(args.path, args.model)
    except (TypeError, ValueError) as error:
        print(f"keras-gates verify: {error}")
        return 1
    except OSError as error:  # --model names no readable file
        reason = error.strerror or str(error)
        where = error.filename or args.model
        print(f"keras-gates verify: cannot read {where}: {reason}")
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
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        parser = build_parser()
        if command is not None:
            parser.error(
                f"unknown command {command!r}; expected one of {', '.join(COMMANDS)}"
            )
        parser.print_help()
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    parser = build_parser(load=command)
    args = parser.parse_args(argv)
    return int(_command(command)[1](args) or 0)


if __name__ == "__main__":
    sys.exit(main())
