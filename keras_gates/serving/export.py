"""Export a keras_gates model as a TF Serving version folder, in one call.

    keras-gates export MODEL.keras --name NAME --base DIR [--version N] [--overwrite]

writes ``DIR/NAME/VERSION/`` in TF Serving's layout (SPEC §3)::

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
(Bidirectional, stacked, go_backwards, branches). `step` and `gates` follow one
forward cell step by step, so they are written for chains only: input ->
TextVectorization / Embedding / per-step layers -> one keras_gates LSTM or GRU
(not go_backwards) -> any head. Any other model is exported whole (its own call
in `serving_default`; `with_lengths` sets the padding to token 0, written where
the model masks token 0, which is checked on the model before writing). The log
line and `keras_gates.json` ("signatures", "omitted_signatures") say which
signatures were written and why the others were not. Stateful models are refused.

Text models keep their TextVectorization in the graph (raw strings in). The graph
is traced from the keras_gates cell's own ops, so it has no CudnnRNN ops and runs
on any device; the export is refused if one slips in (a keras.layers.LSTM
elsewhere in the model traced on a GPU).

A version is staged in a hidden folder beside the base directory (in the base's
parent, so on the same filesystem: ``.BASE.keras-gates-export-PID-XXXX``) and
renamed into place in one step; ``BASE/NAME`` is created only then. A failure
in Python removes the staging folder; a killed export (SIGKILL, power loss)
leaves the base directory exactly as it was, and its staging folder is removed
by the next export into that base once its process is gone. An existing
version is never touched unless ``overwrite=True``, and ``models.config`` is
updated only after the version is in place.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import keras

from keras_gates.serving import publish
from keras_gates.serving.analysis import Plan
from keras_gates.serving.layout import (
    BATCHING_FILE,
    METADATA_FILE,
    WARMUP_FILE,
    check_name,
    check_version,
    existing_versions,
)
from keras_gates.serving.modelfile import load_keras_file
from keras_gates.serving.warmup import write_warmup

LOG = logging.getLogger("keras_gates.serving")
# Ops a CPU server cannot run (GPU-only cuDNN RNN kernels).
GPU_ONLY_OPS = ("CudnnRNN", "CudnnRNNV2", "CudnnRNNV3")


def _graph_ops(export_dir: Path) -> set[str]:
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((export_dir / "saved_model.pb").read_bytes())
    ops = set()
    for meta in saved.meta_graphs:
        ops.update(node.op for node in meta.graph_def.node)
        for function in meta.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


def export_for_serving(
    model: keras.Model | str | os.PathLike,
    base: str | os.PathLike,
    name: str,
    version: int | None = None,
    *,
    overwrite: bool = False,
    verify: bool = True,
    verbose: bool = False,
) -> Path:
    """Write `base/name/version/`, a SavedModel that TF Serving serves.

    Args:
        model: A keras.Model (or the path of a `.keras` file) with one input
            (float (batch, time, features), int (batch, time) or string), one
            output and keras_gates layers, none of them stateful. A chain
            (input -> optional TextVectorization / Embedding / per-step layers
            -> one forward keras_gates.LSTM or GRU -> any head) gets every
            signature; any other model (Bidirectional, stacked, go_backwards)
            gets `serving_default` and, for a token model that masks token 0,
            `with_lengths`; the log line (logger `keras_gates.serving`) and
            the metadata say why the others were not written.
        base: The model base directory (created if missing).
        name: The model's name: its folder in `base` and its name in the
            server's URLs.
        version: A positive integer; None for one more than the highest
            existing version (1 for the first).
        overwrite: Replace an existing version. Without it an existing version
            is refused and left untouched.
        verify: Before moving the export into place, run it through TF
            Serving's C++ loader (`keras_gates.verify`, a separate process).
        verbose: Print the signatures as ExportArchive writes them.

    Returns:
        The path of the version folder.

    Raises:
        TypeError, ValueError: A bad argument or an unsupported model.
        FileExistsError: `version` exists and `overwrite` is False.
        RuntimeError: The written export failed verification (nothing is left
            behind).
        OSError: `base` cannot be written (a file in its path, no permission);
            nothing is left behind.
    """
    base_path = publish.check_base(base)
    name = check_name(name)
    version = check_version(version)
    if not isinstance(overwrite, bool):
        raise TypeError(f"`overwrite` must be True or False; received {overwrite!r}.")
    if isinstance(model, (str, os.PathLike)):
        model = load_keras_file(model)
    plan = Plan(model)

    # Killed exports first: one may have to put a replaced version back.
    publish.remove_stale_staging(base_path)
    model_dir = base_path / name
    if version is None:
        version = (existing_versions(model_dir) or [0])[-1] + 1
    target = model_dir / str(version)
    shown = Path(base) / name / str(version)  # as the caller spelled it
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"`version`: {shown} already exists; pass overwrite=True (--overwrite) "
            "to replace it, or another version."
        )
    for folder in (base_path, model_dir):  # fail now, not after the export
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(
                errno.EACCES, "cannot create a version in it", str(folder)
            )

    # Nothing is created inside the base until the final rename; only base's
    # parent (and its missing ancestors) may be created, and are removed again
    # if the export fails.
    created = publish.make_dirs(base_path.parent)
    staging = None
    moved = False
    try:
        folder, prefix = publish.staging_place(base_path)
        staging = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=folder))
        export_dir = staging / "export"
        archive = keras.export.ExportArchive()
        archive.track(model)
        described = plan.add_endpoints(archive)
        archive.write_out(str(export_dir), verbose=verbose)

        gpu_ops = sorted(_graph_ops(export_dir) & set(GPU_ONLY_OPS))
        if gpu_ops:
            raise ValueError(
                f"`model`: the traced graph contains GPU-only ops {gpu_ops}, which a "
                "CPU server cannot run; use keras_gates layers (or "
                "keras.layers.LSTM(use_cudnn=False)) and export again."
            )
        extra = export_dir / "assets.extra"
        records = write_warmup(extra / WARMUP_FILE, plan, name)
        metadata = {
            "name": name,
            "version": version,
            "kind": plan.kind,
            # The chain's one cell (what `step` takes); None for a whole graph.
            "structure": "chain" if plan.chain else "graph",
            "cell": type(plan.cell).__name__ if plan.chain else None,
            "units": int(plan.cell.units) if plan.chain else None,
            "states": list(plan.state_names),
            "recurrent_layers": plan.describe_recurrent(),
            "features": plan.input_shape[-1] if plan.kind == "float" else None,
            "vocabulary_size": plan.vocabulary_size(),
            "sample_words": plan.sample_words(),
            "input_dtype": plan.input_dtype,
            "return_sequences": (
                bool(plan.rnn.return_sequences) if plan.chain else None
            ),
            "signatures": described,
            # Signatures not written, each with the reason.
            "omitted_signatures": dict(plan.omitted),
            "warmup_records": records,
            "keras_version": keras.__version__,
        }
        (extra / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")

        if verify:
            from keras_gates import verify as verify_module

            report = verify_module.verify_saved_model(export_dir)
            if not report.ok:
                raise RuntimeError(
                    "The export failed TF Serving's C++ loader check; nothing was "
                    "written.\n" + report.text()
                )

        # The final move: BASE and BASE/NAME are created only now.
        created_here = publish.make_dirs(model_dir)
        try:
            if target.exists():
                if not overwrite:  # another export took this version meanwhile
                    raise FileExistsError(
                        f"`version`: {shown} already exists; pass overwrite=True "
                        "(--overwrite) to replace it, or another version."
                    )
                # Swap the old version out (it is dropped with the staging
                # folder), then rename the new one in. Killed between the two
                # renames, the next export puts the old version back.
                (staging / publish.RETIRED_FROM).write_text(str(target))
                os.replace(target, staging / publish.RETIRED)
            os.replace(export_dir, target)
            moved = True
        finally:
            if not moved:
                publish.remove_empty(created_here)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if not moved:
            publish.remove_empty(created)

    publish.update_models_config(base_path, name)
    batching = base_path / BATCHING_FILE
    if not batching.exists():
        batching.write_text(publish.BATCHING_PARAMETERS)
    line = signatures_line(described, plan.omitted)
    (LOG.warning if plan.omitted else LOG.info)("%s: %s", shown, line)
    return shown


def signatures_line(written: dict, omitted: dict[str, str]) -> str:
    """One line: the signatures written, and each one not written with why."""
    line = "signatures " + ", ".join(written)
    by_reason: dict[str, list[str]] = {}
    for name, reason in omitted.items():
        by_reason.setdefault(reason, []).append(name)
    for reason, names in by_reason.items():
        line += f"; not written: {', '.join(names)} ({reason})"
    return line
