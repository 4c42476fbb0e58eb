"""Tests of the `e2e_tf.layers.DeformableConv2D` Keras layer (both implementations)."""

import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from e2e_tf.layers import DeformableConv2D


def _copy_into_conv2d(layer: DeformableConv2D, **conv_kwargs) -> keras.layers.Conv2D:
    """A built Conv2D holding the deformable layer's kernel and bias."""
    conv = keras.layers.Conv2D(layer.filters, layer.kernel_size, strides=layer.strides,
                               padding=layer.padding, dilation_rate=layer.dilation_rate,
                               groups=layer.groups, use_bias=layer.use_bias, **conv_kwargs)
    conv.build((None, None, None, layer.kernel.shape[2] * layer.groups))
    conv.set_weights(layer.get_weights()[: 2 if layer.use_bias else 1])
    return conv


@pytest.mark.parametrize("kwargs", [
    dict(padding="same"),
    dict(strides=2, padding="valid"),
    dict(kernel_size=(3, 2), strides=(2, 1), padding="same", offset_groups=2),
    dict(dilation_rate=2, padding="same", bias_initializer="ones"),
], ids=["same", "stride2_valid", "kernel3x2_stride2x1_offset_groups", "dilation2"])
def test_new_layer_computes_the_conv2d_it_replaces(kwargs, implementation):
    kwargs = {"kernel_size": 3, **kwargs}
    layer = DeformableConv2D(3, implementation=implementation, **kwargs)
    x = np.random.default_rng(0).standard_normal((2, 7, 6, 4)).astype("float32")
    out = layer(x)
    np.testing.assert_allclose(out, _copy_into_conv2d(layer)(x), rtol=1e-5, atol=1e-5)
    assert tuple(out.shape) == layer.compute_output_shape(x.shape)


def test_new_masked_layer_starts_at_half_the_conv(implementation):
    layer = DeformableConv2D(3, 3, padding="same", use_mask=True, use_bias=False,
                             implementation=implementation)
    x = np.random.default_rng(1).standard_normal((1, 5, 5, 2)).astype("float32")
    np.testing.assert_allclose(layer(x), 0.5 * _copy_into_conv2d(layer)(x), rtol=1e-5, atol=1e-6)


def test_groups_copy_a_grouped_conv2d(implementation):
    layer = DeformableConv2D(4, 3, padding="same", groups=2, offset_groups=2,
                             implementation=implementation)
    x = np.random.default_rng(2).standard_normal((2, 5, 4, 6)).astype("float32")
    out = layer(x)
    # Conv2D's grouped kernels are not supported by every CPU build: compare group by group.
    kernel, bias = layer.get_weights()[:2]
    for g in range(2):
        conv = keras.layers.Conv2D(2, 3, padding="same")
        conv.build((None, None, None, 3))
        conv.set_weights([kernel[..., 2 * g:2 * g + 2], bias[2 * g:2 * g + 2]])
        np.testing.assert_allclose(out[..., 2 * g:2 * g + 2], conv(x[..., 3 * g:3 * g + 3]),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(filters=6, groups=3), "channels must be divisible by groups"),
    (dict(filters=4, offset_groups=2), "channels must be divisible by offset_groups"),
])
def test_build_rejects_channels_not_divisible_naming_the_input_shape(kwargs, match):
    layer = DeformableConv2D(kernel_size=3, **kwargs)
    with pytest.raises(ValueError, match=rf"{match}[\s\S]*\(None, 8, 8, 5\)"):
        layer.build((None, 8, 8, 5))


