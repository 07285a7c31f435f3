"""Generate the Colab notebooks in examples/ from the example scripts (jupytext).

The scripts are the source (py:percent cells); never edit a notebook by hand.
Each notebook gets a title cell from the script's header docstring, an
"Open in Colab" badge and a first code cell that, in Colab only, clones the
repository (the examples read `corpora.py` and `data/` from it) and pip-installs
the package with its `examples` extra.

    python examples/make_notebooks.py            # write the notebooks
    python examples/make_notebooks.py --check    # fail if one is out of date
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys

import jupytext
import nbformat

HERE = pathlib.Path(__file__).resolve().parent
# Where the repository lives on GitHub; the badges and the install cell use it.
REPOSITORY = os.environ.get("KERAS_GATES_REPOSITORY", "keras-gates/keras_gates")
BRANCH = "main"
SCRIPTS = [
    "sentiment",
    "pos_tagging",
    "char_generation",
    "name_nationality",
    "fine_tune",
]
# Colab-only extras a notebook needs beyond the package (Debian data).
APT = {"char_generation": ["fortunes"]}

INSTALL = """\
# Colab: fetch the examples (they read corpora.py and data/ from the repository)
# and install keras_gates with its `examples` extra. Skipped anywhere else.
import os
import subprocess
import sys

if "google.colab" in sys.modules and not os.path.exists("corpora.py"):
    url = "https://github.com/{repository}"
    subprocess.run(["git", "clone", "-q", "--depth=1", url, "keras_gates"], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "./keras_gates[examples]"],
        check=True,
    ){apt}
    os.chdir("keras_gates/examples")"""


# What every notebook says about Colab's GPU runtime (keras_gates/cudnn.py).
GPU_RUNTIME = (
    "**On a GPU** (Colab: *Runtime > Change runtime type > T4 GPU*): "
    "`keras_gates.LSTM` runs cuDNN's LSTM, the kernel `keras.layers.LSTM` runs "
    "(the same weights and maths; pass `use_cudnn=False` to keep the package's "
    "own loop), and `keras_gates.GRU`, which no cuDNN kernel computes, runs its "
    "own loop (XLA-compiled with `jit_compile=True`). Gate traces always run "
    "step by step, and serving exports never hold a cuDNN op, so they load on "
    "a CPU-only TF Serving. The CPU runtime runs every example too, slower."
)


def notebook(stem: str) -> nbformat.NotebookNode:
    script = HERE / f"{stem}.py"
    nb = jupytext.read(script, fmt="py:percent")
    header = nb.cells.pop(0).source  # the module docstring
    title = re.search(r"Title: (.*)", header).group(1).strip()
    description = re.search(r"Description: (.*?)\s*\"\"\"", header, re.S).group(1)
    description = " ".join(description.split())
    badge = (
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"(https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}"
        f"/examples/{stem}.ipynb)"
    )
    apt = "".join(
        f'\n    subprocess.run(["apt-get", "install", "-y", "-q", "{p}"], check=True)'
        for p in APT.get(stem, [])
    )
    intro = nbformat.v4.new_markdown_cell(
        f"# {title}\n\n{badge}\n\n{description}\n\n{GPU_RUNTIME}\n\n"
        f"*Generated from `examples/{stem}.py` by `examples/make_notebooks.py`.*"
    )
    install = nbformat.v4.new_code_cell(INSTALL.format(repository=REPOSITORY, apt=apt))
    nb.cells[:0] = [intro, install]
    for index, cell in enumerate(nb.cells):
        cell.id = f"{stem}-{index}"  # stable ids: regenerating gives the same file
    nb.metadata = {
        "colab": {"provenance": []},
        "kernelspec": {
            "display_name": "Python 3",
            "language": "python",
            "name": "python3",
        },
        "language_info": {"name": "python"},
    }
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare")
    args = parser.parse_args(argv)
    stale = []
    for stem in SCRIPTS:
        text = nbformat.writes(notebook(stem)) + "\n"
        path = HERE / f"{stem}.ipynb"
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print(f"out of date (run examples/make_notebooks.py): {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
