"""
Title: Training on several machines with keras_gates
Description: Train the surname classifier with keras_gates.LSTM on two worker
processes, either with Keras's own distribution API and model.fit (JAX backend) or
with TensorFlow's MultiWorkerMirroredStrategy and keras_gates.distributed.fit;
checkpoint, kill a worker, resume.
"""

# %% [markdown]
# ## Introduction
#
# Data parallelism: every worker holds the whole model, takes its share of each
# global batch, and the gradients are summed over the workers before every
# update, so all workers keep identical weights. Two recipes work with Keras 3
# and keras_gates layers:
#
# - **JAX backend**: `keras.distribution.initialize(...)` joins the processes,
#   `keras.distribution.DataParallel` shards each batch over every device of
#   every process, and plain `model.fit` trains. On CPUs the collectives go
#   through gloo (`jax_cpu_collectives_implementation`).
# - **TensorFlow backend**: `tf.distribute.MultiWorkerMirroredStrategy`, but not
#   `model.fit`: Keras 3's fit fails under that strategy before the first step
#   (keras-team/keras#20585). `keras_gates.distributed.fit` runs the model's own
#   `train_step` under `strategy.run`, with Keras callbacks and
#   `tf.train.CheckpointManager` checkpoints.
#
# Launch this script once per worker, on each machine (worker 0 is the chief):
#
#     python multi_worker.py --backend jax --workers h0:1234,h1:1234 --worker-index 0
#     python multi_worker.py --backend jax --workers h0:1234,h1:1234 --worker-index 1
#
# or try both workers on this machine with `--local-workers 2`. Without
# `--workers` it trains in one process on the same global batches (`--devices N`
# splits them over N local CPU devices), for comparison. Data: the surname
# sample shipped in `examples/data/` (names-dataset, 16 countries).
# `KERAS_GATES_TINY=1` trains a small model for a few steps.

# %% [markdown]
# ## Setup
#
# The backend, and for JAX the number of CPU devices, must be chosen before
# Keras (or JAX) is imported.

# %%
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

parser = argparse.ArgumentParser(description="keras_gates on several workers")
parser.add_argument("--backend", choices=["jax", "tensorflow"], default="jax")
parser.add_argument("--workers", help="host:port of every worker, comma separated")
parser.add_argument("--worker-index", type=int, default=0, help="this worker's place")
parser.add_argument("--local-workers", type=int, help="launch N workers here")
parser.add_argument("--devices", type=int, default=1, help="one process: CPU devices")
parser.add_argument("--epochs", type=int)
parser.add_argument("--dropout", type=float, default=0.0)
parser.add_argument("--backup-dir", help="checkpoint folder every worker can read")
parser.add_argument(
    "--crash-after-epoch",
    type=int,
    help="simulate a dead machine: SIGKILL this worker after that epoch",
)
parser.add_argument(
    "--report", help="write the final weights and losses here (.npz; {worker}: index)"
)
args = parser.parse_args()

import corpora  # noqa: E402  (after the arguments: --help needs no Keras)

TINY = corpora.TINY
EPOCHS = args.epochs or (4 if TINY else 5)
GLOBAL_BATCH = 32 if TINY else 64  # the batch of one update, over all workers
UNITS = 8 if TINY else 64
MAX_CHARS = 12
SEED = 42
BACKUP_DIR = args.backup_dir or str(corpora.OUTPUTS / "multi_worker_backup")
WORKERS = args.workers.split(",") if args.workers else None
if WORKERS and not 0 <= args.worker_index < len(WORKERS):
    parser.error(
        f"--worker-index must be in [0, {len(WORKERS)}); got {args.worker_index}"
    )

# %% [markdown]
# ## Try it on one machine: launch the workers here
#
# Every worker is this script with `--workers` and its own `--worker-index`, on
# free local ports; their output is shown line by line with the worker's name.


