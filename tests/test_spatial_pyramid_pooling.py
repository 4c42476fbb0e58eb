"""Tests for the SPP layer and its adaptive average pooling."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from e2e_tf.layers.spatial_pyramid_pooling import SpatialPyramidPooling
from e2e_tf.layers.spatial_pyramid_pooling import adaptive_average_pool2d


def _adaptive_pool_reference(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PyTorch adaptive_avg_pool2d cells, straight from the formula, with loops."""
    n, h, w, c = x.shape
    out = np.zeros((n, out_h, out_w, c), np.float64)
    for i in range(out_h):
        r0, r1 = math.floor(i * h / out_h), math.ceil((i + 1) * h / out_h)
        for j in range(out_w):
            c0, c1 = math.floor(j * w / out_w), math.ceil((j + 1) * w / out_w)
            out[:, i, j, :] = x[:, r0:r1, c0:c1, :].mean(axis=(1, 2))
    return out


POOL_CASES = [
    # (H, W, output size): H < b, odd sizes, non-multiples, identity, non-square outputs.
    (1, 1, 6),
    (2, 3, 6),
    (2, 3, 2),
    (7, 7, 3),
    (7, 7, 6),
    (5, 9, (2, 3)),
    (13, 4, 6),
    (6, 6, 6),
    (4, 10, 1),
]


@pytest.mark.parametrize("height, width, output_size", POOL_CASES)
def test_adaptive_pooling_matches_the_formula(height, width, output_size):
    rng = np.random.default_rng(height * 100 + width)
    x = rng.normal(size=(2, height, width, 3))
    out_h, out_w = (output_size,) * 2 if isinstance(output_size, int) else output_size
    expected = _adaptive_pool_reference(x, out_h, out_w)
    got = adaptive_average_pool2d(tf.constant(x, tf.float64), output_size).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_adaptive_pooling_with_unknown_spatial_size_in_a_graph():
    pool = tf.function(
        lambda x: adaptive_average_pool2d(x, 6),
        input_signature=[tf.TensorSpec((None, None, None, 2), tf.float32)],
    )
    rng = np.random.default_rng(0)
    for height, width in [(1, 1), (3, 5), (11, 7)]:
        x = rng.normal(size=(1, height, width, 2)).astype(np.float32)
        np.testing.assert_allclose(
            pool(x).numpy(), _adaptive_pool_reference(x, 6, 6), rtol=1e-5, atol=1e-6
        )


def test_adaptive_pooling_equals_plain_average_pooling_when_size_divides():
    x = tf.random.stateless_normal((2, 6, 9, 4), seed=(1, 2))
    expected = tf.nn.avg_pool2d(x, ksize=(2, 3), strides=(2, 3), padding="VALID")
    np.testing.assert_allclose(adaptive_average_pool2d(x, 3).numpy(), expected.numpy(), atol=1e-6)


@pytest.mark.parametrize("height, width", [(1, 1), (2, 3), (7, 7), (5, 4), (13, 17), (6, 6)])
def test_output_shape_for_any_input_size(height, width):
    layer = SpatialPyramidPooling()
    x = np.random.default_rng(0).normal(size=(2, height, width, 8)).astype(np.float32)
    y = layer(x, training=False)
    # 8 channels + 4 levels of 8 // 4 = 2 filters.
    assert y.shape == (2, height, width, 16)
    assert layer.compute_output_shape((2, height, width, 8)) == (2, height, width, 16)
    assert np.isfinite(keras.ops.convert_to_numpy(y)).all()


def test_unknown_spatial_size_in_a_functional_model():
    inputs = keras.Input((None, None, 12))
    outputs = SpatialPyramidPooling(bins=(1, 3), filters_per_level=5)(inputs)
    assert tuple(outputs.shape) == (None, None, None, 22)
    model = keras.Model(inputs, outputs)
    for height, width in [(1, 1), (2, 3), (9, 5)]:
        y = model(np.ones((3, height, width, 12), np.float32))
        assert y.shape == (3, height, width, 22)


def test_input_channels_come_first_unchanged():
    x = np.random.default_rng(1).normal(size=(1, 5, 3, 8)).astype(np.float32)
    y = keras.ops.convert_to_numpy(SpatialPyramidPooling()(x))
    np.testing.assert_array_equal(y[..., :8], x)


def test_level_values_without_batch_norm():
    # bins=(1,): the level is relu(mean(x) @ kernel + bias), the same at every position.
    # bins=(2,) on a 2x2 map: pooling and upsampling are identities -> relu(x @ kernel + bias).
    x = np.random.default_rng(2).normal(size=(2, 2, 2, 4)).astype(np.float32)
    for bins, pooled in [((1,), x.mean(axis=(1, 2), keepdims=True)), ((2,), x)]:
        layer = SpatialPyramidPooling(
            bins=bins, filters_per_level=3, use_batch_norm=False, bias_initializer="ones"
        )
        y = keras.ops.convert_to_numpy(layer(x))
        kernel = keras.ops.convert_to_numpy(layer.level_convs[0].kernel)[0, 0]
        expected = np.maximum(pooled @ kernel + 1.0, 0.0)
        np.testing.assert_allclose(y[..., 4:], np.broadcast_to(expected, (2, 2, 2, 3)), atol=1e-5)


