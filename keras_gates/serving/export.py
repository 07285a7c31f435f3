"""Export a keras_gates model as a TF Serving version folder, in one call.

    keras-gates export MODEL.keras --name NAME --base DIR [--version N] [--overwrite]

writes ``DIR/NAME/VERSION/`` in TF Serving's layout (the README's serving section)::

    saved_model.pb, variables/          graph and weights (keras.export.ExportArchive)
    assets.extra/tf_serving_warmup_requests
                                        PredictionLog records, one per signature
    assets.extra/keras_gates.json       what `keras-gates verify` needs to feed it

and adds NAME to ``DIR/models.config`` (plus an example ``batching_parameters.txt``
if the base has none). The signatures, all with dynamic batch and time:

    serving_default   inputs  `inputs` (batch, time, features) float32, or
                              `tokens` (batch, time) int, or `text` (batch,) string
                      outputs `outputs` (the model's output)
    with_lengths      token models only: `tokens` plus `lengths` (batch,) int32.
                      The first lengths[b] steps of row b are real; the rest are
                      masked whatever they hold. Use it under server-side batching,
                      which pads with the tensor's first element, not with 0.
    step              one time step, state in and out: `inputs` (batch, features)
                      or `tokens` (batch,), and `h`, `s` (LSTM) or `s` (GRU), each
                      (batch, units); returns `outputs` and the new `h`/`s`. Start
                      from zeros. No state variables: the server stays stateless.
    gates             the serving_default input; returns every gate at every step,
                      (batch, time, units) each (`o`, `i`, `f`, `s_tilde`, `s`, `h`
                      as the cell names them), and `mask` (batch, time): the
                      numbers of keras_gates.introspection.gate_sequences, with
                      the gates at masked steps 0 (JSON has no NaN) and `s`/`h`
                      there the carried state.

Float inputs, states and outputs are float32 in every signature, also for a
model trained under a mixed-precision policy: the layers compute in their own
dtype (float16, bfloat16) inside, and the outputs are cast back to float32.

Which models: any single-input, single-output model with keras_gates layers
(Bidirectional, stacked, go_backwards, branches). `gates` follows one forward
cell, so it is written for chains: input -> layers -> one keras_gates LSTM or
GRU (not go_backwards) -> any head; `step` streams one step at a time, so it
also needs every layer before the recurrent one (and after it, where it returns
sequences) to act on each step alone (Dense, Embedding, Dropout, ...; not
Conv1D, pooling, attention, Flatten). Stateful models are refused.

Every signature is proven before the version is published (see
`keras_gates.serving.proofs`): the staged SavedModel is loaded and each
signature compared with the Keras model on random inputs at two batch sizes and
two lengths. One that fails is not written; if `serving_default` fails, the
export fails and the base is left as it was. The log line and `keras_gates.json`
("signatures", "omitted_signatures", "proofs") say which signatures were
written, why the others were not, and how closely each matched.

With ``jit_compile=True`` every signature is XLA-compiled (faster at small
batches; TF Serving then needs ``--xla_cpu_compilation_enabled=true``).

Text models keep their TextVectorization in the graph (raw strings in). The graph
is traced from the keras_gates kernels (``keras_gates.cudnn.portable``: never
cuDNN, even on a GPU), so it has no CudnnRNN ops and runs on any device; the
export is refused if one slips in (a keras.layers.LSTM elsewhere in the model
traced on a GPU).

Publishing (staging beside the base, the atomic rename, versions of concurrent
exports, retire/restore, models.config) is `keras_gates.serving.publish`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_gates import cudnn
from keras_gates.serving import proofs, publish, samples, signatures
from keras_gates.serving.analysis import Description, describe
from keras_gates.serving.layout import (
    BATCHING_FILE,
    METADATA_FILE,
    WARMUP_FILE,
    check_name,
    check_version,
)
from keras_gates.serving.modelfile import load_keras_file

LOG = logging.getLogger("keras_gates.serving")
# Ops a CPU server cannot run (GPU-only cuDNN RNN kernels).
GPU_ONLY_OPS = ("CudnnRNN", "CudnnRNNV2", "CudnnRNNV3")


def graph_ops(export_dir: Path) -> set[str]:
    """Every op type in a SavedModel's graph and its function library."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((export_dir / "saved_model.pb").read_bytes())
    ops = set()
    for meta in saved.meta_graphs:
        ops.update(node.op for node in meta.graph_def.node)
        for function in meta.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


