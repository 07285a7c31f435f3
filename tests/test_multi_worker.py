"""Multi-worker training with real worker processes on localhost, both recipes.

Every worker is `examples/multi_worker.py` in its own interpreter (tiny mode:
an 8-unit keras_gates.LSTM on the shipped surnames, 4 epochs of 4 global
batches of 32), with KERAS_BACKEND set before Keras is imported:

- jax: keras.distribution.initialize + DataParallel + model.fit, CPU
  collectives through gloo; checkpoints by keras.callbacks.BackupAndRestore.
- tensorflow: MultiWorkerMirroredStrategy + keras_gates.distributed.fit;
  checkpoints by tf.train.CheckpointManager.

The oracles are one-process runs of the same script on the same global
batches: on as many CPU devices as there are workers (the same arithmetic:
bit for bit) and on one device with plain `model.fit` (the sum of the two
halves' gradients vs one gradient of the whole batch: float rounding only,
measured <= 1e-7 after 16 steps, checked at 1e-5).
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
SCRIPT = EXAMPLES / "multi_worker.py"
BACKENDS = ["jax", "tensorflow"]
EPOCHS = 4
DROPOUT = "0.3"
TIMEOUT = 240
# Rounding between one device and two (see the module docstring).
ONE_DEVICE_ATOL = 1e-5


def free_ports(count: int) -> list[int]:
    """Ports the workers can listen on; skips the test where none can be opened."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("localhost", 0))
            sockets.append(s)
    except OSError as error:
        pytest.skip(f"this machine cannot open local ports for workers: {error}")
    finally:
        ports = [s.getsockname()[1] for s in sockets]
        for s in sockets:
            s.close()
    return ports


def environment(backend: str, workdir: pathlib.Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND=backend,
        KERAS_GATES_TINY="1",
        KERAS_GATES_DATA="offline",
        KERAS_GATES_WORKDIR=str(workdir),
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="-1",
        JAX_PLATFORMS="cpu",
    )
    return env