# %%
def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def launch_local_workers(count: int) -> int:
    workers = ",".join(f"localhost:{port}" for port in free_ports(count))
    forwarded = [a for a in sys.argv[1:] if not a.startswith("--local-workers")]
    if "--local-workers" in sys.argv:  # "--local-workers N": drop N as well
        position = sys.argv.index("--local-workers")
        forwarded = sys.argv[1:position] + sys.argv[position + 2 :]
    processes = [
        subprocess.Popen(
            [sys.executable, "-u", __file__, *forwarded]
            + ["--workers", workers, "--worker-index", str(index)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(count)
    ]

    def forward(index, stream):
        for line in stream:
            if not line.startswith(("W0000", "I0000", "E0000", "WARNING: All log")):
                print(f"[worker {index}] {line}", end="", flush=True)

    threads = [
        threading.Thread(target=forward, args=(index, p.stdout))
        for index, p in enumerate(processes)
    ]
    for thread in threads:
        thread.start()
    codes = [p.wait() for p in processes]
    for thread in threads:
        thread.join()
    print(f"workers exited with {codes}")
    return max(codes, key=abs)


if args.local_workers:
    sys.exit(launch_local_workers(args.local_workers))

# %% [markdown]
# ## Join the workers
#
# JAX: `keras.distribution.initialize` connects every process to the first
# address (the coordinator); `DataParallel` over all devices of all processes
# replicates the weights and splits each batch. With `auto_shard_dataset=False`
# each process feeds its own share of the batch; Keras puts the shares together
# in process order. TensorFlow: `TF_CONFIG` names the cluster and this worker;
# the strategy must exist before any other TensorFlow op runs.

# %%
os.environ["KERAS_BACKEND"] = args.backend
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if args.backend == "jax" and not WORKERS and args.devices > 1:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={args.devices}"
    )
if args.backend == "tensorflow" and WORKERS:
    os.environ["TF_CONFIG"] = json.dumps(
        {
            "cluster": {"worker": WORKERS},
            "task": {"type": "worker", "index": args.worker_index},
        }
    )

WORKER = args.worker_index if WORKERS else 0
NUM_WORKERS = len(WORKERS) if WORKERS else 1
CHIEF = WORKER == 0
NAME = (
    f"worker {WORKER}/{NUM_WORKERS}"
    if WORKERS
    else f"one process, {args.devices} device(s)"
)
started = time.time()

if args.backend == "jax" and WORKERS and not CHIEF:
    # Only the chief writes BACKUP_DIR. Every worker takes part in each save
    # (under keras.distribution a save is a collective step), so the others
    # save into a private copy, taken before any worker can train.
    own_backup = tempfile.mkdtemp(prefix=f"multi_worker_{WORKER}_")
    if os.path.isdir(BACKUP_DIR):
        shutil.copytree(BACKUP_DIR, own_backup, dirs_exist_ok=True)
else:
    own_backup = BACKUP_DIR
# Where a rerun starts: keras.callbacks.BackupAndRestore (JAX, and TensorFlow
# on one device) notes the epoch in its metadata file, tf.train checkpoints in
# their names.
resuming_from = None
metadata = os.path.join(own_backup, "training_metadata.json")
if os.path.exists(metadata):
    with open(metadata) as file:
        resuming_from = json.load(file)["epoch"]

import keras  # noqa: E402
import numpy as np  # noqa: E402

if args.backend == "jax":
    import jax

    if WORKERS:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        keras.distribution.initialize(
            job_addresses=",".join(WORKERS),
            num_processes=NUM_WORKERS,
            process_id=WORKER,
        )
    if WORKERS or args.devices > 1:
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(
                devices=keras.distribution.list_devices(),
                auto_shard_dataset=False,
            )
        )
    strategy = None
else:
    import tensorflow as tf

    if WORKERS:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif args.devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.devices
        )
        strategy = tf.distribute.MirroredStrategy(
            [f"/cpu:{index}" for index in range(args.devices)]
        )
    else:
        strategy = None
    latest = tf.train.latest_checkpoint(BACKUP_DIR)
    if latest is not None:
        resuming_from = int(latest.rsplit("-", 1)[1])

import keras_gates  # noqa: E402

if args.backend == "tensorflow":
    import keras_gates.distributed  # tf.distribute: TensorFlow only

print(f"{NAME}: backend {keras.backend.backend()}, chief: {CHIEF}", flush=True)
if resuming_from is not None:
    print(f"{NAME}: resuming from the checkpoint of epoch {resuming_from}", flush=True)

# %% [markdown]
# ## The data: global batches, and this worker's share
#
# Every worker loads the same names in the same order. Batch k of the training
# data is rows `[k * GLOBAL_BATCH, (k + 1) * GLOBAL_BATCH)`; with the JAX
# recipe worker i feeds the i-th slice of it, so the batch that all workers
# train on together is exactly batch k of a one-process run.

# %%
names, countries, source = corpora.surnames(per_country=300 if TINY else 1500)
COUNTRIES = sorted(set(countries))
labels = np.array([COUNTRIES.index(c) for c in countries], "int32")
order = np.random.default_rng(0).permutation(len(names))
cut = int(0.85 * len(names))
train_index, test_index = order[:cut], order[cut:]
CHARS = sorted(set("".join(names).lower()))


def encode(batch):
    ids = np.zeros((len(batch), MAX_CHARS), "int32")  # 0 pads
    for row, name in enumerate(batch):
        codes = [CHARS.index(c) + 1 for c in name.lower()[:MAX_CHARS]]
        ids[row, : len(codes)] = codes
    return ids


steps = 4 if TINY else cut // GLOBAL_BATCH
x_train = encode(names[train_index[: steps * GLOBAL_BATCH]])
y_train = labels[train_index[: steps * GLOBAL_BATCH]]
x_test, y_test = encode(names[test_index]), labels[test_index]
if GLOBAL_BATCH % (NUM_WORKERS * max(args.devices, 1)):
    raise SystemExit(f"the global batch {GLOBAL_BATCH} must split evenly")
local_batch = GLOBAL_BATCH // NUM_WORKERS


