"""TF Serving for keras_gates models, as the steps a model goes through.

    analysis     what the model is (its input kind; a chain or a whole graph)
    warmup       sample requests and the warmup TFRecord
    export       `export_for_serving`: the steps below, in order
    publish      staging, version numbers, the atomic rename, models.config
    verify       the parent side of the C++ loader check (`verify_saved_model`,
                 `run_signatures`, `serving_latency`)
    checks       the loader child's checks (no TensorFlow Python package)
    capi         TensorFlow's C API, protos and TFRecords through ctypes
    layout       file names and version rules of the serving layout
    modelfile    reading a `.keras` file with clear errors

The command line (`keras-gates export`, `keras-gates verify`) is in
`keras_gates.cli`.
"""

from keras_gates.serving.export import export_for_serving, signatures_line
from keras_gates.serving.publish import update_models_config

__all__ = ["export_for_serving", "signatures_line", "update_models_config"]
