"""The loader child: every check `keras-gates verify` makes, run in a process
that never imports TensorFlow's Python package (the README's serving section).

The parent (`keras_gates.serving.verify`) starts it with `run_child`; it reads
a job (JSON), runs it and prints one report line.
"""

from __future__ import annotations

import json
import re
import sys
import time as time_module
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from keras_gates.serving import samples
from keras_gates.serving.capi import (
    CApi,
    DataTypes,
    Protos,
    Session,
    from_tensor_proto,
    read_tfrecords,
)
from keras_gates.serving.layout import MAX_WARMUP_RECORDS, METADATA_PATH, WARMUP_PATH

REPORT_PREFIX = "KERAS_GATES_VERIFY "
FORBIDDEN_OPS = {
    "PyFunc": "needs the Python interpreter, which the server does not have",
    "PyFuncStateless": "needs the Python interpreter, which the server does not have",
    "EagerPyFunc": "needs the Python interpreter, which the server does not have",
    "CudnnRNN": "is GPU-only (cuDNN); a CPU server cannot run it",
    "CudnnRNNV2": "is GPU-only (cuDNN); a CPU server cannot run it",
    "CudnnRNNV3": "is GPU-only (cuDNN); a CPU server cannot run it",
}
UNNAMED = re.compile(r"^(keras_tensor(_\d+)?|output_\d+|args_\d+|input_\d+)$")


@dataclass
class Report:
    """What `verify_saved_model` found.

    Attributes:
        path: The SavedModel directory.
        checks: (name, passed, detail) for every check run, in order.
        runs: How many signature runs (including warmup records) succeeded.
    """

    path: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    runs: int = 0

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(passed for _, passed, _ in self.checks)

    def add(self, name: str, passed: bool, detail: str = "") -> None:
        self.checks.append((name, bool(passed), detail))

    def text(self) -> str:
        lines = [f"SavedModel {self.path}:"]
        for name, passed, detail in self.checks:
            mark = "ok  " if passed else "FAIL"
            lines.append(f"  [{mark}] {name}" + (f": {detail}" if detail else ""))
        lines.append(
            "PASSED: TF Serving's C++ loader loads and runs it."
            if self.ok
            else "FAILED: TF Serving would not serve this SavedModel as it is."
        )
        return "\n".join(lines)


def sample_feeds(
    definition, batch: int, time: int, metadata: dict, seed: int, dtypes: DataTypes
) -> dict[str, np.ndarray]:
    """Inputs for one run of a signature: the export's own sample sequences
    (`keras_gates.serving.samples`, as at export) where its metadata describes
    the input, else random values of the declared dtype and shape."""
    rng = np.random.default_rng(seed)
    sequence_rank = {"float": 3, "tokens": 2, "text": 1}.get(metadata.get("kind"))
    feeds = {}
    for name, info in sorted(definition.inputs.items()):
        dims = [d.size for d in info.tensor_shape.dim]
        shape = tuple(
            batch if axis == 0 else time if size < 0 else size
            for axis, size in enumerate(dims)
        )
        dtype = dtypes.numpy.get(info.dtype)
        if name == metadata.get("input_name") and len(shape) == sequence_rank:
            feeds[name] = samples.sequence(metadata, batch, time, seed, dtype=dtype)
            if feeds[name].dtype == object:
                feeds[name] = feeds[name].astype(str)
        elif info.dtype == dtypes.string:
            words = metadata.get("sample_words") or ["hello", "world", "gates"]
            count = int(np.prod(shape))
            feeds[name] = np.array(
                [" ".join(rng.choice(words, size=time)) for _ in range(count)]
            ).reshape(shape)
        elif info.dtype in dtypes.integers and name == "lengths":
            lengths = rng.integers(1, time + 1, size=shape)
            lengths[..., 0] = time
            feeds[name] = lengths.astype(dtype)
        elif info.dtype in dtypes.integers:
            # token ids, within the model's vocabulary whatever the dtype
            feeds[name] = samples.tokens(metadata, shape, seed, dtype)
        elif dtype is not None:
            feeds[name] = rng.normal(size=shape).astype(dtype)
        else:
            raise TypeError(f"input {name!r} has unsupported dtype {info.dtype}")
    return feeds


VARIABLE_OPS = {"VarHandleOp", "VariableV2", "Variable", "RestoreV2"}