def build_signatures(
    description: Description, jit_compile: bool
) -> tuple[dict[str, signatures.Signature], dict[str, str]]:
    """The signatures that can be built, and why each other one was not."""
    built, omitted = {}, {}
    for name, reason in signatures.applicable(description).items():
        if reason is not None:
            omitted[name] = reason
            continue
        try:
            built[name] = signatures.FACTORIES[name](description, jit_compile)
        except Exception as error:
            if name == "serving_default":
                raise ValueError(
                    "`model`: its serving_default signature cannot be traced"
                    + (" with jit_compile=True" if jit_compile else "")
                    + f": {type(error).__name__}: {proofs.first_line(error)}"
                ) from error
            omitted[name] = (
                f"tracing it failed: {type(error).__name__}: {proofs.first_line(error)}"
            )
    return built, omitted


def write_archive(model, built: dict, export_dir: Path, verbose: bool) -> None:
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, signature in built.items():
        archive.add_endpoint(name, signature.function)
    archive.write_out(str(export_dir), verbose=verbose)


def _served(export_dir: Path) -> dict[str, Any]:
    """The staged export's signatures as callables on NumPy arrays."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(export_dir))

    def wrap(function):
        def call(**inputs):
            outputs = function(**{k: tf.constant(v) for k, v in inputs.items()})
            return {k: v.numpy() for k, v in outputs.items()}

        return call

    served = {name: wrap(fn) for name, fn in loaded.signatures.items()}
    served["__keep__"] = loaded  # the functions need the loaded object alive
    return served


def write_warmup(path: Path, metadata: dict, written: dict, name: str) -> int:
    """The warmup TFRecord: every written signature at batch 1 and 2."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    requests = samples.warmup_requests(metadata, written)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in requests:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=name, signature_name=signature)
            )
            for key, value in inputs.items():
                value = np.asarray(value)
                if value.dtype == object:
                    value = value.astype(bytes)
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())
    return len(requests)


