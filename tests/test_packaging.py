"""A plain `pip install keras_gates` (no extras) has what the package imports.

CI installs `[dev]`, which can hide a dependency the base install lacks (the
serving protos once did: a fresh `keras-gates demo` could not export). Here
every third-party module that `keras_gates/` imports must come from a
distribution that `install_requires` pulls in (itself or as a dependency of
one), read from the installed packages' own metadata; only the imports listed
in OPTIONAL may be missing, each guarded in the code with a message.
"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata as metadata
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# import name -> why the base install may lack it
OPTIONAL = {
    "torch": "keras-gates bench times torch.nn.LSTM/GRU for context when installed",
    "jax": "the JAX backend is the user's choice",
}


def _imports() -> dict[str, set[str]]:
    """Top-level third-party module -> the package files importing it."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "keras_gates").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "keras_gates":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _requirement_name(line: str) -> str:
    return re.split(r"[\s<>=!~;\[]", line.strip(), maxsplit=1)[0].lower()


def _base_closure() -> set[str]:
    """Distributions the base install brings: install_requires and their own
    requirements (no extras), transitively, from the installed metadata."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    pending = [
        _requirement_name(line)
        for line in config["options"]["install_requires"].splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    closure: set[str] = set()
    while pending:
        name = pending.pop().replace("_", "-")
        if name in closure:
            continue
        closure.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        pending += [
            _requirement_name(r)
            for r in requires
            if "extra ==" not in r and "extra==" not in r
        ]
    return closure


def test_install_requires_covers_every_import():
    closure = _base_closure()
    providers = metadata.packages_distributions()
    missing = {}
    for module, files in _imports().items():
        if module in OPTIONAL:
            continue
        distributions = {d.lower().replace("_", "-") for d in providers[module]}
        if not distributions & closure:
            missing[module] = (sorted(distributions), sorted(files))
    assert not missing, (
        f"imported by keras_gates but not brought by install_requires: {missing}"
    )


def test_serving_protos_are_in_the_base_install():
    """The export writes warmup requests and models.config with TF Serving's
    protos: a fresh `pip install -e .` must be able to export."""
    closure = _base_closure()
    assert "tensorflow-serving-api" in closure
    assert "tensorboard" in closure


def test_optional_imports_are_guarded():
    """An optional module is imported only inside a try block."""
    for module in OPTIONAL:
        for relative in _imports().get(module, ()):
            tree = ast.parse((ROOT / relative).read_text())
            guarded = {
                id(inner)
                for node in ast.walk(tree)
                if isinstance(node, ast.Try)
                for inner in ast.walk(node)
            }
            for node in ast.walk(tree):
                is_import = isinstance(node, ast.Import) and any(
                    a.name.split(".")[0] == module for a in node.names
                )
                is_import |= (
                    isinstance(node, ast.ImportFrom)
                    and (node.module or "").split(".")[0] == module
                )
                assert not is_import or id(node) in guarded, (
                    f"{relative}:{node.lineno} imports optional {module} unguarded"
                )


# folders that are not the project's files: tools' caches, builds, run outputs
NOT_THE_PROJECT = {
    ".git", ".venv", "__pycache__", "build", "dist", ".pytest_cache",
    ".ruff_cache", ".hypothesis", "demo_output", "example_outputs",
}  # fmt: skip


def _project_files():
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if any(p in NOT_THE_PROJECT or p.endswith(".egg-info") for p in parts):
            continue
        if path.is_file():
            try:
                yield path, path.read_text()
            except UnicodeDecodeError:  # binary data: .keras, .npy, pictures
                continue


def test_nothing_cites_a_contract_that_does_not_ship():
    """The contract (maths, weight layout, public names, serving) lives in the
    repository: the README, the cells' docstrings (keras_gates/lstm.py,
    gru.py), keras_gates/__init__.py. No file points at the developers' notes
    outside it."""
    outside = re.compile(r"\bSP" + r"EC\b|/work/sha" + "red")  # not this line
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path, text in _project_files()
        for number, line in enumerate(text.splitlines(), 1)
        if outside.search(line)
    ]
    assert not found, "\n".join(found)


def test_version_is_the_changelog_s_newest():
    """`keras_gates.__version__` (setup.cfg reads it) is the CHANGELOG's newest
    version heading."""
    init = (ROOT / "keras_gates" / "__init__.py").read_text()
    version = re.search(r'^__version__ = "(.+)"$', init, re.M).group(1)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    newest = re.search(r"^## \[(\d[^\]]*)\]", changelog, re.M).group(1)
    assert newest == version