def check_files(export_dir: Path, meta) -> tuple[str, bool, str]:
    """The SavedModel's files: saved_model.pb, and the variables it restores.

    The server restores variables from variables/variables.index and its
    data shards; a graph without variables may lack them (the loader then
    restores nothing), a graph with variables may not.
    """
    name = "saved_model.pb and variables/variables.index (+ data) are present"
    variables = export_dir / "variables"
    index = variables / "variables.index"
    shards = sorted(variables.glob("variables.data-*")) if variables.is_dir() else []
    needs = set()
    if meta is not None:
        needs = {node.op for node in meta.graph_def.node} & VARIABLE_OPS
        for function in meta.graph_def.library.function:
            needs.update({node.op for node in function.node_def} & VARIABLE_OPS)
    if not (export_dir / "saved_model.pb").is_file():
        return name, False, f"no saved_model.pb in {export_dir}"
    if index.is_file() and shards:
        return name, True, f"{len(shards)} data shard(s)"
    if not needs:
        return name, True, "the graph has no variables to restore"
    missing = (
        f"{variables} is missing"
        if not variables.is_dir()
        else f"{index} is missing"
        if not index.is_file()
        else f"no variables.data-* shard in {variables}"
    )
    return (
        name,
        False,
        f"{missing}, but the graph restores variables ({', '.join(sorted(needs))}): "
        "the server cannot load its weights. Copy the whole version folder, "
        "variables/ included",
    )


def check_signatures(signatures: dict, metadata: dict, dtypes: DataTypes):
    """serving_default exists; every signature has named inputs and outputs
    with a dynamic batch (and time, unless the model takes a fixed length)."""
    default = signatures.get("serving_default")
    yield (
        "a 'serving_default' signature with method tensorflow/serving/predict",
        default is not None and default.method_name == "tensorflow/serving/predict",
        f"signatures: {sorted(signatures)}"
        + (f"; method {default.method_name!r}" if default is not None else ""),
    )
    fixed_time = metadata.get("time_steps")
    problems = []
    for name, definition in sorted(signatures.items()):
        if name.startswith("__"):  # __saved_model_init_op
            continue
        for kind, tensors in (
            ("input", definition.inputs),
            ("output", definition.outputs),
        ):
            for key, info in tensors.items():
                if UNNAMED.match(key):
                    problems.append(f"{name}: unnamed {kind} {key!r}")
                dims = [d.size for d in info.tensor_shape.dim]
                if info.tensor_shape.unknown_rank or kind != "input":
                    continue
                if dims and dims[0] != -1:
                    problems.append(f"{name}: input {key!r} has fixed batch {dims}")
                # The time axis: axis 1 of (batch, time, features) floats and
                # of (batch, time) token ids.
                is_sequence = len(dims) >= 3 or (
                    len(dims) == 2 and info.dtype in dtypes.integers and name != "step"
                )
                if is_sequence and dims[1] != -1 and dims[1] != fixed_time:
                    problems.append(f"{name}: input {key!r} has fixed time {dims}")
    yield (
        "named inputs and outputs with dynamic batch"
        + (" and time" if not fixed_time else f" (time fixed at {fixed_time})"),
        not problems,
        "; ".join(problems[:6]),
    )


def check_ops(meta, capi: CApi, protos: Protos) -> tuple[str, bool, str]:
    """Every op is registered in the C++ library, none needs Python or a GPU."""
    op_list = protos.message("tensorflow.OpList").FromString(capi.op_list())
    registered = {op.name for op in op_list.op}
    functions = {f.signature.name for f in meta.graph_def.library.function}
    used = {node.op for node in meta.graph_def.node}
    for function in meta.graph_def.library.function:
        used.update(node.op for node in function.node_def)
    forbidden = sorted(used & set(FORBIDDEN_OPS))
    unknown = sorted(used - registered - functions)
    return (
        "every op is a registered C++ op that a CPU server can run",
        not forbidden and not unknown,
        "; ".join(
            [f"{op} {FORBIDDEN_OPS[op]}" for op in forbidden]
            + ([f"not registered: {unknown}"] if unknown else [])
        )
        or f"{len(used)} op types, {len(functions)} library functions",
    )