def test_channel_count_default_and_explicit():
    assert SpatialPyramidPooling().compute_output_shape((None, None, None, 2048)) == (
        None, None, None, 4096
    )
    assert SpatialPyramidPooling(bins=(1, 2, 3), filters_per_level=7).compute_output_shape(
        (4, 3, 3, 10)
    ) == (4, 3, 3, 31)
    layer = SpatialPyramidPooling()
    layer.build((None, None, None, 10))  # 10 // 4 = 2 filters per level
    assert [conv.filters for conv in layer.level_convs] == [2, 2, 2, 2]
    # BN replaces the conv bias: 4 kernels (10x2) + 4 x (gamma, beta) trainable.
    assert len(layer.trainable_weights) == 12
    assert layer.count_params() == 4 * (10 * 2 + 4 * 2)


def test_gradients_reach_the_input_and_every_trainable_weight():
    layer = SpatialPyramidPooling(bins=(1, 2, 3, 6), filters_per_level=3)
    x = tf.Variable(tf.random.stateless_normal((2, 5, 7, 6), seed=(3, 4)))
    with tf.GradientTape() as tape:
        y = layer(x, training=True)
        # Weight the output non-uniformly so BN's normalisation does not cancel gradients.
        loss = tf.reduce_sum(y * tf.random.stateless_normal(tf.shape(y), seed=(5, 6)))
    grads = tape.gradient(loss, [x] + layer.trainable_weights)
    assert len(grads) == 1 + 4 * 3
    for variable, grad in zip([x] + layer.trainable_weights, grads):
        assert grad is not None, variable.name
        assert np.abs(grad.numpy()).sum() > 0, variable.name


def test_get_config_round_trip():
    layer = SpatialPyramidPooling(
        bins=(1, 2, 4),
        filters_per_level=16,
        use_batch_norm=False,
        batch_norm_momentum=0.9,
        kernel_initializer="he_normal",
        kernel_regularizer=keras.regularizers.L2(1e-4),
        name="spp",
    )
    config = layer.get_config()
    assert config["bins"] == [1, 2, 4]
    restored = SpatialPyramidPooling.from_config(config)
    assert restored.get_config() == config
    assert restored.bins == (1, 2, 4)
    assert isinstance(restored.kernel_regularizer, keras.regularizers.L2)
    # Registered under the project's package, so models deserialize it by name.
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == "e2e_tf>SpatialPyramidPooling"
    assert keras.saving.deserialize_keras_object(serialized).get_config() == config


def test_keras_file_round_trip_keeps_weights(tmp_path):
    inputs = keras.Input((None, None, 8))
    model = keras.Model(inputs, SpatialPyramidPooling(bins=(1, 2))(inputs))
    x = np.random.default_rng(3).normal(size=(2, 4, 5, 8)).astype(np.float32)
    path = tmp_path / "spp.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6
    )


def test_regularizer_adds_losses():
    layer = SpatialPyramidPooling(bins=(1, 2), kernel_regularizer=keras.regularizers.L2(1e-4))
    layer(np.ones((1, 3, 3, 4), np.float32))
    assert len(layer.losses) == 2


def test_mixed_float16():
    x = np.random.default_rng(4).normal(size=(2, 7, 5, 8)).astype(np.float32)
    layer16 = SpatialPyramidPooling(dtype="mixed_float16")
    y16 = layer16(x, training=False)
    assert y16.dtype == "float16"
    assert all(weight.dtype == "float32" for weight in layer16.weights)
    layer32 = SpatialPyramidPooling()
    layer32.build(x.shape)
    layer32.set_weights(layer16.get_weights())
    y32 = keras.ops.convert_to_numpy(layer32(x, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y16).astype(np.float32), y32, atol=2e-2)
    # Functional model under mixed precision with unknown spatial size.
    inputs = keras.Input((None, None, 8))
    model = keras.Model(inputs, SpatialPyramidPooling(dtype="mixed_float16")(inputs))
    assert model(x).dtype == "float16"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bins": ()}, r"non-empty.*Received: bins=\(\)"),
        ({"bins": (1, 0)}, r"positive integers.*Received: bins=\(1, 0\)"),
        ({"bins": (2, 2)}, r"distinct.*Received: bins=\(2, 2\)"),
        ({"bins": (1, 2.0)}, r"Received: bins=\(1, 2.0\)"),
        ({"bins": 3}, r"sequence.*Received: bins=3"),
        ({"filters_per_level": 0}, r"Received: filters_per_level=0"),
    ],
)
def test_invalid_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpatialPyramidPooling(**kwargs)


def test_too_few_channels_for_the_default_filters_raises_with_the_shape():
    with pytest.raises(ValueError, match=r"filters_per_level.*input_shape=\(None, 4, 4, 3\)"):
        SpatialPyramidPooling().build((None, 4, 4, 3))


def test_unknown_channels_raise_with_the_shape():
    with pytest.raises(ValueError, match=r"channel dimension.*input_shape=\(None, 4, 4, None\)"):
        SpatialPyramidPooling().build((None, 4, 4, None))


def test_compiles_with_xla_and_matches_eager():
    layer = SpatialPyramidPooling(bins=(1, 2, 3, 6), filters_per_level=2)
    x = tf.random.stateless_normal((2, 7, 5, 8), seed=(7, 8))
    eager = layer(x, training=False)
    compiled = tf.function(lambda t: layer(t, training=False), jit_compile=True)(x)
    np.testing.assert_allclose(compiled.numpy(), eager.numpy(), atol=1e-5)
