"""The `keras-gates` console script, outside the keras_gates package.

`import keras_gates` imports every layer module, and with them Keras and
TensorFlow (4-7 s, and TensorFlow's start-up banner), so that a `.keras` file
loads right after it. `keras-gates --help` needs none of that: while this
module is being imported, the package's `__init__` sees it in `sys.modules`
and defers its imports to the first use of a public name (PEP 562). The
subcommands then import what they run (`keras_gates.cli`). Anything else that
imports keras_gates, a child process of this one included, gets the package
as it always is.
"""

from __future__ import annotations

import sys

# `python -m keras_gates_cli` runs this file as __main__: keras_gates/__init__
# looks for this name
sys.modules.setdefault("keras_gates_cli", sys.modules[__name__])

from keras_gates.cli import main  # noqa: E402  (after the line above, on purpose)

if __name__ == "__main__":
    sys.exit(main())