def check_samples(
    session: Session, signatures: dict, job: dict, metadata: dict, served: dict
) -> list[tuple[str, bool, str]]:
    """Every signature at every batch size and length: runs, finite outputs,
    the batch first. serving_default's feeds and outputs go to `served` (the
    parent compares them with Keras)."""
    failures, non_finite, run = [], [], 0
    dtypes = session.tf.dtypes
    for name, definition in sorted(signatures.items()):
        if name.startswith("__"):
            continue
        for batch in job["batch_sizes"]:
            for time in job["time_steps"]:
                feeds = sample_feeds(definition, batch, time, metadata, run, dtypes)
                try:
                    outputs = session.run(name, feeds)
                except (RuntimeError, TypeError) as error:
                    first_line = str(error).splitlines()[0][:300]
                    failures.append(
                        f"{name} at batch {batch}, time {time}: {first_line}"
                    )
                    continue
                session.runs += 1
                for key, value in outputs.items():
                    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                        non_finite.append(f"{name}.{key} at batch {batch}")
                    if value.ndim and value.shape[0] != batch:
                        failures.append(
                            f"{name}.{key} at batch {batch}: shape {value.shape}"
                        )
                if name == "serving_default":
                    for key, value in feeds.items():
                        served[f"feed:{run}:{key}"] = value
                    for key, value in outputs.items():
                        served[f"out:{run}:{key}"] = value
                run += 1
    return [
        (
            f"every signature runs at batch {list(job['batch_sizes'])} x time "
            f"{list(job['time_steps'])}",
            not failures,
            "; ".join(failures[:4])[:900] or f"{session.runs} runs",
        ),
        (
            "all outputs are finite",
            not non_finite,
            "non-finite: " + ", ".join(non_finite[:6]) if non_finite else "",
        ),
    ]


def check_warmup(
    session: Session, export_dir: Path, protos: Protos
) -> tuple[str, bool, str]:
    """The warmup TFRecord parses (CRCs, at most 1000 records) and replays."""
    warmup = export_dir / WARMUP_PATH
    if not warmup.is_file():
        return ("warmup file assets.extra/tf_serving_warmup_requests", True, "absent")
    name = "the warmup requests replay"
    try:
        protos.load("tensorflow_serving.apis.prediction_log_pb2")
        log_class = protos.message("tensorflow.serving.PredictionLog")
        records = read_tfrecords(warmup)
    except (ValueError, TypeError, ModuleNotFoundError) as error:
        return name, False, str(error)
    problems = []
    if len(records) > MAX_WARMUP_RECORDS:
        problems.append(
            f"{len(records)} records; the server reads at most {MAX_WARMUP_RECORDS}"
        )
    for index, record in enumerate(records[:MAX_WARMUP_RECORDS]):
        log = log_class.FromString(record)
        if log.WhichOneof("log_type") != "predict_log":
            problems.append(f"record {index}: not a predict_log")
            continue
        request = log.predict_log.request
        signature = request.model_spec.signature_name or "serving_default"
        try:
            inputs = {
                k: from_tensor_proto(v, session.tf.dtypes)
                for k, v in request.inputs.items()
            }
            session.run(signature, inputs)
            session.runs += 1
        except (RuntimeError, TypeError) as error:
            problems.append(f"record {index} ({signature}): {error}")
    return (
        name,
        not problems and bool(records),
        "; ".join(problems[:4])[:900] or f"{len(records)} records",
    )


def run_requests(session: Session, job: dict, served: dict) -> tuple[str, bool, str]:
    """Run the job's requests in order in one session (an input may be an
    earlier request's output: the `step` state), `repeat` times each."""
    feeds_by_run: dict[int, tuple[str, dict]] = {}
    with np.load(job["feeds"], allow_pickle=False) as feeds:
        for key in feeds.files:
            index, signature, name = key.split(":", 2)
            entry = feeds_by_run.setdefault(int(index), (signature, {}))
            entry[1][name] = feeds[key]
    for key, (source, output) in job.get("links", {}).items():
        index, signature, name = key.split(":", 2)
        entry = feeds_by_run.setdefault(int(index), (signature, {}))
        entry[1][name] = (source, output)
    results: dict[int, dict[str, np.ndarray]] = {}
    for index in sorted(feeds_by_run):
        signature, inputs = feeds_by_run[index]
        inputs = {
            name: results[value[0]][value[1]] if isinstance(value, tuple) else value
            for name, value in inputs.items()
        }
        try:
            seconds = []
            for _ in range(max(1, int(job.get("repeat", 1)))):
                started = time_module.perf_counter()
                outputs = session.run(signature, inputs)
                seconds.append(time_module.perf_counter() - started)
        except RuntimeError as error:
            return f"request {index} ({signature})", False, str(error)[:600]
        results[index] = outputs
        served[f"{index}:__seconds__"] = np.asarray(seconds)
        session.runs += 1
        for name, value in outputs.items():
            served[f"{index}:{name}"] = value
    return "every request ran", True, f"{session.runs} requests"