def start(backend, folder, name, *extra, workers=None, index=0):
    """One process of the example, output into `folder/name.log`."""
    command = [sys.executable, "-u", str(SCRIPT), "--backend", backend]
    command += ["--backup-dir", str(folder / "backup")]
    command += ["--epochs", str(EPOCHS), "--report", str(folder / f"{name}.npz")]
    if workers:
        command += ["--workers", workers, "--worker-index", str(index)]
    log = open(folder / f"{name}.log", "w")
    process = subprocess.Popen(
        [*command, *extra],
        cwd=EXAMPLES,
        env=environment(backend, folder),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return process


def finish(process, folder, name):
    try:
        code = process.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        code = "timeout"
    output = (folder / f"{name}.log").read_text()
    assert code == 0, f"{name} exited with {code}:\n{output[-4000:]}"
    return output


def two_workers(backend, folder, *extra, crash=None, alongside=()):
    """Run two workers to the end (or, with crash=(worker, epoch), until that
    worker has killed itself after that epoch and the other one is killed).

    `alongside`: one-process runs `(folder, extra, devices)` started with the
    workers (the machine waits less), finished before returning."""
    folder.mkdir(parents=True, exist_ok=True)
    references = [start_one_process(backend, *run) for run in alongside]
    workers = ",".join(f"localhost:{port}" for port in free_ports(2))
    processes = []
    for index in range(2):
        worker_extra = list(extra)
        if crash and crash[0] == index:
            worker_extra += ["--crash-after-epoch", str(crash[1])]
        name = f"worker{index}"
        processes.append(
            start(backend, folder, name, *worker_extra, workers=workers, index=index)
        )
    if crash is None:
        outputs = [finish(p, folder, f"worker{i}") for i, p in enumerate(processes)]
        for (reference_folder, _, devices), process in zip(alongside, references):
            finish(process, reference_folder, f"devices{devices}")
        return outputs
    victim, epoch = crash
    assert processes[victim].wait(TIMEOUT) == -signal.SIGKILL
    # The chief prints this line after the checkpoint is written; the other
    # worker is now stuck waiting for the dead one: kill it too.
    chief_log = folder / "worker0.log"
    deadline = time.monotonic() + TIMEOUT
    line = f"epoch {epoch}/{EPOCHS} "
    while not any(
        line in text and "checkpoint saved" in text
        for text in chief_log.read_text().splitlines()
    ):
        assert time.monotonic() < deadline, chief_log.read_text()[-4000:]
        time.sleep(0.1)
    survivor = processes[1 - victim]
    if survivor.poll() is None:
        survivor.send_signal(signal.SIGKILL)
    survivor.wait(TIMEOUT)
    return [(folder / f"worker{i}.log").read_text() for i in range(2)]


def start_one_process(backend, folder, extra, devices):
    folder.mkdir(parents=True, exist_ok=True)
    name = f"devices{devices}"
    return start(backend, folder, name, "--devices", str(devices), *extra)


def weights(path: pathlib.Path) -> list[np.ndarray]:
    with np.load(path) as report:
        count = sum(key.startswith("weight_") for key in report)
        return [report[f"weight_{i}"] for i in range(count)]


def losses(path: pathlib.Path) -> np.ndarray:
    with np.load(path) as report:
        return report["losses"]


def assert_bitwise_equal(first, second):
    a, b = weights(first), weights(second)
    assert len(a) == len(b) > 0
    for index, (x, y) in enumerate(zip(a, b)):
        np.testing.assert_array_equal(x, y, err_msg=f"weight {index}")


def largest_difference(first, second) -> float:
    return max(
        float(np.max(np.abs(x.astype("float64") - y)))
        for x, y in zip(weights(first), weights(second))
    )


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    if request.param == "jax":
        pytest.importorskip("jax", reason="the jax recipe needs jax (dev extra)")
    return request.param


@pytest.fixture(scope="module")
def dropout_run(backend, tmp_path_factory):
    """Two workers with dropout, uninterrupted: the run the others must match;
    alongside it, one process on one device and one on two."""
    folder = tmp_path_factory.mktemp(f"{backend}_dropout")
    alongside = [
        (folder / "one_device", ("--dropout", DROPOUT), 1),
        (folder / "two_devices", ("--dropout", DROPOUT), 2),
    ]
    outputs = two_workers(backend, folder, "--dropout", DROPOUT, alongside=alongside)
    return folder, outputs


def assert_workers_agree(folder, outputs):
    """The chief is worker 0; both workers end with the same weights and losses."""
    assert "chief: True" in outputs[0] and "chief: False" in outputs[1]
    worker0, worker1 = (folder / f"worker{i}.npz" for i in range(2))
    assert_bitwise_equal(worker0, worker1)
    np.testing.assert_array_equal(losses(worker0), losses(worker1))
    assert len(losses(worker0)) == EPOCHS


@pytest.mark.parametrize("recipe", ["tensorflow"])
def test_two_workers_train_to_the_weights_of_one_process(recipe, tmp_path):
    """Without dropout, one process on the same global batches: on two CPU
    devices (the same sums), and on one device with plain model.fit
    (rounding apart). (JAX's workers draw the one-device run's masks, so its
    dropout run, test_dropout_masks_are_those_of_one_process, proves both.)"""
    two, one = tmp_path / "two_devices", tmp_path / "one_device"
    outputs = two_workers(
        recipe, tmp_path / "workers", alongside=[(two, (), 2), (one, (), 1)]
    )
    assert_workers_agree(tmp_path / "workers", outputs)
    worker0 = tmp_path / "workers" / "worker0.npz"
    assert_bitwise_equal(worker0, two / "devices2.npz")
    one = one / "devices1.npz"
    assert largest_difference(worker0, one) < ONE_DEVICE_ATOL
    np.testing.assert_allclose(losses(worker0), losses(one), atol=ONE_DEVICE_ATOL)


def test_dropout_masks_are_those_of_one_process(backend, dropout_run):
    """(That a rerun draws the same masks, bit for bit, is proven by the killed
    worker's test: its resumed weights are the uninterrupted run's.)"""
    first, outputs = dropout_run
    assert_workers_agree(first, outputs)
    one = first / "one_device" / "devices1.npz"
    difference = largest_difference(first / "worker0.npz", one)
    if backend == "jax":
        # The SPMD program draws one mask for the global batch (jax's
        # partitionable threefry): the one-device run's mask, so the weights
        # of plain model.fit on one device (rounding apart).
        assert difference < ONE_DEVICE_ATOL
        np.testing.assert_allclose(
            losses(first / "worker0.npz"), losses(one), atol=ONE_DEVICE_ATOL
        )
    else:
        # Each replica draws the mask of its share from the same seed state:
        # not the one-device masks, but the masks of one process with two
        # replicas (MirroredStrategy), bit for bit.
        assert difference > 1e-3
    # Both recipes: one process on two devices, bit for bit.
    assert_bitwise_equal(first / "worker0.npz", first / "two_devices" / "devices2.npz")


def test_killed_worker_resumes_to_the_uninterrupted_weights(
    backend, dropout_run, tmp_path
):
    uninterrupted, _ = dropout_run
    # jax: the non-chief dies and must resume from the chief's files;
    # tensorflow: the chief itself dies.
    victim = 1 if backend == "jax" else 0
    logs = two_workers(backend, tmp_path, "--dropout", DROPOUT, crash=(victim, 2))
    assert "killing myself (SIGKILL) after epoch 2" in logs[victim]
    assert not (tmp_path / "worker0.npz").exists()

    restarted = two_workers(backend, tmp_path, "--dropout", DROPOUT)
    for index, output in enumerate(restarted):
        assert "resuming from the checkpoint of epoch 2" in output, output[-3000:]
        assert f"epoch 1/{EPOCHS} " not in output  # epochs 1-2 were not rerun
        assert_bitwise_equal(
            uninterrupted / f"worker{index}.npz", tmp_path / f"worker{index}.npz"
        )
    np.testing.assert_array_equal(
        losses(tmp_path / "worker0.npz"), losses(uninterrupted / "worker0.npz")[2:]
    )
