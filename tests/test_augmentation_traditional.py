"""Tests of the constrained traditional augmentation (at most 10% of the content lost)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from e2e_tf.augmentation import traditional


def _measured_loss(height, width, params):
    """Lost fraction of an all-ones mask moved by `params` (black fill)."""
    mask = traditional.geometric_transform(tf.ones([height, width, 1]), params, fill_mode="constant")
    return 1.0 - float(tf.reduce_sum(mask)) / (height * width)


@pytest.mark.parametrize("height,width", [(64, 64), (64, 96), (96, 48)])
@pytest.mark.parametrize("degrees", [3.0, 8.0, 14.0])
def test_rotation_loss_formula_matches_measured_mask(height, width, degrees):
    angle = math.radians(degrees)
    params = traditional.GeometricParams(tf.constant(angle), tf.constant(0.0), tf.constant(0.0))
    formula = float(traditional.rotation_content_loss(angle, height, width))
    assert formula > 0.01
    assert formula == pytest.approx(_measured_loss(height, width, params), abs=2e-3)


def test_translation_loss_formula_matches_measured_mask():
    params = traditional.GeometricParams(tf.constant(0.0), tf.constant(-6.0), tf.constant(4.0))
    formula = float(traditional.translation_content_loss(-6.0, 4.0, 64, 96))
    assert formula == pytest.approx(1 - (1 - 6 / 96) * (1 - 4 / 64))
    assert formula == pytest.approx(_measured_loss(64, 96, params), abs=2e-3)


def test_constrained_augment_loses_at_most_ten_percent_over_many_draws():
    height, width = 48, 72
    ones = tf.fill([height, width, 3], 255.0)
    augment = tf.function(
        lambda seed: traditional.constrained_augment(
            ones, seed, gaussian_noise_stddev=0.0, salt_and_pepper=0.0, fill_mode="constant",
            max_rotation_degrees=20.0, max_translation=0.15,
        )
    )
    losses = [1.0 - float(tf.reduce_sum(augment(tf.constant([i, 17])))) / (255.0 * height * width * 3) for i in range(150)]
    # 0.5% slack for the bilinear edge pixels; the draws must also really use the budget.
    assert max(losses) <= 0.105
    assert max(losses) > 0.08
    assert np.mean(losses) > 0.03


def test_sampled_params_respect_bound_and_proposal_scaling():
    for i in range(40):
        params = traditional.sample_geometric_params(tf.constant([i, 3]), 64, 96, max_rotation_degrees=30.0)
        assert float(traditional.content_loss_bound(params, 64, 96)) <= 0.1 + 1e-6
        assert abs(float(params.angle)) <= math.radians(30.0)


def test_constrained_augment_is_deterministic_and_keeps_shape_and_range():
    image = tf.random.stateless_uniform([40, 56, 3], seed=[1, 2], maxval=255.0)
    a = traditional.constrained_augment(image, tf.constant([5, 6], tf.int64), color=True)
    b = traditional.constrained_augment(image, tf.constant([5, 6], tf.int32), color=True)
    c = traditional.constrained_augment(image, tf.constant([5, 7], tf.int64), color=True)
    assert a.shape == image.shape and a.dtype == tf.float32
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.allclose(a.numpy(), c.numpy())
    assert float(tf.reduce_min(a)) >= 0.0 and float(tf.reduce_max(a)) <= 255.0


def test_invalid_budget_is_rejected_with_its_name():
    with pytest.raises(ValueError, match="max_content_loss"):
        traditional.sample_geometric_params(tf.constant([1, 2]), 8, 8, max_content_loss=1.5)
