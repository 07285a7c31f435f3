"""Every instruction in the READMEs is run here, or by the test its mark names,
or marked as not run with the reason; and each mark is checked.

README.md, benchmarks/README.md and examples/README.md: each fenced code block is
one of:
- a ```text block: equations, not instructions;
- a Python block, run here top to bottom in a temporary folder, with the few
  names it leaves to the reader (`model`, `x`, `token_ids`, ...) bound to small
  stand-ins below (SETUP: only inputs, never the code under test);
- a block preceded by `<!-- run by: FILE::NAME[,NAME...] (why) -->`: the named
  test functions (or fixtures, helpers) of FILE run the block's commands, which
  is checked by comparing the two (`commands_run_by`): each command's
  subcommand and every option it shows must be string constants of those
  functions, a script it runs must be named in FILE. `run by: .ci/run` means
  every line of the block is a line of `.ci/run`, character for character;
- a block preceded by `<!-- not run: reason -->` (two machines, a Docker
  server, a signature summary, ...).

Code shown to users that nobody ran is how the multi-worker recipe came to fail.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_gates

ROOT = Path(__file__).resolve().parents[1]
READMES = ["README.md", "benchmarks/README.md", "examples/README.md"]
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.S | re.M)
MARKER = re.compile(r"<!--\s*(not run|run by):\s*(.+?)\s*-->")
# a named test: FILE::NAME[,NAME...]
RUN_BY = re.compile(r"^(\S+?\.py)::([\w,]+)")


def blocks(readme: str = "README.md") -> list[tuple[int, str, str, tuple | None]]:
    """(line, language, code, marker) for every fenced block of a README."""
    text = (ROOT / readme).read_text()
    found = []
    for match in FENCE.finditer(text):
        line = text[: match.start()].count("\n") + 1
        before = [s for s in text[: match.start()].splitlines() if s.strip()]
        marker = MARKER.search(before[-1]) if before else None
        indent = len(match.group(1))
        code = "\n".join(s[indent:] for s in match.group(3).splitlines())
        found.append((line, match.group(2), code, marker.groups() if marker else None))
    return found


def shell_commands(code: str) -> list[list[str]]:
    """The commands of a shell block, as argv lists: comments, prompts
    (`host0$ `) and line continuations removed."""
    code = code.replace("\\\n", " ")
    commands = []
    for line in code.splitlines():
        line = re.sub(r"^\S+\$ ", "", line.split("  #")[0].strip())
        if line and not line.startswith("#"):
            commands.append(shlex.split(line))
    return commands


def _function_constants(path: Path, names: list[str]) -> list[str]:
    """Every string constant inside the named top-level functions of `path`."""
    tree = ast.parse(path.read_text())
    functions = {
        node.name: node
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    missing = [name for name in names if name not in functions]
    assert not missing, f"{path.relative_to(ROOT)} has no function {missing}"
    return [
        node.value
        for name in names
        for node in ast.walk(functions[name])
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def commands_run_by(code: str, run_by: str) -> list[str]:
    """What of block `code` the test `run_by` (`FILE::NAME,...`) does not run:
    one line per command part it lacks (empty: it runs them all)."""
    match = RUN_BY.match(run_by)
    assert match, f"name the test as FILE::FUNCTION, got {run_by!r}"
    path = ROOT / match.group(1)
    constants = set(_function_constants(path, match.group(2).split(",")))
    source = path.read_text()
    lacking = []
    for argv in shell_commands(code):
        program, rest = argv[0], argv[1:]
        if program == "keras-gates":
            wanted = [rest[0]] + [a.split("=")[0] for a in rest if a.startswith("-")]
        elif program.startswith("python"):
            script = Path(rest[0]).name
            if script not in source:
                lacking.append(f"{' '.join(argv)}: {path.name} never names {script}")
            wanted = [a.split("=")[0] for a in rest[1:] if a.startswith("-")]
        else:
            lacking.append(f"{' '.join(argv)}: not a keras-gates or python command")
            continue
        lacking += [
            f"{' '.join(argv)}: {part!r} is not in {run_by}"
            for part in wanted
            if part not in constants
        ]
    return lacking


def _float_model(units=2, features=3):
    model = keras.Sequential(
        [keras.Input((None, features)), keras_gates.LSTM(units), keras.layers.Dense(1)]
    )
    model.compile("sgd", "mse")
    return model


def _data(rows=8, time=4, features=3, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(rows, time, features)).astype("float32"),
        rng.normal(size=(rows, 1)).astype("float32"),
    )


def _trace_inputs():
    from keras_gates import plots

    words = len(plots.tokenize(plots.REVIEW))
    return {"token_ids": np.random.default_rng(0).integers(1, 100, (2, words))}


def _builtin_model():
    return {
        "trained_model": keras.Sequential(
            [keras.Input((None, 3)), keras.layers.LSTM(4, name="lstm")]
        )
    }


def _fit_inputs():
    x, y = _data()
    x_val, y_val = _data(seed=1)
    return {"model": _float_model(), "x": x, "y": y, "x_val": x_val, "y_val": y_val}


# first line of a block -> the names it leaves to the reader
SETUP = {
    "trace = keras_gates.trace_gates(model, token_ids": _trace_inputs,
    "ours = keras_gates.from_keras(trained_model": _builtin_model,
    "monitor = keras_gates.GateMonitor(": _fit_inputs,
    'keras_gates.export_for_serving(model, "saved_models"': lambda: {
        "model": _float_model()
    },
    "callback = keras_gates.ExactBackupAndRestore(": _fit_inputs,
}


ALL_BLOCKS = [(readme, *block) for readme in READMES for block in blocks(readme)]


def test_every_block_is_run_or_marked():
    unmarked = [
        f"{readme}:{line}"
        for readme, line, language, _, marker in ALL_BLOCKS
        if language not in ("python", "text") and not marker
    ]
    assert not unmarked, (
        "README blocks without `<!-- run by: ... -->` or `<!-- not run: "
        f"reason -->` before them: {unmarked}"
    )
    for readme, line, _, _, marker in ALL_BLOCKS:
        if marker and marker[0] == "not run":
            assert len(marker[1]) > 10, f"{readme}:{line}: say why it is not run"


@pytest.mark.parametrize(
    "readme, line, code, run_by",
    [
        pytest.param(readme, line, code, marker[1], id=f"{readme}:{line}")
        for readme, line, _, code, marker in ALL_BLOCKS
        if marker and marker[0] == "run by"
    ],
)
def test_run_by_mark_names_a_test_that_runs_the_block(readme, line, code, run_by):
    if run_by.startswith(".ci/run"):
        ci = (ROOT / ".ci" / "run").read_text().splitlines()
        for command in code.splitlines():
            assert command in ci, f"{readme}:{line}: not a line of .ci/run: {command}"
        return
    lacking = commands_run_by(code, run_by)
    assert not lacking, f"{readme}:{line}:\n" + "\n".join(lacking)


def test_the_mark_check_catches_a_command_nobody_runs():
    """The comparison fails where it should: an option the test does not
    pass, a subcommand it does not run, a function the file lacks."""
    demo = "tests/test_demo.py::quick_run"
    assert commands_run_by("keras-gates demo --quick", demo) == []
    assert commands_run_by("keras-gates demo --quick --fast", demo)
    assert commands_run_by("keras-gates bench --quick", demo)
    assert commands_run_by("python examples/sentiment.py --quick", demo)
    with pytest.raises(AssertionError, match="no function"):
        commands_run_by("keras-gates demo", "tests/test_demo.py::no_such_test")


def test_readme_is_a_guide_of_at_most_350_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 350


def test_python_version_is_the_one_setup_cfg_declares():
    """The README asks for the Python that setup.cfg's python_requires says."""
    declared = re.search(
        r"python_requires = >=(\S+)", (ROOT / "setup.cfg").read_text()
    ).group(1)
    readme = (ROOT / "README.md").read_text()
    asked = set(re.findall(r"Python (?:>= ?)?(3\.\d+)", readme))
    assert asked == {declared}, asked


@pytest.mark.parametrize(
    "readme, line, code",
    [
        pytest.param(readme, line, code, id=f"{readme}:{line}")
        for readme, line, language, code, marker in ALL_BLOCKS
        if language == "python" and not marker
    ],
)
def test_python_block_runs(readme, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"keras": keras, "keras_gates": keras_gates, "np": np}
    for needle, setup in SETUP.items():
        if needle in code:
            namespace.update(setup())
    exec(compile(code, f"{readme}:{line}", "exec"), namespace)
