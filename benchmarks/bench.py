"""Time keras_gates.LSTM/GRU against the Keras built-ins under every compiler.

    python benchmarks/bench.py [--quick] [--json PATH]

The benchmark itself lives in ``keras_gates/bench.py`` so that
``keras-gates bench`` runs the same code; see its docstring for what is timed.
"""

from __future__ import annotations

import argparse
import sys

from keras_gates import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench.add_arguments(parser)
    sys.exit(bench.run(parser.parse_args()))
