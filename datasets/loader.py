"""Loads a prepared dataset split as `tf.data`, with the validation split carved from train."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from e2e_tf import data_location

SPLITS = ("train", "test", "train_fit", "validation")
DATASETS = ("corel5k", "espgame", "iaprtc12", "visual_concepts")
VALIDATION_BUCKETS = 10

# Where each real dataset's manual files sit under `data_location.shared_data_dir()`.
SHARED_MANUAL_DIRS = {"corel5k": "corel5k/Lihit__SML/DataSet"}


def in_validation(file_name: tf.Tensor) -> tf.Tensor:
    """True for the ~1/10 of training images held out for model selection.

    The choice is a FarmHash fingerprint of the file name
    (`tf.strings.to_hash_bucket_fast(file_name, 10) == 0`): fixed for a given
    image on every machine and run, independent of file order, and spread over
    all folders of the dataset. `file_name` is the list entry (`<folder>/<id>`),
    or the bare id when a split was read from JSON without a list, so the same
    layout must be used for runs whose validation scores are compared.
    """
    return tf.equal(tf.strings.to_hash_bucket_fast(file_name, VALIDATION_BUCKETS), 0)


def default_manual_dir(name: str) -> pathlib.Path | None:
    """The shared-data folder of a real dataset when it exists, else None (TFDS default)."""
    if name not in SHARED_MANUAL_DIRS:
        return None
    folder = data_location.shared_data_dir() / SHARED_MANUAL_DIRS[name]
    return folder if folder.is_dir() else None


def load(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    decoders: dict | None = None,
) -> tuple[tf.data.Dataset, tfds.core.DatasetInfo]:
    """Prepares dataset `name` if needed and returns one split and the dataset info.

    Args:
        name: A registered builder: `corel5k`, `espgame`, `iaprtc12` or
            `visual_concepts`.
        split: `train`, `test`, `validation` (the training images for which
            `in_validation` holds) or `train_fit` (the other training images).
        data_dir: Where prepared datasets live; default TFDS's
            (`$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
        manual_dir: Folder with the manually downloaded files; default the
            dataset's folder under `$E2E_TF_DATA_DIR` when present, else TFDS's
            `<data_dir>/downloads/manual`.
        decoders: Passed to `as_dataset`, e.g. `{"image":
            tfds.decode.SkipDecoding()}` to read labels without decoding images.

    Returns:
        (dataset of {"image", "file_name", "labels"} dicts, in TFDS's stored
        order, which is fixed for a given build, info).
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}. Received: name={name!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}. Received: split={split!r}")
    builder = tfds.builder(name, data_dir=data_dir)
    manual_dir = manual_dir if manual_dir is not None else default_manual_dir(name)
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
        )
    except AssertionError as error:
        # TFDS reports a missing or empty manual directory with an assert.
        raise FileNotFoundError(str(error)) from error
    dataset = builder.as_dataset(split="test" if split == "test" else "train", decoders=decoders)
    if split == "validation":
        dataset = dataset.filter(lambda example: in_validation(example["file_name"]))
    elif split == "train_fit":
        dataset = dataset.filter(lambda example: tf.logical_not(in_validation(example["file_name"])))
    return dataset, builder.info


def multi_hot(labels: tf.Tensor | np.ndarray, num_classes: int) -> tf.Tensor:
    """Label indices (a 1-D sequence, or a ragged/padded-with--1 batch) -> float32 multi-hot.

    A 1-D input gives shape (num_classes,); a batch gives (batch, num_classes).
    Negative indices (padding) are ignored.
    """
    if isinstance(labels, tf.RaggedTensor):
        labels = labels.to_tensor(default_value=-1)
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank not in (1, 2):
        raise ValueError(
            f"labels must be a 1-D sequence or a 2-D batch of label indices. "
            f"Received: labels.shape={labels.shape}"
        )
    one_hot = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)
    # A sum, not a max: an image with no label gives zeros, not -inf.
    return tf.minimum(tf.reduce_sum(one_hot, axis=-2), 1.0)
