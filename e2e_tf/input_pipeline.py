"""The tf.data pipeline from annotation examples to model batches.

Examples are dicts `{"image": uint8 [H, W, 3], "labels": int [n], ...}` as the
TFDS builders of `e2e_tf.datasets` (and the ML-WGAN augmented records) yield
them. Batches are `(pixels, targets)`: float32 `[B, h, w, 3]` in [0, 255],
resized with `e2e_tf.preprocessing.resize_image` exactly as annotation and the
exported model do, and float32 multi-hot `[B, num_labels]`.

The decoded images are cached at their own size (Corel5k: ~330 MB) rather
than resized, so the pixels the model sees never depend on the cache, and
resizing runs in the parallel map after it.
"""

from typing import Callable, Optional, Sequence

import tensorflow as tf

from e2e_tf import datasets
from e2e_tf.preprocessing import resize_image

AUTOTUNE = tf.data.AUTOTUNE

# (image float32 [h, w, 3] in [0, 255], seed int64 [2]) -> augmented image, same shape.
Augment = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def image_and_labels(examples: tf.data.Dataset) -> tf.data.Dataset:
    """Keeps only what training needs, in a fixed spec, so example sources can be concatenated."""
    return examples.map(
        lambda e: {"image": tf.cast(e["image"], tf.uint8), "labels": tf.cast(e["labels"], tf.int64)},
        num_parallel_calls=AUTOTUNE,
    )


def make_dataset(
    examples: tf.data.Dataset,
    *,
    num_labels: int,
    image_size: Sequence[int],
    resize_policy: str,
    batch_size: int,
    training: bool,
    seed: int = 0,
    augment: Optional[Augment] = None,
    cache: bool = True,
    shuffle_buffer: int = 2048,
    skip_examples: int = 0,
) -> tf.data.Dataset:
    """Builds the batched `(pixels, multi_hot)` dataset.

    Args:
      examples: dataset of example dicts with at least "image" and "labels".
      num_labels: size of the vocabulary (length of the multi-hot vectors).
      image_size: `(height, width)` of the model input.
      resize_policy: "stretch", "pad" or "crop".
      batch_size: examples per batch (the global batch under a distribution strategy).
      training: if True, shuffles (reshuffled each pass), repeats forever, applies
        `augment` and drops the last partial batch; otherwise one ordered pass.
      seed: seeds the shuffle and the per-example augmentation seeds.
      augment: optional training-time augmentation, called per image after resizing
        with a distinct stateless seed for every example drawn.
      cache: cache the decoded examples in memory after the first pass.
      shuffle_buffer: examples in the shuffle buffer.
      skip_examples: training only: examples of the stream already consumed. A run resumed
        after K steps passes K * batch_size and then sees the very batches (order and
        augmentation seeds) that an uninterrupted run would; the skipped examples are only
        shuffled, not decoded or augmented.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive. Received: batch_size={batch_size}")
    if skip_examples < 0 or (skip_examples and not training):
        raise ValueError(f"skip_examples must be >= 0, and only for training. Received: skip_examples={skip_examples}")
    height, width = int(image_size[0]), int(image_size[1])
    ds = image_and_labels(examples)
    if cache:
        ds = ds.cache()

    def to_model_input(example):
        pixels = resize_image(example["image"], (height, width), resize_policy)
        pixels = tf.ensure_shape(pixels, (height, width, 3))
        return pixels, datasets.multi_hot(example["labels"], num_labels)

    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
        if augment is not None:
            # The running index makes every drawn example's seed distinct, across epochs too.
            def augmented(index, example):
                pixels, targets = to_model_input(example)
                example_seed = tf.stack([tf.constant(seed, tf.int64), index])
                return tf.ensure_shape(augment(pixels, example_seed), (height, width, 3)), targets

            ds = ds.enumerate().skip(skip_examples).map(augmented, num_parallel_calls=AUTOTUNE)
        else:
            ds = ds.skip(skip_examples).map(to_model_input, num_parallel_calls=AUTOTUNE)
    else:
        ds = ds.map(to_model_input, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=training, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)
