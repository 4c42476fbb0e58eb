"""The builders on the real annotation files: all of Corel5k, ESP Game and IAPR TC-12 with stand-in images."""

import json
import os

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds

from e2e_tf.datasets import testing

pytestmark = pytest.mark.real_data


def _by_file_name(builder, split, **kwargs):
    examples = builder.as_dataset(split=split, **kwargs)
    return {e["file_name"].decode(): e for e in tfds.as_numpy(examples)}


def _multi_hot(labels, num_classes):
    row = np.zeros(num_classes, bool)
    row[labels] = True
    return row


def _check_labels(examples, entries, matrix):
    """Each listed entry is an example whose labels are its matrix row."""
    assert sorted(examples) == sorted(entries)
    rows = np.stack([_multi_hot(examples[e]["labels"], matrix.shape[1]) for e in entries])
    np.testing.assert_array_equal(rows, matrix == 1)


def test_corel5k_builds_every_listed_image_with_the_mat_labels(corel5k_real, shared_data):
    folder = shared_data / testing.COREL5K_DIR
    info = corel5k_real.info
    assert info.splits["train"].num_examples == 4500 and info.splits["test"].num_examples == 499
    assert info.features["labels"].feature.names == (folder / "corel5k_words.txt").read_text().split()
    for split, variable in (("train", "annot1"), ("test", "annot2")):
        entries = (folder / f"corel5k_{split}_list.txt").read_text().split()
        matrix = scipy.io.loadmat(folder / f"corel5k_{split}_annot.mat")[variable]
        raw = _by_file_name(corel5k_real, split, decoders={"image": tfds.decode.SkipDecoding()})
        _check_labels(raw, entries, matrix)
        # The JPEG bytes are stored as published: nothing was re-encoded.
        for entry in entries[::50]:
            assert raw[entry]["image"] == (folder / f"{entry}.jpeg").read_bytes()
    assert sum(e["labels"].size == 0 for e in raw.values()) == 0  # test: every image labelled


def test_corel5k_images_decode_to_rgb_at_their_own_size(corel5k_real):
    shapes = {e["image"].shape for e in tfds.as_numpy(corel5k_real.as_dataset(split="test"))}
    assert shapes == {(128, 192, 3), (192, 128, 3)}


def test_corel5k_keeps_its_seven_unlabelled_training_images(corel5k_real):
    examples = tfds.as_numpy(
        corel5k_real.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    )
    assert sum(e["labels"].size == 0 for e in examples) == 7


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, short, image_path, sizes",
    [
        ("espgame", "esp", lambda entry: f"images/{entry.split('/')[1]}.jpg", (18689, 2081, 268, 2)),
        ("iaprtc12", "iapr", lambda entry: f"images/{entry}.jpg", (17665, 1962, 291, 0)),
    ],
)
def test_builds_from_real_files_with_stand_in_images(shared_data, tmp_path_factory, name, short, image_path, sizes):
    """All public annotation files side by side: train labels from JSON, test labels from CSV."""
    csv_folder = shared_data / name / f"ayushidutta__image-annot-quirks/datasets/{name}"
    json_folder = next((shared_data / name).glob("parham1998__*/datasets/*"))
    lists = {s: (csv_folder / f"{short}_{s}_list.txt").read_text().split() for s in ("train", "test")}
    manual_dir = testing.stand_in_manual_dir(
        tmp_path_factory.mktemp(f"{name}_manual"),
        [*csv_folder.iterdir(), *json_folder.iterdir()],
        [image_path(entry) for entries in lists.values() for entry in entries],
    )
    builder = testing.prepare(name, tmp_path_factory.mktemp("tfds"), manual_dir)
    test_matrix = np.loadtxt(csv_folder / f"{short}_test_annot.txt", delimiter=",", dtype=int)
    train_json = json.loads((json_folder / "train.json").read_text())["samples"]

    train_size, test_size, num_labels, unlabelled = sizes
    info = builder.info
    assert (info.splits["train"].num_examples, info.splits["test"].num_examples) == (train_size, test_size)
    names = info.features["labels"].feature.names
    assert len(names) == num_labels
    skip = {"image": tfds.decode.SkipDecoding()}
    _check_labels(_by_file_name(builder, "test", decoders=skip), lists["test"], test_matrix)
    train = _by_file_name(builder, "train", decoders=skip)
    assert sorted(train) == sorted(lists["train"])
    for entry, sample in zip(lists["train"], train_json):
        assert os.path.basename(image_path(entry)) == sample["image_name"]
        assert {names[i] for i in train[entry]["labels"]} == set(sample["image_labels"])
    assert sum(e["labels"].size == 0 for e in train.values()) == unlabelled
