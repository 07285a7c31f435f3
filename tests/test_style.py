"""House rules checked mechanically: ruff lint and format, private Keras only in
keras_gates/keras_internals.py, the public names."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which(
    "ruff"
)


@pytest.mark.skipif(RUFF is None, reason="ruff not installed")
@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=" ".join)
def test_ruff(command):
    targets = ["keras_gates", "tests", "examples", "benchmarks"]
    result = subprocess.run(
        [RUFF, *command, *targets], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_no_private_keras_in_the_package():
    pattern = re.compile(r"^\s*(from|import)\s+keras\.src", re.MULTILINE)
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "keras_gates").rglob("*.py")
        if pattern.search(path.read_text())
    ]
    assert offenders == []


# Private Keras and TensorFlow stay in keras_gates/keras_internals.py: names that
# look into an object's implementation rather than its public API.
INTERNALS = "keras_internals.py"
INTROSPECTION = {"__mro__", "currentframe", "_getframe", "f_locals", "f_back", "f_code"}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _package_sources() -> dict[str, ast.Module]:
    return {
        str(path.relative_to(ROOT)): ast.parse(path.read_text())
        for path in sorted((ROOT / "keras_gates").rglob("*.py"))
    }


def private_keras_uses(sources: dict[str, ast.Module]) -> list[str]:
    """`file:line name` for each look into another library's private parts.

    Flags, outside keras_internals.py: `keras.src` / `tensorflow.python`
    imports; frame and MRO introspection; a private attribute (`x._name`,
    `getattr(x, "_name")`) that keras_gates itself never defines; and a write
    to a private attribute of anything but `self`/`cls`.
    """
    defined = set()
    for name, tree in sources.items():
        if name.endswith(INTERNALS):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                defined.add(node.attr)
            elif isinstance(node, ast.alias):
                defined.add(node.asname or node.name.split(".")[0])
    found = []
    for name, tree in sources.items():
        if name.endswith(INTERNALS):
            continue
        for node in ast.walk(tree):
            hit = None
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [getattr(node, "module", None) or ""]
                modules += [alias.name for alias in node.names]
                hit = next(
                    (
                        m
                        for m in modules
                        if m.startswith(("keras.src", "tensorflow.python"))
                    ),
                    None,
                )
            elif isinstance(node, ast.Attribute):
                owner = node.value.id if isinstance(node.value, ast.Name) else None
                if node.attr in INTROSPECTION:
                    hit = node.attr
                elif _is_private(node.attr) and node.attr not in defined:
                    hit = node.attr
                elif (
                    _is_private(node.attr)
                    and isinstance(node.ctx, ast.Store)
                    and owner not in ("self", "cls")
                ):
                    hit = node.attr
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
                and _is_private(node.args[1].value)
                and node.args[1].value not in defined
            ):
                hit = node.args[1].value
            if hit:
                found.append(f"{name}:{node.lineno} {hit}")
    return found


def inherited_private_uses(module_names: list[str]) -> list[str]:
    """`Class._name` where a keras_gates class uses, on `self`, a private name
    that one of its Keras (or other outside) base classes uses in its source."""
    found = []
    for module_name in module_names:
        module = importlib.import_module(module_name)
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module_name:
                continue
            outside = [
                base
                for base in cls.__mro__[1:]
                if not base.__module__.startswith(("keras_gates", "builtins"))
            ]
            sources = []
            for base in outside:
                try:
                    sources.append(inspect.getsource(base))
                except (OSError, TypeError):
                    pass
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
            used = {
                node.attr
                for node in ast.walk(tree)
                if isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
                and _is_private(node.attr)
            }
            for name in sorted(used):
                if any(
                    re.search(rf"(self\.|def ){name}\b", source) for source in sources
                ):
                    found.append(f"{cls.__name__}.{name}")
    return found


def test_private_keras_only_in_keras_internals():
    offenders = private_keras_uses(_package_sources())
    assert offenders == [], (
        "private Keras/TensorFlow used outside keras_gates/keras_internals.py "
        f"(add a documented, tested touch there instead): {offenders}"
    )


def test_private_keras_check_finds_each_kind_of_touch():
    """The check above against code that makes each kind of touch."""
    touches = textwrap.dedent(
        """
        import inspect
        from keras.src.layers.rnn import dropout_rnn_cell
        nodes = layer._inbound_nodes
        mro = keras.layers.LSTMCell.__mro__
        frame = inspect.currentframe().f_back
        count = getattr(callback, "_should_save_on_batch")
        model._counter = 1
        """
    )
    found = private_keras_uses({"keras_gates/example.py": ast.parse(touches)})
    assert sorted(entry.split(" ")[1] for entry in found) == sorted(
        [
            "keras.src.layers.rnn",
            "_inbound_nodes",
            "__mro__",
            "f_back",
            "currentframe",
            "_should_save_on_batch",
            "_counter",
        ]
    ), found


def _package_modules() -> list[str]:
    package = ROOT / "keras_gates"
    return sorted(
        ".".join(
            ("keras_gates", *path.relative_to(package).with_suffix("").parts)
        ).removesuffix(".__init__")
        for path in package.rglob("*.py")
    )


def test_no_inherited_private_keras_outside_keras_internals():
    offenders = [
        name
        for name in inherited_private_uses(_package_modules())
        if not name.startswith("keras_internals")
    ]
    assert offenders == [], (
        "keras_gates classes use private attributes of their Keras base classes "
        f"(route them through keras_gates/keras_internals.py): {offenders}"
    )


def test_public_names():
    """`__all__` is what __init__.py imports from the package's modules: each
    name the object its module defines, documented; no imported public class or
    function left out."""
    import keras_gates

    imported = keras_gates._DEFINED_IN  # name -> module: what __init__ imports
    assert len(keras_gates.__all__) == len(set(keras_gates.__all__))
    assert set(keras_gates.__all__) == set(imported)
    for name in keras_gates.__all__:
        value = getattr(keras_gates, name)
        assert inspect.isclass(value) or inspect.isfunction(value), name
        assert value.__module__.startswith(imported[name]), (name, value.__module__)
        defining = importlib.import_module(value.__module__)
        assert getattr(defining, value.__name__) is value, name
        assert (inspect.getdoc(value) or "").strip(), f"{name} has no docstring"
    import keras

    for name in ("LSTM", "GRU", "LSTMCell", "GRUCell"):
        registered = keras.saving.get_registered_object(f"keras_gates>{name}")
        assert registered is getattr(keras_gates, name)