def share(array, worker=WORKER):
    """This worker's rows of every global batch, in order."""
    batches = array.reshape(steps, GLOBAL_BATCH, *array.shape[1:])
    mine = batches[:, worker * local_batch : (worker + 1) * local_batch]
    return mine.reshape(steps * local_batch, *array.shape[1:])


print(
    f"{NAME}: {source}, {steps} global batches of {GLOBAL_BATCH} per epoch "
    f"({local_batch} rows each from this process), {len(x_test)} test names",
    flush=True,
)

# %% [markdown]
# ## The model
#
# Built with the same seed on every worker, so every worker starts from the
# same weights; with TensorFlow it is built in the strategy's scope.


# %%
def make_model():
    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [
            keras.Input(shape=(MAX_CHARS,), dtype="int32"),
            keras.layers.Embedding(len(CHARS) + 1, 16, mask_zero=True),
            keras_gates.LSTM(UNITS, dropout=args.dropout, name="lstm"),
            keras.layers.Dense(len(COUNTRIES), activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


if strategy is not None:
    with strategy.scope():
        model = make_model()
else:
    model = make_model()


def report_epoch(epoch, logs):
    saved = ", checkpoint saved" if CHIEF else ""
    print(
        f"{NAME}: epoch {epoch + 1}/{EPOCHS} loss {logs['loss']:.6f} "
        f"accuracy {logs['accuracy']:.4f}{saved}",
        flush=True,
    )


def crash(epoch, logs):
    if epoch + 1 == args.crash_after_epoch:
        print(f"{NAME}: killing myself (SIGKILL) after epoch {epoch + 1}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


# Last in the list: the epoch's checkpoint is written before a crash.
printer = keras.callbacks.LambdaCallback(on_epoch_end=report_epoch)
crasher = keras.callbacks.LambdaCallback(on_epoch_end=crash)

# %% [markdown]
# ## Recipe 1, JAX: `model.fit` under `keras.distribution.DataParallel`
#
# `keras.callbacks.BackupAndRestore` saves after each epoch and, at the start,
# restores the last backup and skips the epochs it holds (keras_gates layers
# save their dropout seed state with their weights, so the resumed run draws
# the same masks). The printer comes after it, so "checkpoint saved" is true
# when printed.

# %%
if args.backend == "jax":
    x_mine, y_mine = (share(x_train), share(y_train)) if WORKERS else (x_train, y_train)
    history = model.fit(
        x_mine,
        y_mine,
        batch_size=local_batch,
        epochs=EPOCHS,
        shuffle=False,  # the same batches on a rerun: exact resumption
        verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(own_backup), printer, crasher],
    )

# %% [markdown]
# ## Recipe 2, TensorFlow: MultiWorkerMirroredStrategy, keras_gates.distributed.fit
#
# The dataset holds the global batches; tf.distribute gives each worker its
# share (`AutoShardPolicy.DATA`: every worker reads the data, each keeps its
# part of every batch). Checkpoints: `tf.train.CheckpointManager`, written by
# the chief, read by all. In one process on one device this is plain
# `model.fit`.

# %%
if args.backend == "tensorflow":
    dataset = tf.data.Dataset.from_tensor_slices((x_train, y_train))
    dataset = dataset.batch(GLOBAL_BATCH, drop_remainder=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    dataset = dataset.with_options(options)
    if strategy is not None:
        history = keras_gates.distributed.fit(
            model,
            dataset,
            EPOCHS,
            strategy=strategy,
            checkpoint_dir=BACKUP_DIR,
            callbacks=[printer, crasher],
            verbose=0,
        )
    else:
        history = model.fit(
            dataset,
            epochs=EPOCHS,
            shuffle=False,  # the batches are made above
            verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(BACKUP_DIR), printer, crasher],
        )

# %% [markdown]
# ## Evaluate, and what this worker did
#
# Every worker holds the same weights: each copies them into a model outside
# the distribution and scores the held-out names on its own.

# %%
weights = model.get_weights()
keras.distribution.set_distribution(None)
keras.utils.set_random_seed(SEED)
scorer = keras.Sequential(
    [
        keras.Input(shape=(MAX_CHARS,), dtype="int32"),
        keras.layers.Embedding(len(CHARS) + 1, 16, mask_zero=True),
        keras_gates.LSTM(UNITS, name="lstm"),
        keras.layers.Dense(len(COUNTRIES), activation="softmax"),
    ]
)
scorer.set_weights(weights)
predicted = scorer.predict(x_test, verbose=0).argmax(axis=-1)
accuracy = float(np.mean(predicted == y_test))
losses = history.history.get("loss", [])
print(
    f"{NAME}: test accuracy {accuracy:.3f} (chance {1 / len(COUNTRIES):.3f}); "
    f"{len(losses)} epochs in {time.time() - started:.1f} s",
    flush=True,
)
if args.report:
    np.savez(
        args.report.format(worker=WORKER),
        losses=np.array(losses),
        **{f"weight_{i}": w for i, w in enumerate(weights)},
    )
if own_backup != BACKUP_DIR:
    shutil.rmtree(own_backup, ignore_errors=True)
