"""Scale-out: two `--strategy=multi_worker` processes on localhost train in lockstep."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import tensorflow as tf

REPO = pathlib.Path(__file__).resolve().parent.parent


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_finish_with_identical_weights(tmp_path_factory, tmp_path):
    from e2e_tf import datasets
    from e2e_tf.trained_model import load_trained_model

    tfds_dir = tmp_path_factory.getbasetemp() / "tfds"  # shared with test_train in one session
    datasets.load("visual_concepts", "train", data_dir=tfds_dir)  # prepared once, before the workers start
    model_dir = tmp_path / "run"
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    workers = []
    for index in range(2):
        env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        }
        command = [
            sys.executable, "-m", "e2e_tf.train", "--flagfile=configs/smoke.cfg", "--strategy=multi_worker",
            f"--data_dir={tfds_dir}", f"--model_dir={model_dir}", "--epochs=1", "--steps_per_epoch=3",
        ]
        log = open(tmp_path / f"worker_{index}.log", "w")  # files, not pipes: neither worker can block on output
        workers.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    try:
        for worker in workers:
            worker.wait(timeout=420)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for index, worker in enumerate(workers):
        output = (tmp_path / f"worker_{index}.log").read_text()
        assert worker.returncode == 0, f"worker {index}:\n{output[-4000:]}"

    chief, _ = load_trained_model(model_dir)
    other, _ = load_trained_model(model_dir / "workers" / "worker_1")
    # BatchNorm moving statistics included: the loop averages them over the workers every epoch.
    for a, b in zip(chief.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)
    for checkpoints in (model_dir / "checkpoints", model_dir / "workers" / "worker_1" / "checkpoints"):
        reader = tf.train.load_checkpoint(str(checkpoints))
        assert reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 3  # both took the 3 steps
    assert (model_dir / "test_metrics.json").is_file()  # the chief evaluates
    assert not (model_dir / "workers" / "worker_1" / "test_metrics.json").exists()
