"""A model folder is only resumed with the flags that started it."""

import pathlib

import pytest
import tensorflow as tf

from e2e_tf.training.trainer import check_same_run

STARTED_WITH = "--backbone=compact\n--epochs=6\n--image_size=64\n--model_dir=runs/demo\n--spp\n"
CHANGED = STARTED_WITH.replace("--image_size=64", "--image_size=32").replace("--spp", "--nospp")


def _save_checkpoint(directory: pathlib.Path) -> None:
    """What a run that completed an epoch leaves in `directory` (a resumable checkpoint)."""
    tf.train.CheckpointManager(tf.train.Checkpoint(epoch=tf.Variable(1)), str(directory), 1).save()


@pytest.fixture
def trained(tmp_path):
    """A model folder whose run started training: its flags and a checkpoint."""
    (tmp_path / "flags.txt").write_text(STARTED_WITH)
    _save_checkpoint(tmp_path / "checkpoints")
    return tmp_path


def test_a_new_folder_accepts_any_flags(tmp_path):
    check_same_run(tmp_path / "flags.txt", STARTED_WITH)


def test_a_folder_whose_run_never_trained_accepts_changed_flags(tmp_path):
    # A start that failed (a bad flag, missing data) before the first checkpoint locks nothing.
    (tmp_path / "flags.txt").write_text(STARTED_WITH)
    (tmp_path / "checkpoints").mkdir()
    check_same_run(tmp_path / "flags.txt", CHANGED)


def test_more_epochs_and_another_location_may_resume_with_a_note_on_the_schedule(trained, capsys):
    check_same_run(trained / "flags.txt", STARTED_WITH.replace("--epochs=6", "--epochs=9").replace("runs/demo", "moved"))
    note = capsys.readouterr().out
    assert "--epochs: 6 -> 9" in note and "learning-rate schedule" in note
    check_same_run(trained / "flags.txt", STARTED_WITH.replace("runs/demo", "moved"))
    assert capsys.readouterr().out == ""  # the same length: nothing to say


def test_changed_preprocessing_is_refused_naming_the_flags(trained):
    with pytest.raises(ValueError, match=r"--image_size: 64 -> 32; --spp: true -> false\)"):
        check_same_run(trained / "flags.txt", CHANGED)


def test_a_worker_is_checked_against_the_checkpoint_it_restores(tmp_path):
    # Non-chief workers keep flags.txt in their own folder but resume from the chief's checkpoints.
    worker_dir = tmp_path / "workers" / "worker_1"
    worker_dir.mkdir(parents=True)
    (worker_dir / "flags.txt").write_text(STARTED_WITH)
    _save_checkpoint(tmp_path / "checkpoints")
    with pytest.raises(ValueError, match="--image_size: 64 -> 32"):
        check_same_run(worker_dir / "flags.txt", CHANGED, checkpoint_dir=tmp_path / "checkpoints")
