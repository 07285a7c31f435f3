"""The examples run top to bottom, offline, in tiny mode: scripts and notebooks.

Each script runs in a fresh interpreter; each notebook runs in a real Jupyter
kernel (nbclient) that uses this interpreter. Tiny mode (KERAS_GATES_TINY=1)
trains for a few steps on a small part of the real data, so the checks are
"better than chance on held-out data" and "the files were written", not
full-run accuracies (those are in examples/README.md).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

# The examples read their data through tensorflow-datasets (the `data` extra).
pytest.importorskip("tensorflow_datasets")

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = [
    "sentiment",
    "pos_tagging",
    "char_generation",
    "name_nationality",
    "fine_tune",
]
TIMEOUT = 600

# What each example must print: (pattern with the measured value, the baseline
# it must beat, taken from the same output).
CHECKS = {
    "sentiment": (r"test accuracy: ([\d.]+) \(majority class: ([\d.]+)\)",),
    "pos_tagging": (r"per-token accuracy: ([\d.]+)", r"always NN: ([\d.]+)"),
    "char_generation": (
        r"next-character accuracy: ([\d.]+) \(most common character: ([\d.]+)\)",
    ),
    "name_nationality": (
        r"lstm: test accuracy ([\d.]+) \(chance ([\d.]+)\)",
        r"gru: test accuracy ([\d.]+) \(chance ([\d.]+)\)",
    ),
    "fine_tune": (r"products +[\d.]+ +[\d.]+ +([\d.]+)", r"on products: ([\d.]+)"),
}
KERAS_FILES = {
    "sentiment": "sentiment.keras",
    "pos_tagging": "pos_tagger.keras",
    "char_generation": "char_model.keras",
    "name_nationality": "name_nationality.keras",
    "fine_tune": "sentiment_products.keras",
}
# The examples that show a keras_gates.GateView, and the first words it shows.
GATE_VIEWS = {
    "sentiment": ["the", "first", "half"],
    "name_nationality": ["n", "o", "w", "a", "k"],
}
SERVED = {
    "sentiment": "sentiment",
    "pos_tagging": "pos_tagger",
    "char_generation": "char_model",
    "name_nationality": "name_nationality",
    "fine_tune": "sentiment",
}


def tiny_env(workdir: pathlib.Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        KERAS_GATES_TINY="1",
        KERAS_GATES_DATA="offline",  # never download, even where a network exists
        KERAS_GATES_WORKDIR=str(workdir),
        MPLBACKEND="Agg",
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="-1",
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(EXAMPLES), env.get("PYTHONPATH")])
        ),
    )
    return env


def check_outputs(stem: str, output: str, workdir: pathlib.Path) -> None:
    assert "Traceback" not in output, output[-3000:]
    patterns = CHECKS[stem]
    if stem in ("pos_tagging", "fine_tune"):
        value = float(re.search(patterns[0], output).group(1))
        baseline = float(re.search(patterns[1], output).group(1))
        assert value > baseline, (stem, value, baseline)
    else:
        for pattern in patterns:
            match = re.search(pattern, output)
            assert match, f"{stem}: no line matching {pattern!r}\n{output[-3000:]}"
            value, baseline = float(match.group(1)), float(match.group(2))
            assert value > baseline, (stem, value, baseline)
    assert (workdir / "example_outputs" / KERAS_FILES[stem]).is_file()
    served = workdir / "saved_models" / SERVED[stem]
    versions = [p for p in served.iterdir() if p.name.isdigit()]
    assert any((v / "saved_model.pb").is_file() for v in versions), served


def first_view_tokens(htmls: list[str]) -> list[str]:
    """The first sentence's tokens in the one gate view among `htmls`, read back
    from the view's embedded data."""
    views = [h for h in htmls if 'class="kg-gate-data"' in h]
    assert len(views) == 1, f"{len(views)} gate views"
    found = re.search(r'class="kg-gate-data">(.*?)</script>', views[0], re.S)
    data = json.loads(found.group(1))
    assert data["format"] == "keras_gates.GateView/1"
    return data["sentences"][0]["tokens"]


@pytest.fixture(scope="module")
def script_workdir(tmp_path_factory):
    # One folder for all scripts: fine_tune starts from sentiment's .keras file.
    return tmp_path_factory.mktemp("scripts")


@pytest.mark.parametrize("stem", SCRIPTS)
def test_script_runs_in_tiny_mode(stem, script_workdir):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{stem}.py")],
        cwd=EXAMPLES,
        env=tiny_env(script_workdir),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    check_outputs(stem, result.stdout, script_workdir)
    if stem in GATE_VIEWS:
        page = script_workdir / "example_outputs" / f"{stem}_gate_view.html"
        tokens = first_view_tokens([page.read_text(encoding="utf-8")])
        assert tokens[: len(GATE_VIEWS[stem])] == GATE_VIEWS[stem]
    if stem == "sentiment":
        assert "P(positive) = " in result.stdout
        assert (script_workdir / "example_outputs" / "sentiment_gates.png").is_file()
    if stem == "fine_tune":  # a new version beside sentiment's own
        assert len(list((script_workdir / "saved_models" / "sentiment").iterdir())) >= 2


def test_text_without_debian_fortunes_is_the_shipped_reviews(monkeypatch):
    # CI has no Debian `fortunes`: char_generation then trains on shipped text.
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import corpora

    monkeypatch.setattr(corpora, "FORTUNE_DIR", EXAMPLES / "no-such-folder")
    text, source = corpora.fortune_text(max_chars=5000)
    assert len(text) == 5000 and "fortunes not installed" in source


def test_notebooks_are_generated_from_the_scripts():
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "make_notebooks.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A `python3` kernelspec for this interpreter, found before any other."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    jupyter_path = tmp_path_factory.mktemp("jupyter")
    spec = jupyter_path / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"})
    )
    return jupyter_path


@pytest.mark.parametrize("stem", SCRIPTS)
def test_notebook_runs_in_tiny_mode(stem, kernel_env, tmp_path_factory, monkeypatch):
    import nbclient
    import nbformat

    workdir = tmp_path_factory.getbasetemp() / "notebooks"
    workdir.mkdir(exist_ok=True)
    for key, value in tiny_env(workdir).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MPLBACKEND")  # the kernel's inline backend shows figures
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_env))
    nb = nbformat.read(EXAMPLES / f"{stem}.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(EXAMPLES)}},
    )
    client.execute()
    output = "".join(
        item.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for item in cell.outputs
        if item.get("name") == "stdout"
    )
    check_outputs(stem, output, workdir)
    if stem == "sentiment":
        images = [
            item
            for cell in nb.cells
            if cell.cell_type == "code"
            for item in cell.outputs
            if "image/png" in item.get("data", {})
        ]
        assert images, "the gate heatmap should be shown in the notebook"
    if stem in GATE_VIEWS:  # shown inline as HTML
        htmls = [
            item["data"]["text/html"]
            for cell in nb.cells
            if cell.cell_type == "code"
            for item in cell.outputs
            if "text/html" in item.get("data", {})
        ]
        tokens = first_view_tokens(htmls)
        assert tokens[: len(GATE_VIEWS[stem])] == GATE_VIEWS[stem]
    if stem == "fine_tune":  # a new version beside sentiment's own
        assert len(list((workdir / "saved_models" / "sentiment").iterdir())) >= 2
