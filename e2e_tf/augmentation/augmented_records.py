"""TFRecord files of augmented training images, readable like the TFDS datasets.

Each record holds one image (PNG or JPEG bytes), the label ids of its source image, and where it
came from: the source image's file name, the method ("traditional" or "mlwgan"), the generator
iteration of an ML-WGAN snapshot (0 for a traditional copy of the source itself) and a copy
index. `load_augmented_dataset` yields the same element structure as `e2e_tf.datasets.load`
({"image", "file_name", "labels"}), so training can mix real and generated images uniformly.

A file appears under its final name only when complete (written to a temporary name, then
renamed), so a reader never sees a partial shard.
"""

import os
import pathlib
from typing import Iterable

import numpy as np
import tensorflow as tf

RECORD_SUFFIX = ".tfrecord"
IMAGE_FORMATS = ("png", "jpeg")

_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "file_name": tf.io.FixedLenFeature([], tf.string),
    "labels": tf.io.VarLenFeature(tf.int64),
    "source_file_name": tf.io.FixedLenFeature([], tf.string),
    "method": tf.io.FixedLenFeature([], tf.string),
    "iteration": tf.io.FixedLenFeature([], tf.int64),
    "copy": tf.io.FixedLenFeature([], tf.int64),
}


def encode_image(image: np.ndarray, image_format: str = "png", jpeg_quality: int = 95) -> bytes:
    """uint8 [H, W, 3] -> PNG or JPEG bytes."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}. Received: image_format={image_format!r}")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"Expected a uint8 [H, W, 3] image. Received: dtype={image.dtype}, shape={image.shape}")
    if image_format == "png":
        return tf.io.encode_png(image).numpy()
    return tf.io.encode_jpeg(image, quality=jpeg_quality).numpy()


def to_uint8(image) -> np.ndarray:
    """float pixels in [0, 255] -> rounded uint8."""
    return np.clip(np.rint(np.asarray(image, np.float32)), 0, 255).astype(np.uint8)


def serialize_example(
    *,
    image: np.ndarray,
    file_name: str,
    labels: Iterable[int],
    source_file_name: str,
    method: str,
    iteration: int,
    copy: int,
    image_format: str = "png",
) -> bytes:
    """One augmented image as a serialized `tf.train.Example`."""

    def bytes_feature(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def int_feature(values) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image": bytes_feature(encode_image(image, image_format)),
                "file_name": bytes_feature(file_name.encode()),
                "labels": int_feature(labels),
                "source_file_name": bytes_feature(source_file_name.encode()),
                "method": bytes_feature(method.encode()),
                "iteration": int_feature([iteration]),
                "copy": int_feature([copy]),
            }
        )
    )
    return example.SerializeToString()


def write_records_atomically(path: os.PathLike, serialized: Iterable[bytes]) -> int:
    """Writes the records to `path` via a temporary file and a rename; returns how many were written."""
    path = pathlib.Path(path)
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    count = 0
    with tf.io.TFRecordWriter(str(temporary)) as writer:
        for record in serialized:
            writer.write(record)
            count += 1
    os.replace(temporary, path)
    return count


def parse_example(serialized: tf.Tensor) -> dict:
    """Serialized record -> dict with a decoded uint8 [H, W, 3] image, int64 labels and the metadata."""
    parsed = tf.io.parse_single_example(serialized, _FEATURES)
    image = tf.io.decode_image(parsed["image"], channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    parsed["image"] = image
    parsed["labels"] = tf.sparse.to_dense(parsed["labels"])
    return parsed


def record_files(augmented_dir: os.PathLike) -> list[str]:
    """The complete shard files in `augmented_dir` (sorted), or a ValueError if there are none."""
    augmented_dir = pathlib.Path(augmented_dir)
    if not augmented_dir.is_dir():
        raise ValueError(f"augmented_dir is not a directory: {augmented_dir}")
    files = sorted(str(p) for p in augmented_dir.glob(f"*{RECORD_SUFFIX}"))
    if not files:
        raise ValueError(
            f"No augmented records (*{RECORD_SUFFIX}) in {augmented_dir}; create them with `python -m e2e_tf.augment`."
        )
    return files


def load_augmented_dataset(augmented_dir: os.PathLike, *, with_metadata: bool = False) -> tf.data.Dataset:
    """Augmented images as a dataset of {"image": uint8 [H, W, 3], "file_name": string, "labels": int64 [n]}.

    Args:
      augmented_dir: folder written by `python -m e2e_tf.augment` (all its shard files are read,
        in sorted order).
      with_metadata: also yield "source_file_name", "method", "iteration" and "copy".
    """
    dataset = tf.data.TFRecordDataset(record_files(augmented_dir))
    keys = list(_FEATURES) if with_metadata else ["image", "file_name", "labels"]

    def parse(serialized):
        parsed = parse_example(serialized)
        return {key: parsed[key] for key in keys}

    return dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
