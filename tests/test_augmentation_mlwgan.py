"""Tests of the vectorised per-image WGANs (tiny sizes: 8x8 / 16x16 images, a few iterations)."""

import numpy as np
import pytest
import tensorflow as tf

from e2e_tf.augmentation.mlwgan import MLWGANConfig, MultiImageWGAN, model_axis_conv

# Most tests run without XLA (compiling costs seconds); the ones parametrised over `jit` check the
# compiled loop, which is what `python -m e2e_tf.augment` runs.
TINY = MLWGANConfig(image_size=8, noise_dim=8, generator_filters=4, critic_filters=4, batch_size=2, jit_compile=False)
TINY_XLA = MLWGANConfig(**{**TINY.__dict__, "jit_compile": True})
SEEDS = np.array([[1, 2], [3, 4], [5, 6]])


def _real(num_models=3, size=8, seed=0):
    return tf.random.stateless_uniform([num_models, size, size, 3], seed=[seed, 9], maxval=255.0)


def _trained_sample(seeds, config=TINY, iterations=3):
    model = MultiImageWGAN(len(seeds), config)
    model.reset(seeds)
    model.train_iterations(_real(len(seeds)), iterations)
    return model.sample(0).numpy()


def test_critic_weights_are_clipped_after_every_critic_update():
    model = MultiImageWGAN(3, TINY)
    model.reset(SEEDS)
    critic = model.critic.trainable_variables
    assert max(float(tf.reduce_max(tf.abs(v))) for v in critic) > TINY.clip_value  # the init exceeds c
    real = _real()
    previous = [v.numpy() for v in critic]
    for _ in range(4):
        model.critic_step(real)
        assert max(float(tf.reduce_max(tf.abs(v))) for v in critic) <= TINY.clip_value
        assert any(not np.array_equal(p, v.numpy()) for p, v in zip(previous, critic))
        previous = [v.numpy() for v in critic]


def test_training_updates_the_generator_and_keeps_the_learning_rate_after_reset():
    model = MultiImageWGAN(3, TINY)
    model.reset(SEEDS)
    model.reset(SEEDS)  # a second reset must not zero the optimizer's learning rate
    assert float(model.generator_optimizer.learning_rate) == pytest.approx(TINY.learning_rate)
    before = [v.numpy() for v in model.generator.trainable_variables]
    model.train_iterations(_real(), 1)
    after = [v.numpy() for v in model.generator.trainable_variables]
    assert all(not np.array_equal(b, a) for b, a in zip(before, after))


def test_critic_schedule_counts_initial_and_regular_phases():
    config = MLWGANConfig(**{**TINY.__dict__, "initial_generator_steps": 2, "initial_critic_steps": 7, "critic_steps": 3})
    model = MultiImageWGAN(2, config)
    model.reset(SEEDS[:2])
    model.train_iterations(_real(2), 5)
    assert int(model.generator_iterations.numpy()) == 5
    assert int(model.critic_iterations.numpy()) == 2 * 7 + 3 * 3


def test_same_seed_gives_same_images_and_other_seed_differs():
    a = _trained_sample(SEEDS)
    b = _trained_sample(SEEDS)
    c = _trained_sample(SEEDS + 10)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_a_model_does_not_depend_on_the_other_models_in_its_group():
    together = _trained_sample(SEEDS)
    model = MultiImageWGAN(1, TINY)
    model.reset(SEEDS[1:2])
    model.train_iterations(_real(3)[1:2], 3)  # model 1's seed and real image, trained alone
    np.testing.assert_allclose(model.sample(0).numpy()[0], together[1], atol=1e-3)


