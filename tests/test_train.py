"""End-to-end tests of `python -m e2e_tf.train`: smoke runs, the model directory, resume after a kill."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from e2e_tf import data_location

REPO = pathlib.Path(__file__).resolve().parent.parent
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture
def tfds_dir(tmp_path_factory):
    """One TFDS data dir per test session (shared with test_multi_worker), so the embedded dataset is built once."""
    return tmp_path_factory.getbasetemp() / "tfds"


def _command(tfds_dir, model_dir, *args):
    return [
        sys.executable, "-m", "e2e_tf.train", "--flagfile=configs/smoke.cfg",
        f"--data_dir={tfds_dir}", f"--model_dir={model_dir}", *args,
    ]


def _train(tfds_dir, model_dir, *args, timeout=600):
    result = subprocess.run(
        _command(tfds_dir, model_dir, *args), capture_output=True, text=True, cwd=REPO, env=ENV, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _check_model_dir(model_dir, num_test_images, dataset):
    for name in ("model.keras", "model_info.json", "flags.txt", "test_metrics.json", "per_label.csv", "per_label.png"):
        assert (model_dir / name).is_file(), name
    assert (model_dir / "checkpoints" / "checkpoint").is_file()
    assert list((model_dir / "logs").rglob("*tfevents*"))
    result = json.loads((model_dir / "test_metrics.json").read_text())
    assert result["num_images"] == num_test_images and result["dataset"] == dataset
    assert result["split"] == "test" and result["k"] == 5 and result["selected_by"] == "validation f1"
    for values in (result, result["constant_predictor"]):
        assert 0 <= values["precision"] <= 1 and 0 <= values["recall"] <= 1 and 0 <= values["f1"] <= 1
        assert 0 <= values["n_plus"] <= result["num_labels"]
    flags_text = (model_dir / "flags.txt").read_text()
    assert f"--dataset={dataset}" in flags_text and f"--model_dir={model_dir}" in flags_text
    return result


def _wait_for_checkpoint(process: subprocess.Popen, model_dir, epoch: int, timeout: float = 300) -> None:
    """Waits until the training in `process` has checkpointed `epoch`, while it is still running."""
    deadline = time.time() + timeout
    while not (model_dir / "checkpoints" / f"ckpt-{epoch}.index").exists():
        assert process.poll() is None, "training ended before it could be interrupted"
        assert time.time() < deadline, f"no checkpoint within {timeout} s"
        time.sleep(0.2)


def test_killed_run_resumes_and_writes_the_model_directory(tfds_dir, tmp_path):
    model_dir = tmp_path / "run"
    args = ("--epochs=40", "--steps_per_epoch=2", "--max_test_examples=16")
    process = subprocess.Popen(_command(tfds_dir, model_dir, *args), cwd=REPO, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_checkpoint(process, model_dir, 2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    # The epoch the index file names (it is replaced only once a checkpoint is complete).
    state = (model_dir / "checkpoints" / "checkpoint").read_text()
    completed = int(re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', state, re.M).group(1))
    assert 2 <= completed < 40

    # The same command with a closer end: it picks up after the last completed epoch.
    stdout = _train(tfds_dir, model_dir, f"--epochs={completed + 2}", *args[1:])
    assert f"resuming after epoch {completed}" in stdout
    epochs_run = [int(e) for e in re.findall(r"Epoch (\d+)/", stdout)]
    assert epochs_run == [completed + 1, completed + 2]  # nothing done twice, nothing skipped
    result = _check_model_dir(model_dir, 16, "visual_concepts")
    assert f"Test (16 images, {result['num_labels']} labels, top-5" in stdout and "constant predictor" in stdout

    # The JSON holds what the saved model really scores on those test images.
    from e2e_tf import datasets, metrics
    from e2e_tf.input_pipeline import make_dataset
    from e2e_tf.trained_model import load_trained_model

    model, info = load_trained_model(model_dir)
    assert info.dataset == "visual_concepts" and info.image_size == (48, 48) and info.backbone == "compact"
    examples, ds_info = datasets.load("visual_concepts", "test", data_dir=tfds_dir)
    assert list(info.vocabulary) == ds_info.features["labels"].feature.names
    data = make_dataset(examples.take(16), num_labels=len(info.vocabulary), image_size=info.image_size,
                        resize_policy=info.resize_policy, batch_size=16, training=False)
    y_true = np.concatenate([y.numpy() for _, y in data])
    scores = np.concatenate([model.predict(x, verbose=0) for x, _ in data])
    expected = metrics.annotation_metrics(y_true, scores)
    for name in ("precision", "recall", "f1", "n_plus", "map"):
        assert result[name] == pytest.approx(expected[name], abs=1e-6), name


@pytest.mark.real_data
def test_real_corel5k_smoke_run_writes_test_metrics(tmp_path):
    manual_dir = data_location.shared_data_dir() / "corel5k" / "Lihit__SML" / "DataSet"
    if not manual_dir.is_dir():
        pytest.skip(f"real Corel5k not found at {manual_dir} (set $E2E_TF_DATA_DIR)")
    model_dir = tmp_path / "run"
    stdout = _train(tmp_path / "tfds", model_dir, "--dataset=corel5k", f"--manual_dir={manual_dir}",
                    "--max_train_examples=64", "--max_test_examples=32", "--epochs=1")
    result = _check_model_dir(model_dir, 32, "corel5k")
    assert result["num_labels"] == 260
    assert "Test (32 images, 260 labels, top-5" in stdout


def test_a_failed_start_locks_nothing_and_ctrl_c_says_how_to_resume(tfds_dir, tmp_path):
    model_dir = tmp_path / "run"
    # --top_k beyond the 33 labels of visual_concepts fails once the vocabulary is known, before any step.
    failed = subprocess.run(_command(tfds_dir, model_dir, "--top_k=50"), capture_output=True, text=True,
                            cwd=REPO, env=ENV, timeout=300)
    assert failed.returncode == 1 and "Epoch" not in failed.stdout
    assert failed.stderr.strip().splitlines()[-1] == (
        "e2e_tf.train: error: --top_k=50 exceeds the 33 labels of visual_concepts; give --top_k <= 33."
    )
    assert not (model_dir / "flags.txt").exists() and not (model_dir / "model_info.json").exists()

    # The corrected command trains in the same folder; Ctrl-C then ends it with one line.
    # A shell starts background jobs with SIGINT ignored, and a child inherits that (Python then never
    # raises KeyboardInterrupt): give the program the SIGINT of a terminal, whoever runs the tests.
    process = subprocess.Popen(_command(tfds_dir, model_dir, "--epochs=1000", "--steps_per_epoch=1"), cwd=REPO,
                               env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_for_checkpoint(process, model_dir, 1)
        # Python sees a SIGINT only between bytecodes of the main thread, and one that lands in a
        # finaliser is dropped ("Exception ignored"): press Ctrl-C again until the program ends.
        for _ in range(12):
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                pass
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "e2e_tf.train: interrupted. Run the same command again to resume from the checkpoint of the last "
        f"completed epoch (if any) in --model_dir={model_dir}."
    )


def test_a_model_dir_that_is_a_file_is_named_in_one_line(tmp_path):
    not_a_folder = tmp_path / "run"
    not_a_folder.write_text("")
    result = subprocess.run(_command(tmp_path / "tfds", not_a_folder), capture_output=True, text=True,
                            cwd=REPO, env=ENV, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"e2e_tf.train: error: --model_dir={not_a_folder} is a file")