def _tensorflow_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("tensorflow")  # locates, does not import
    return Path(list(spec.submodule_search_locations)[0])


def run_job(job: dict) -> dict:
    """The child's whole work: `job["mode"]` is "check" (every check, as
    `keras-gates verify`) or "requests" (run the given requests only)."""
    # OpenSSL symbols: Python's hashlib and NumPy's random must be loaded
    # before the TF libraries, which clash with them otherwise.
    import hashlib  # noqa: F401

    import numpy.random  # noqa: F401

    checking = job["mode"] == "check"
    report = Report(job["saved_model"])
    export_dir = Path(job["saved_model"])
    served: dict[str, np.ndarray] = {}
    session = None
    try:
        protos = Protos()
        protos.load("tensorflow.core.protobuf.saved_model_pb2")
        protos.load("tensorflow.core.framework.op_def_pb2")
        dtypes = DataTypes(protos)
        saved = protos.message("tensorflow.SavedModel").FromString(
            (export_dir / "saved_model.pb").read_bytes()
        )
        metas = [m for m in saved.meta_graphs if "serve" in m.meta_info_def.tags]
        report.add(*check_files(export_dir, metas[0] if metas else None))
        if not metas:
            report.add("a meta graph tagged 'serve'", False, "none in saved_model.pb")
            return _finish(report, job, served, session)
        meta = metas[0]
        signatures = dict(meta.signature_def)
        metadata = {}
        if (export_dir / METADATA_PATH).is_file():
            metadata = json.loads((export_dir / METADATA_PATH).read_text())
        if checking:
            for check in check_signatures(signatures, metadata, dtypes):
                report.add(*check)
        capi = CApi(_tensorflow_root(), dtypes)
        ops = check_ops(meta, capi, protos)
        if checking or not ops[1]:
            report.add(*ops)
        try:
            session = Session(capi, protos, export_dir, signatures)
        except RuntimeError as error:
            report.add("TF_LoadSessionFromSavedModel loads it", False, str(error)[:600])
            return _finish(report, job, served, session)
        if not checking:
            if ops[1]:
                report.add(*run_requests(session, job, served))
            return _finish(report, job, served, session)
        report.add("TF_LoadSessionFromSavedModel loads it", True)
        if not ops[1]:
            # Running a graph that holds an op the server lacks is what the
            # server would do, but such an op (EagerPyFunc without Python) can
            # take this process down with it, and the report with it.
            report.add(
                f"every signature runs at batch {list(job['batch_sizes'])} x time "
                f"{list(job['time_steps'])}",
                False,
                "not run: the graph holds ops a C++ server cannot run (above)",
            )
            return _finish(report, job, served, session)
        for check in check_samples(session, signatures, job, metadata, served):
            report.add(*check)
        report.add(*check_warmup(session, export_dir, protos))
        return _finish(report, job, served, session)
    except BaseException:
        if session is not None:
            session.close()
        raise


def _finish(report: Report, job: dict, served: dict, session) -> dict:
    if session is not None:
        report.runs = session.runs
        session.close()
    report.add(
        "the loader process imported no tensorflow Python module",
        not any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules),
    )
    if job.get("out"):
        np.savez(job["out"], **served)
    return {"checks": report.checks, "runs": report.runs}


def child_main(job_path: str) -> int:
    """Run the job at `job_path`; print the report as one line (exit 0)."""
    job = json.loads(Path(job_path).read_text())
    try:
        result = run_job(job)
    except Exception as error:  # report, don't crash: the parent reads stdout
        result = {
            "checks": [
                ["the C++ loader check ran", False, f"{type(error).__name__}: {error}"]
            ],
            "runs": 0,
        }
    print(REPORT_PREFIX + json.dumps(result), flush=True)
    return 0