def test_xla_loop_is_deterministic_clipped_and_keeps_models_independent():
    """The XLA-compiled loop (what `e2e_tf.augment` runs); one compilation per model count."""
    model = MultiImageWGAN(3, TINY_XLA)
    model.reset(SEEDS)
    kernels = [v for v in model.generator.trainable_variables + model.critic.trainable_variables if "kernel" in v.name]
    before = [v.numpy() for v in kernels]
    model.train_iterations(_real(), 3)
    first = model.sample(0).numpy()
    assert int(model.critic_iterations.numpy()) == 3 * TINY.critic_steps
    assert max(float(tf.reduce_max(tf.abs(v))) for v in model.critic.trainable_variables) <= TINY.clip_value
    for b, v in zip(before, kernels):  # every model's slice of every kernel moved
        assert all(not np.array_equal(b[m], v.numpy()[m]) for m in range(3)), v.name
    model.reset(SEEDS)
    model.train_iterations(_real(), 3)
    np.testing.assert_array_equal(model.sample(0).numpy(), first)
    model.reset(SEEDS + 10)
    model.train_iterations(_real(), 3)
    assert not np.allclose(model.sample(0).numpy(), first)
    alone = MultiImageWGAN(1, TINY_XLA)
    alone.reset(SEEDS[1:2])
    alone.train_iterations(_real(3)[1:2], 3)
    np.testing.assert_allclose(alone.sample(0).numpy()[0], first[1], atol=1e-3)


def test_samples_have_configured_size_and_pixel_range():
    config = MLWGANConfig(**{**TINY.__dict__, "image_size": 16})
    model = MultiImageWGAN(2, config)
    model.reset(SEEDS[:2])
    model.train_iterations(_real(2, 16), 2)
    images = model.sample(3).numpy()
    assert images.shape == (2, 16, 16, 3)
    assert images.min() >= 0.0 and images.max() <= 255.0


@pytest.mark.parametrize(
    "kernel_size, stride, pad",
    # (4, 2, 1) and (4, 2, 0) take the space-to-depth path, (3, 2, 1) and (4, 2, 1) on 7x7 the
    # strided-slice one, (3, 1, 1) is the generator's convolution.
    [(4, 2, 1), (4, 2, 0), (3, 2, 1), (3, 1, 1)],
)
@pytest.mark.parametrize("size", [8, 7])
def test_unrolled_and_batched_matmul_convolutions_agree_with_gradients(kernel_size, stride, pad, size):
    # float64, so that a wrong tap order shows up far above the rounding of the two summation orders.
    x = tf.random.stateless_normal([2, 3, size, size, 4], seed=[1, 1], dtype=tf.float64)
    bias = tf.random.stateless_normal([2, 5], seed=[2, 2], dtype=tf.float64)
    kernel = tf.random.stateless_normal([2, kernel_size, kernel_size, 4, 5], seed=[3, kernel_size], dtype=tf.float64)
    results = {}
    for implementation in ("unrolled", "batched_matmul"):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = model_axis_conv(x, kernel, bias, stride, pad, implementation)
            loss = tf.reduce_sum(y * tf.cos(y))
        results[implementation] = (y, *tape.gradient(loss, [x, kernel]))
    for unrolled, batched in zip(results["unrolled"], results["batched_matmul"]):
        np.testing.assert_allclose(unrolled.numpy(), batched.numpy(), atol=1e-10, rtol=1e-10)


def test_keras_fit_runs_train_step():
    model = MultiImageWGAN(2, TINY)
    model.reset(SEEDS[:2])
    model.compile()
    history = model.fit(tf.data.Dataset.from_tensors(_real(2)).repeat(), steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
    assert int(model.generator_iterations.numpy()) == 2
    assert np.isfinite(history.history["wasserstein"][-1])


def test_bad_config_and_shapes_are_rejected():
    with pytest.raises(ValueError, match="image_size"):
        MLWGANConfig(image_size=24)
    model = MultiImageWGAN(2, TINY)
    with pytest.raises(ValueError, match="seeds"):
        model.reset(SEEDS)
    with pytest.raises(ValueError, match="real images"):
        model.train_iterations(_real(3), 1)
