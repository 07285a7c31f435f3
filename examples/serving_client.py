"""
Title: Talking to TF Serving: REST and gRPC requests for a keras_gates model
Description: Build the row and columnar REST bodies and the gRPC PredictRequest for
an exported keras_gates model, stream it step by step with the `step` signature,
and read the answers. Without a server (the default) it runs dry: the very same
requests go through TF Serving's own C++ loader instead.
"""

# %% [markdown]
# ## Introduction
#
# `keras-gates export MODEL.keras --name adding_lstm --base saved_models` writes
# `saved_models/adding_lstm/1/` with these signatures (all with dynamic batch and
# time):
#
# - `serving_default`: `inputs` (batch, time, features) -> `outputs`;
# - `step`: one step with the state passed in and out (`inputs` (batch,
#   features), `h`, `s` -> `outputs`, `h`, `s`; a GRU has only `s`);
# - `gates`: the gate traces, (batch, time, units) each;
# - token models also have `with_lengths` (`tokens`, `lengths`).
#
# Serve the base directory with the docker image (see the README):
#
#     docker run -p 8500:8500 -p 8501:8501 \
#       -v "$PWD/saved_models:/models" tensorflow/serving \
#       --model_config_file=/models/models.config
#
# then run this script with `--server localhost`. Without `--server` it runs
# dry: it builds every request, prints it, and runs it through TF Serving's
# C++ loader (`keras_gates.serving.verify.run_signatures`) if the export exists here.
# If there is no export yet it makes a small untrained one in a temporary folder.

# %% [markdown]
# ## Setup

# %%
import argparse
import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
parser.add_argument("--server", default=None, help="TF Serving host (default: dry run)")
parser.add_argument("--rest-port", type=int, default=8501)
parser.add_argument("--grpc-port", type=int, default=8500)
parser.add_argument("--name", default="adding_lstm", help="the model's name")
parser.add_argument("--base", default="saved_models", help="the model base directory")
args, _ = parser.parse_known_args()  # tolerate notebook kernels' own arguments
DRY = args.server is None

# The adding problem's input: (batch, time, 2) = (value, marker) pairs.
rng = np.random.default_rng(0)
x = np.stack([rng.uniform(size=(2, 6)), np.zeros((2, 6))], axis=-1).astype("float32")
x[:, [1, 4], 1] = 1.0  # mark two values per row; the answer is their sum

# %% [markdown]
# ## REST: row ("instances") and columnar ("inputs") bodies
#
# Row format: one entry per example; a signature with one input takes the raw
# values, one with several takes a dict per row. Columnar format: one tensor per
# input name. The answers come back as `{"predictions": [...]}` (row) or
# `{"outputs": ...}` (columnar).

# %%
row_body = {"signature_name": "serving_default", "instances": x.tolist()}
columnar_body = {"signature_name": "serving_default", "inputs": {"inputs": x.tolist()}}
host = args.server or "localhost"
url = f"http://{host}:{args.rest_port}/v1/models/{args.name}:predict"
print("POST", url)
print(json.dumps(row_body)[:160], "...")
print(json.dumps(columnar_body)[:160], "...")


def post(body: dict) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


# %% [markdown]
# ## gRPC: a PredictRequest built with the tensorflow-serving-api protos

# %%
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

grpc_request = predict_pb2.PredictRequest()
grpc_request.model_spec.name = args.name
grpc_request.model_spec.signature_name = "serving_default"
grpc_request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(x))
print(
    f"gRPC PredictRequest: {grpc_request.ByteSize()} bytes, inputs "
    f"{list(grpc_request.inputs)}"
)


def predict_grpc(request):
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.insecure_channel(f"{args.server}:{args.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(request, timeout=30.0)
    return {key: tf.make_ndarray(value) for key, value in response.outputs.items()}


# %% [markdown]
# ## Streaming with the `step` signature
#
# TF Serving keeps no state between requests, so the state travels with them:
# start from zeros, send one step, feed the returned `h` and `s` back. After the
# last step `outputs` equals serving_default's answer for the whole sequence.


# %%
def step_requests(units: int, states=("h", "s")):
    """The step bodies for x, with the state placeholders to fill in."""
    zero = np.zeros((x.shape[0], units), "float32")
    return [
        {"inputs": x[:, t], **{name: zero for name in states}}
        for t in range(x.shape[1])
    ]


# %% [markdown]
# ## Send (or run dry through the C++ loader)

# %%
if not DRY:
    print("REST row     ->", post(row_body))
    print("REST columnar->", post(columnar_body))
    print("gRPC         ->", predict_grpc(grpc_request))
    metadata_url = url.replace(":predict", "/metadata")
    with urllib.request.urlopen(metadata_url, timeout=30) as response:
        signatures = json.load(response)["metadata"]["signature_def"]["signature_def"]
    step_inputs = signatures["step"]["inputs"]
    units = int(
        step_inputs["h" if "h" in step_inputs else "s"]["tensor_shape"]["dim"][1][
            "size"
        ]
    )
    states = [name for name in ("h", "s") if name in step_inputs]
    feeds = step_requests(units, states)[0]
    for t in range(x.shape[1]):
        feeds["inputs"] = x[:, t]
        answer = post(
            {
                "signature_name": "step",
                "inputs": {k: np.asarray(v).tolist() for k, v in feeds.items()},
            }
        )["outputs"]
        feeds.update({name: answer[name] for name in states})
    print("step by step ->", answer["outputs"])
    sys.exit(0)

from keras_gates.serving.verify import FromRequest, run_signatures

model_dir = Path(args.base) / args.name
versions = sorted(int(p.name) for p in model_dir.glob("*") if p.name.isdigit())
if versions:
    export = model_dir / str(versions[-1])
else:
    import keras

    import keras_gates
    from keras_gates.serving import export_for_serving

    print(f"No export at {model_dir}: exporting a small untrained LSTM to try.")
    model = keras.Sequential(
        [keras.Input((None, 2)), keras_gates.LSTM(8), keras.layers.Dense(1)]
    )
    export = export_for_serving(model, tempfile.mkdtemp(), args.name, verify=False)
metadata = json.loads((export / "assets.extra" / "keras_gates.json").read_text())
states = metadata["states"]
requests = [("serving_default", {"inputs": x})]
for t, feeds in enumerate(step_requests(metadata["units"], states)):
    if t:  # the state comes from the previous step's answer
        feeds.update({name: FromRequest(len(requests) - 1, name) for name in states})
    requests.append(("step", feeds))
answers = run_signatures(export, requests)
print(f"dry run through TF Serving's C++ loader on {export}:")
print("serving_default ->", answers[0]["outputs"].ravel())
print("step by step    ->", answers[-1]["outputs"].ravel())
np.testing.assert_allclose(answers[-1]["outputs"], answers[0]["outputs"], atol=1e-5)
