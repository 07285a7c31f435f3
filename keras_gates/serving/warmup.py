"""Warmup requests: `assets.extra/tf_serving_warmup_requests`, a TFRecord of
PredictionLog records that TF Serving replays with --enable_model_warmup."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keras_gates.serving.analysis import Plan


def tensor_proto(value: np.ndarray):
    import tensorflow as tf

    if value.dtype == object or value.dtype.kind in "US":
        value = np.asarray([str(v).encode() for v in value.reshape(-1)]).reshape(
            value.shape
        )
        return tf.make_tensor_proto(value, dtype=tf.string)
    return tf.make_tensor_proto(value)


def warmup_requests(plan: Plan) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(signature, inputs) pairs: every written signature at batch 1 and 2."""
    requests = []
    for batch, time in ((1, 3), (2, 5)):
        x = plan.sample_sequence(batch, time, seed=batch)
        requests.append(("serving_default", {plan.input_name: x}))
        if plan.kind == "tokens" and "with_lengths" not in plan.omitted:
            lengths = np.full((batch,), time, np.int32)
            lengths[-1] = max(1, time - 2)
            requests.append(("with_lengths", {"tokens": x, "lengths": lengths}))
        if not plan.chain:
            continue
        requests.append(("gates", {plan.input_name: x}))
        if plan.kind == "float":
            x_t = x[:, 0]
            step_name = "inputs"
        elif plan.kind == "tokens":
            x_t, step_name = x[:, 0], "tokens"
        else:
            x_t = np.ones((batch,), np.int64)
            step_name = "tokens"
        units = plan.cell.units
        states = {s: np.zeros((batch, units), np.float32) for s in plan.state_names}
        requests.append(("step", {step_name: x_t, **states}))
    return requests


def write_warmup(path: Path, plan: Plan, name: str) -> int:
    import tensorflow as tf

    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    except ImportError as error:
        raise ImportError(
            "export_for_serving writes TF Serving warmup requests with the "
            "tensorflow-serving-api protos; install them with "
            "`pip install keras_gates[serving]` (or `pip install --no-deps "
            f"tensorflow-serving-api` beside tensorflow-cpu). ({error})"
        ) from None

    requests = warmup_requests(plan)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in requests:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=name, signature_name=signature)
            )
            for key, value in inputs.items():
                request.inputs[key].CopyFrom(tensor_proto(np.asarray(value)))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())
    return len(requests)
