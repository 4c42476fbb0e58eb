"""A model folder is only resumed with the flags that started it."""

import pytest

from e2e_tf.training.trainer import check_same_run

STARTED_WITH = "--backbone=compact\n--epochs=6\n--image_size=64\n--model_dir=runs/demo\n--spp\n"


def test_a_new_folder_accepts_any_flags(tmp_path):
    check_same_run(tmp_path / "flags.txt", STARTED_WITH)


def test_more_epochs_and_another_location_may_resume(tmp_path):
    (tmp_path / "flags.txt").write_text(STARTED_WITH)
    check_same_run(tmp_path / "flags.txt", STARTED_WITH.replace("--epochs=6", "--epochs=9").replace("runs/demo", "moved"))


def test_changed_preprocessing_is_refused_naming_the_flags(tmp_path):
    (tmp_path / "flags.txt").write_text(STARTED_WITH)
    changed = STARTED_WITH.replace("--image_size=64", "--image_size=32").replace("--spp", "--nospp")
    with pytest.raises(ValueError, match=r"--image_size: 64 -> 32; --spp: true -> false\)"):
        check_same_run(tmp_path / "flags.txt", changed)