# Every signature is traced with the package's own kernels: a model exported
# on a GPU machine loads in a CPU-only TF Serving.
@cudnn.portable()
def export_for_serving(
    model: keras.Model | str | os.PathLike,
    base: str | os.PathLike,
    name: str,
    version: int | None = None,
    *,
    overwrite: bool = False,
    verify: bool = True,
    jit_compile: bool = False,
    verbose: bool = False,
) -> Path:
    """Write `base/name/version/`, a SavedModel that TF Serving serves.

    Args:
        model: A keras.Model (or the path of a `.keras` file) with one input
            (float (batch, time, features), int (batch, time) or string), one
            output tensor and keras_gates layers, none of them stateful. Which
            signatures it gets is decided by the model's layers and proven by
            running them (module docstring); the log line (logger
            `keras_gates.serving`) and the metadata say why any was omitted.
        base: The model base directory (created if missing).
        name: The model's name: its folder in `base` and its name in the
            server's URLs.
        version: A positive integer; None for one more than the highest
            existing version (1 for the first), chosen at the final rename so
            that concurrent exports get their own versions.
        overwrite: Replace an existing version. Without it an existing version
            is refused and left untouched.
        verify: Before moving the export into place, run it through TF
            Serving's C++ loader (`keras_gates.serving.verify`, a separate
            process).
        jit_compile: XLA-compile every signature (TF Serving must then run
            with --xla_cpu_compilation_enabled=true).
        verbose: Print the signatures as ExportArchive writes them.

    Returns:
        The path of the version folder.

    Raises:
        TypeError, ValueError: A bad argument or an unsupported model.
        FileExistsError: `version` exists and `overwrite` is False.
        RuntimeError: serving_default disagrees with the model, or the written
            export failed verification (nothing is left behind).
        OSError: `base` cannot be written (a file in its path, no permission);
            nothing is left behind.
    """
    base_path = publish.check_base(base)
    name = check_name(name)
    version = check_version(version)
    for flag, value in (("overwrite", overwrite), ("jit_compile", jit_compile)):
        if not isinstance(value, bool):
            raise TypeError(f"`{flag}` must be True or False; received {value!r}.")
    if isinstance(model, (str, os.PathLike)):
        model = load_keras_file(model)
    description = describe(model)
    if jit_compile and description.kind == "text":
        # XLA has no string ops; running such a graph aborts the process
        # (a TF CHECK failure, measured), so it is refused before tracing.
        raise ValueError(
            "`jit_compile`: a text model cannot be XLA-compiled (its "
            "TextVectorization runs string ops, which XLA does not have); export "
            "it with jit_compile=False, or export the model from the token ids on "
            "(after the TextVectorization) with jit_compile=True."
        )
    shown = Path(base) / name
    if version is not None and (base_path / name / str(version)).exists():
        if not overwrite:
            raise FileExistsError(
                f"`version`: {shown / str(version)} already exists; pass "
                "overwrite=True (--overwrite) to replace it, or another version."
            )
    for folder in (base_path, base_path / name):  # fail now, not after the export
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(
                errno.EACCES, "cannot create a version in it", str(folder)
            )

    built, omitted = build_signatures(description, jit_compile)
    # Nothing is created inside the base until the final rename (unless its
    # parent refuses, where the staging folder goes inside it); only base's
    # parent (and its missing ancestors) may be created, and are removed again
    # if the export fails.
    created = publish.make_dirs(base_path.parent)
    published = False
    try:
        with publish.Staging(base_path) as staging:
            export_dir = staging.export_dir
            candidate = staging.path / "candidate"
            write_archive(model, built, candidate, verbose)
            results = proofs.prove(description, _served(candidate))
            ok, detail = results["serving_default"]
            if not ok:
                raise RuntimeError(
                    "`model`: the exported serving_default signature "
                    f"{detail.replace('it disagrees', 'disagrees')}; nothing was "
                    "written."
                )
            for signature, (ok, detail) in results.items():
                if not ok:
                    omitted[signature] = detail
                    del built[signature]
            if any(not ok for ok, _ in results.values()):
                write_archive(model, built, export_dir, verbose)
            else:
                os.replace(candidate, export_dir)

            gpu_ops = sorted(graph_ops(export_dir) & set(GPU_ONLY_OPS))
            if gpu_ops:
                raise ValueError(
                    f"`model`: the traced graph contains GPU-only ops {gpu_ops}, "
                    "which a CPU server cannot run; use keras_gates layers (or "
                    "keras.layers.LSTM(use_cudnn=False)) and export again."
                )
            written = {n: s.described() for n, s in built.items()}
            metadata = {
                "name": name,
                "version": version,
                **description.metadata(),
                "signatures": written,
                # Signatures not written, each with the reason.
                "omitted_signatures": {
                    n: omitted[n] for n in signatures.FACTORIES if n in omitted
                },
                "proofs": {n: detail for n, (ok, detail) in results.items() if ok},
                "jit_compile": jit_compile,
                "keras_version": keras.__version__,
            }
            extra = export_dir / "assets.extra"
            metadata["warmup_records"] = write_warmup(
                extra / WARMUP_FILE, metadata, written, name
            )

            def write_metadata(chosen: int) -> None:
                metadata["version"] = chosen
                (extra / METADATA_FILE).write_text(
                    json.dumps(metadata, indent=2) + "\n"
                )

            write_metadata(version or 0)
            if verify:
                from keras_gates.serving.verify import verify_saved_model

                report = verify_saved_model(export_dir)
                if not report.ok:
                    raise RuntimeError(
                        "The export failed TF Serving's C++ loader check; nothing "
                        "was written.\n" + report.text()
                    )
            target = staging.publish(
                name,
                version,
                overwrite=overwrite,
                shown_base=base,
                prepare=write_metadata,
            )
            published = True
    finally:
        if not published:
            publish.remove_empty(created)

    publish.update_models_config(base_path, name)
    batching = base_path / BATCHING_FILE
    if not batching.exists():
        batching.write_text(publish.BATCHING_PARAMETERS)
    line = signatures_line(metadata["signatures"], metadata["omitted_signatures"])
    if jit_compile:
        line += " (XLA-compiled: serve with --xla_cpu_compilation_enabled=true)"
    (LOG.warning if omitted else LOG.info)("%s: %s", target, line)
    return target


def signatures_line(written: dict, omitted: dict[str, str]) -> str:
    """One line: the signatures written, and each one not written with why."""
    line = "signatures " + ", ".join(written)
    by_reason: dict[str, list[str]] = {}
    for name, reason in omitted.items():
        by_reason.setdefault(reason, []).append(name)
    for reason, names in by_reason.items():
        line += f"; not written: {', '.join(names)} ({reason})"
    return line
