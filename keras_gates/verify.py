"""Moved: the C++ loader check lives in `keras_gates.serving.verify`.

Kept so that `from keras_gates.verify import run_signatures` (the examples,
users' scripts) keeps working.
"""

from keras_gates.serving.verify import (
    FromRequest,
    Report,
    run_signatures,
    serving_latency,
    verify_saved_model,
)

__all__ = [
    "FromRequest",
    "Report",
    "run_signatures",
    "serving_latency",
    "verify_saved_model",
]
