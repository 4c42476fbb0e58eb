"""Tests of e2e_tf.input_pipeline: shapes, labels, resize parity with preprocessing, augmentation seeds."""

import numpy as np
import pytest
import tensorflow as tf

from e2e_tf.input_pipeline import make_dataset
from e2e_tf.preprocessing import resize_image

NUM_LABELS = 6


def _examples(n=10):
    """Images of varying sizes whose pixel value and labels encode their index."""
    images = [np.full((20 + i, 30 - i, 3), 10 * i, np.uint8) for i in range(n)]
    labels = [[i % NUM_LABELS, (i + 2) % NUM_LABELS] if i % 3 else [] for i in range(n)]

    def generate():
        for i in range(n):
            yield {"image": images[i], "file_name": f"{i}.png", "labels": np.asarray(labels[i], np.int64)}

    spec = {
        "image": tf.TensorSpec((None, None, 3), tf.uint8),
        "file_name": tf.TensorSpec((), tf.string),
        "labels": tf.TensorSpec((None,), tf.int64),
    }
    return tf.data.Dataset.from_generator(generate, output_signature=spec), images, labels


def _pipeline(examples, **kwargs):
    options = dict(num_labels=NUM_LABELS, image_size=(8, 12), resize_policy="pad", batch_size=4)
    options.update(kwargs)
    return make_dataset(examples, **options)


def test_evaluation_pass_keeps_order_partial_batch_and_exact_pixels():
    examples, images, labels = _examples(10)
    batches = list(_pipeline(examples, training=False))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    pixels = np.concatenate([b[0].numpy() for b in batches])
    targets = np.concatenate([b[1].numpy() for b in batches])
    assert pixels.dtype == np.float32 and pixels.shape == (10, 8, 12, 3)
    for i in range(10):
        # The same function annotation and export use: what the model sees never differs.
        np.testing.assert_array_equal(pixels[i], resize_image(images[i], (8, 12), "pad").numpy())
        expected = np.zeros(NUM_LABELS, np.float32)
        expected[labels[i]] = 1.0
        np.testing.assert_array_equal(targets[i], expected)
    assert not targets[0].any()  # an image without labels gives an all-zero target


def test_training_repeats_shuffles_and_drops_partial_batches():
    examples, _, _ = _examples(10)
    batches = list(_pipeline(examples, training=True, seed=3).take(6))
    assert all(b[0].shape == (4, 8, 12, 3) for b in batches)
    means = np.concatenate([b[0].numpy().max(axis=(1, 2, 3)) for b in batches])
    first_pass = sorted(means[:8])
    assert means[:8].tolist() != first_pass  # shuffled
    again = np.concatenate([b[0].numpy().max(axis=(1, 2, 3)) for b in _pipeline(examples, training=True, seed=3).take(6)])
    np.testing.assert_array_equal(means, again)  # deterministic for a seed


def test_augmentation_gets_a_distinct_seed_per_drawn_example():
    examples, _, _ = _examples(5)
    seen = []

    def augment(image, seed):
        seen_seed = tf.cast(seed, tf.float32)
        # Encodes the seed in the pixels so the test can read back what the hook received.
        return tf.zeros_like(image) + seen_seed[1]

    batches = list(_pipeline(examples, training=True, seed=7, augment=augment, batch_size=5).take(3))
    for batch in batches:
        seen.extend(batch[0].numpy()[:, 0, 0, 0].tolist())
    assert sorted(seen) == list(range(15))  # one fresh seed per example and epoch
    # Labels are untouched by augmentation.
    assert all(b[1].shape == (5, NUM_LABELS) for b in batches)


def test_rejects_non_positive_batch_size():
    examples, _, _ = _examples(2)
    with pytest.raises(ValueError, match="batch_size"):
        _pipeline(examples, training=False, batch_size=0)


@pytest.mark.parametrize("with_augmentation", [False, True])
def test_skipped_stream_continues_exactly_where_an_uninterrupted_one_is(with_augmentation):
    """A resumed run skips the examples of its completed steps and then sees the same batches."""
    examples, _, _ = _examples(10)

    def augment(image, seed):
        return image + tf.cast(seed[1], tf.float32)  # the drawn example's seed shows in the pixels

    options = dict(training=True, seed=5, augment=augment if with_augmentation else None)
    straight = [b for b in _pipeline(examples, **options).take(7)]
    # 3 batches of 4 = 12 examples: past the first pass of 10, so the reshuffle is crossed too.
    resumed = [b for b in _pipeline(examples, skip_examples=12, **options).take(4)]
    for got, want in zip(resumed, straight[3:]):
        np.testing.assert_array_equal(got[0].numpy(), want[0].numpy())
        np.testing.assert_array_equal(got[1].numpy(), want[1].numpy())
    assert not np.array_equal(resumed[0][0].numpy(), straight[0][0].numpy())


def test_skip_is_for_training_streams_only():
    examples, _, _ = _examples(2)
    with pytest.raises(ValueError, match="skip_examples"):
        _pipeline(examples, training=False, skip_examples=4)
    with pytest.raises(ValueError, match="skip_examples"):
        _pipeline(examples, training=True, skip_examples=-1)
