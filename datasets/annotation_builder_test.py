"""Errors and options of the annotation builders, on copies of their dummy data."""

import pathlib
import shutil

import pytest
import tensorflow_datasets as tfds

from e2e_tf.datasets.corel5k import corel5k_dataset_builder

DUMMY = pathlib.Path(str(corel5k_dataset_builder.Builder.pkg_dir_path)) / "dummy_data"


def _prepare(tmp_path, manual_dir):
    builder = tfds.builder("corel5k", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


@pytest.fixture
def manual_dir(tmp_path):
    return pathlib.Path(shutil.copytree(DUMMY, tmp_path / "manual"))


def test_info_needs_no_manual_dir_and_has_the_shipped_vocabulary(tmp_path):
    names = tfds.builder("corel5k", data_dir=str(tmp_path)).info.features["labels"].feature.names
    assert len(names) == 260 and names[:3] == ["city", "mountain", "sky"]


def test_manual_dir_may_hold_the_dataset_as_a_subfolder(tmp_path, manual_dir):
    nested = tmp_path / "all_manual"
    nested.mkdir()
    manual_dir.rename(nested / "corel5k")
    builder = _prepare(tmp_path, nested)
    assert builder.info.splits["train"].num_examples == 3
    examples = {e["file_name"].decode(): e for e in tfds.as_numpy(builder.as_dataset(split="train"))}
    assert examples["20000/20005"]["labels"].size == 0  # kept although unlabelled
    assert examples["1000/1003"]["image"].shape == (12, 8, 3)


def test_missing_image_fails_naming_entry_and_folder(tmp_path, manual_dir):
    (manual_dir / "1000/1003.jpeg").unlink()
    with pytest.raises(FileNotFoundError, match=rf"'1000/1003' under {manual_dir}"):
        _prepare(tmp_path, manual_dir)


def test_corrupt_image_fails_naming_the_file(tmp_path, manual_dir):
    path = manual_dir / "384000/384096.jpeg"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"Cannot decode image .*384000/384096.jpeg"):
        _prepare(tmp_path, manual_dir)


def test_vocabulary_of_another_label_set_is_refused(tmp_path, manual_dir):
    words = (manual_dir / "corel5k_words.txt").read_text().split()
    (manual_dir / "corel5k_words.txt").write_text("\n".join(words[1:] + words[:1]) + "\n")
    with pytest.raises(ValueError, match="is not the corel5k vocabulary shipped in"):
        _prepare(tmp_path, manual_dir)


def test_manual_dir_without_annotations_lists_the_files_looked_for(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("")
    with pytest.raises(FileNotFoundError, match="corel5k_dictionary.txt"):
        _prepare(tmp_path, tmp_path / "empty")
