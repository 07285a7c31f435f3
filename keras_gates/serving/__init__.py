"""TF Serving for keras_gates models, as the steps a model goes through.

    analysis     what the model is: a frozen Description (input kind, chain,
                 which layers act per step), or the reason it cannot be served
    signatures   one small factory per signature (serving_default,
                 with_lengths, step, gates)
    proofs       each signature, run from the staged SavedModel, against Keras
    samples      sample inputs and warmup requests (export, proofs, verify)
    publish      staging (locked), version numbers, the atomic rename,
                 retire/restore, models.config
    export       `export_for_serving`: the steps above, in order
    verify       the parent side of the C++ loader check (`verify_saved_model`,
                 `run_signatures`, `serving_latency`)
    loader_child the C++ loader check's child process: every check it makes
                 (no TensorFlow Python package)
    capi         TensorFlow's C API, protos and TFRecords through ctypes
    layout       file names and version rules of the serving layout
    modelfile    reading a `.keras` file with clear errors

The command line (`keras-gates export`, `keras-gates verify`) is in
`keras_gates.cli`.
"""

from keras_gates.serving.export import export_for_serving, signatures_line
from keras_gates.serving.publish import update_models_config

__all__ = ["export_for_serving", "signatures_line", "update_models_config"]