@pytest.mark.parametrize("kwargs,match", [
    (dict(filters=5, groups=2), "Received: filters=5, groups=2"),
    (dict(filters=0), "Received: filters=0"),
    (dict(filters=4, kernel_size=(3, 0)), "Received: kernel_size=(3, 0)"),
    (dict(filters=4, padding="causal"), "Received: padding='causal'"),
    (dict(filters=4, strides=2, dilation_rate=2), "Received: strides=(2, 2)"),
    (dict(filters=4, offset_groups=0), "Received: offset_groups=0"),
    (dict(filters=4, implementation="cuda"), "Received: implementation='cuda'"),
])
def test_invalid_arguments_are_rejected_in_init(kwargs, match):
    kwargs = {"kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=re.escape(match)):
        DeformableConv2D(**kwargs)


def test_unknown_batch_and_spatial_size_in_a_model(implementation):
    inputs = keras.Input((None, None, 3))
    layer = DeformableConv2D(2, 3, strides=2, padding="same", use_mask=True,
                             implementation=implementation)
    outputs = layer(inputs)
    assert tuple(outputs.shape) == (None, None, None, 2)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(3)
    layer.offset_conv.set_weights([0.1 * w for w in (rng.standard_normal(
        v.shape) for v in layer.offset_conv.weights)])
    for shape in ((2, 9, 7), (1, 4, 11)):
        x = rng.standard_normal((*shape, 3)).astype("float32")
        out = model.predict(x, verbose=0)
        assert out.shape == (shape[0], (shape[1] + 1) // 2, (shape[2] + 1) // 2, 2)
        np.testing.assert_allclose(out, layer(x), rtol=1e-5, atol=1e-5)


def test_one_training_step_moves_the_offset_predictor(implementation):
    """The offsets start at 0 (integer coordinates), where the gradient is still defined."""
    rng = np.random.default_rng(4)
    model = keras.Sequential([keras.Input((6, 6, 2)),
                              DeformableConv2D(2, 3, padding="same",
                                               implementation=implementation)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.fit(rng.standard_normal((4, 6, 6, 2)), rng.standard_normal((4, 6, 6, 2)),
              epochs=1, batch_size=4, verbose=0)
    offset_kernel = model.layers[0].offset_conv.kernel.numpy()
    assert np.all(np.isfinite(offset_kernel)) and np.abs(offset_kernel).max() > 0


def test_supports_jit_only_without_the_compiled_op(implementation):
    layer = DeformableConv2D(2, 3, implementation=implementation)
    assert layer.supports_jit == (implementation == "pure_tf")


def test_mixed_float16(implementation):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = DeformableConv2D(3, 3, padding="same", use_mask=True,
                                 implementation=implementation)
        x = np.random.default_rng(5).standard_normal((2, 5, 6, 4)).astype("float32")
        out = layer(x)
    finally:
        keras.config.set_dtype_policy(previous)
    assert out.dtype == "float16" and layer.kernel.dtype == "float32"
    reference = DeformableConv2D.from_config(
        {**layer.get_config(), "dtype": "float32"})
    reference.build(x.shape)
    reference.set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(out, np.float32), reference(x), rtol=2e-2, atol=2e-2)


def test_get_config_round_trip():
    layer = DeformableConv2D(8, (3, 2), strides=(2, 1), padding="same", groups=2,
                             offset_groups=2, use_mask=True, use_bias=False, activation="relu",
                             implementation="pure_tf", kernel_regularizer="l2")
    config = layer.get_config()
    assert DeformableConv2D.from_config(config).get_config() == config
    assert config["kernel_size"] == (3, 2) and config["offset_groups"] == 2


def test_keras_file_round_trip_in_a_fresh_process(tmp_path, implementation):
    rng = np.random.default_rng(6)
    inputs = keras.Input((None, None, 4))
    layer = DeformableConv2D(3, 3, padding="same", offset_groups=2, use_mask=True,
                             implementation=implementation)
    model = keras.Model(inputs, layer(inputs))
    # Non-zero offset weights, so the round trip exercises real deformation.
    for variable in model.weights:
        variable.assign(0.3 * rng.standard_normal(variable.shape))
    x = rng.standard_normal((2, 6, 5, 4)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    model.save(tmp_path / "model.keras")
    script = textwrap.dedent(f"""
        import numpy as np, keras
        import e2e_tf.layers  # registers DeformableConv2D
        model = keras.saving.load_model({str(tmp_path / "model.keras")!r})
        np.save({str(tmp_path / "y.npy")!r}, model.predict(np.load({str(tmp_path / "x.npy")!r}),
                                                          verbose=0))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, env=dict(os.environ),
                   timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), model.predict(x, verbose=0))
