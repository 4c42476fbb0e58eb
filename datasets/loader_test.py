"""The loader: the validation split carved from train, defaults, and multi_hot."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from e2e_tf import data_location
from e2e_tf import datasets
from e2e_tf.datasets import loader
from e2e_tf.datasets import testing


def _file_names(name, split, data_dir):
    dataset, _ = datasets.load(name, split, data_dir=data_dir, decoders={"image": tfds.decode.SkipDecoding()})
    return [e["file_name"].decode() for e in dataset.as_numpy_iterator()]


@pytest.mark.real_data
def test_validation_is_a_fixed_tenth_of_train_spread_over_all_folders(corel5k_real):
    data_dir = str(corel5k_real.data_dir_root)
    names = {split: _file_names("corel5k", split, data_dir) for split in ("train", "validation", "train_fit")}
    validation, train_fit = set(names["validation"]), set(names["train_fit"])
    assert not validation & train_fit and validation | train_fit == set(names["train"])
    # FarmHash buckets of the file names; pinned so that a change of the split is noticed.
    assert len(validation) == 502  # 11.2% of 4,500
    chosen = loader.in_validation(tf.constant(names["train"])).numpy()
    assert validation == {n for n, c in zip(names["train"], chosen) if c}
    folders = {n.split("/")[0] for n in names["train"]}
    assert len({n.split("/")[0] for n in validation}) >= 0.9 * len(folders)


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="split must be one of .*Received: split='val'"):
        datasets.load("corel5k", "val")


def test_default_manual_dir_follows_the_data_location(monkeypatch, tmp_path):
    monkeypatch.setenv(data_location.DATA_DIR_ENV, str(tmp_path))
    assert loader.default_manual_dir("corel5k") is None  # TFDS's own default then
    (tmp_path / testing.COREL5K_DIR).mkdir(parents=True)
    assert loader.default_manual_dir("corel5k") == tmp_path / testing.COREL5K_DIR
    assert loader.default_manual_dir("espgame") is None


def test_multi_hot_of_one_image_and_of_batches():
    np.testing.assert_array_equal(datasets.multi_hot([2, 0, 2], 4), [1, 0, 1, 0])
    np.testing.assert_array_equal(datasets.multi_hot(tf.zeros([0], tf.int64), 3), [0, 0, 0])
    ragged = tf.ragged.constant([[1], [], [0, 2]], dtype=tf.int64)
    expected = [[0, 1, 0], [0, 0, 0], [1, 0, 1]]
    np.testing.assert_array_equal(datasets.multi_hot(ragged, 3), expected)
    np.testing.assert_array_equal(datasets.multi_hot([[1, -1], [-1, -1], [0, 2]], 3), expected)
    assert datasets.multi_hot([1], 3).dtype == tf.float32
    with pytest.raises(ValueError, match=r"Received: labels.shape=\(\)"):
        datasets.multi_hot(1, 3)


def test_load_refuses_a_dataset_that_is_not_one_of_the_project_builders(tmp_path):
    with pytest.raises(ValueError, match=r"name must be one of .*Received: name='coco'"):
        loader.load("coco", "test", data_dir=tmp_path)
