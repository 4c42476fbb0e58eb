"""Tests of E2E-DCNN (`e2e_tf.model`) and the backbone registry and surgery (`e2e_tf.backbones`)."""

import dataclasses
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from e2e_tf import backbones
from e2e_tf.layers import DeformableConv2D
from e2e_tf.model import build_model, probabilities

NUM_LABELS = 5


def _pixels(shape, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 255.0, shape).astype("float32")


def _randomize_batchnorm(model, seed=0):
    """Gives every BatchNormalization non-trivial statistics, so copies are checked on real values."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([
                rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                rng.normal(0.0, 0.1, beta.shape).astype("float32"),
                rng.normal(0.0, 0.1, mean.shape).astype("float32"),
                rng.uniform(0.5, 2.0, variance.shape).astype("float32"),
            ])


def _deformable_names(model):
    return sorted(l.name for l in model.get_layer("backbone").layers if isinstance(l, DeformableConv2D))


def _assert_same_features(model, plain, pixels):
    normalized = model.get_layer("normalization")(pixels)
    expected = keras.ops.convert_to_numpy(plain(normalized, training=False))
    actual = keras.ops.convert_to_numpy(model.get_layer("backbone")(normalized, training=False))
    assert actual.shape == expected.shape
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale)


def test_compact_model_maps_pixels_to_logits_and_probabilities_are_their_sigmoid():
    model = build_model(NUM_LABELS, backbone="compact")
    logits = keras.ops.convert_to_numpy(model(_pixels((2, 64, 64, 3)), training=False))
    assert logits.shape == (2, NUM_LABELS) and logits.dtype == np.float32
    assert np.all(np.isfinite(logits))
    np.testing.assert_allclose(probabilities(logits), 1.0 / (1.0 + np.exp(-logits)), rtol=1e-6)
    np.testing.assert_allclose(probabilities([0.0, np.log(3.0)]), [0.5, 0.75], rtol=1e-6)
    assert model.output_shape == (None, NUM_LABELS)
    assert [l.name for l in model.layers[-4:]] == ["spp", "global_pool", "dropout", "logits"]
    assert model.get_layer("dropout").rate == 0.5
    assert model.get_layer("logits").activation is keras.activations.linear  # no sigmoid inside


@pytest.mark.parametrize(
    "deformable_stages, expected",
    [
        (0, []),
        (1, ["stage4_conv1", "stage4_conv2"]),
        (2, ["stage3_conv1", "stage3_conv2", "stage4_conv1", "stage4_conv2"]),
    ],
)
def test_deformable_stages_select_the_3x3_convs_of_the_last_stages(deformable_stages, expected):
    model = build_model(NUM_LABELS, backbone="compact", deformable_stages=deformable_stages, spp=False)
    assert _deformable_names(model) == expected


def test_deformable_stages_outside_the_backbone_is_a_clear_error():
    expected = r"deformable_stages.*\[0, 4\].*compact.*Received: deformable_stages=5"
    with pytest.raises(ValueError, match=expected):
        build_model(NUM_LABELS, backbone="compact", deformable_stages=5)


def test_compact_from_weights_file_copies_kernels_and_starts_as_the_plain_backbone(tmp_path):
    plain = backbones.build_backbone("compact")
    _randomize_batchnorm(plain)
    path = tmp_path / "compact.weights.h5"
    plain.save_weights(str(path))

    model = build_model(NUM_LABELS, backbone="compact", deformable_stages=2, weights=str(path))

    features = model.get_layer("backbone")
    for name in _deformable_names(model):
        np.testing.assert_array_equal(features.get_layer(name).kernel, plain.get_layer(name).kernel)
    np.testing.assert_array_equal(
        features.get_layer("stage1_bn1").moving_variance, plain.get_layer("stage1_bn1").moving_variance
    )
    _assert_same_features(model, plain, _pixels((2, 64, 48, 3)))


def test_surgery_on_vgg16_copies_the_weights_and_keeps_the_fused_relu():
    plain = backbones.build_backbone("vgg16")
    features = backbones.deformable_surgery(plain, "vgg16", deformable_stages=2)

    expected = sorted(f"block{b}_conv{i}" for b in (4, 5) for i in (1, 2, 3))
    assert sorted(l.name for l in features.layers if isinstance(l, DeformableConv2D)) == expected
    for name in expected:
        np.testing.assert_array_equal(features.get_layer(name).kernel, plain.get_layer(name).kernel)
        np.testing.assert_array_equal(features.get_layer(name).bias, plain.get_layer(name).bias)
        assert features.get_layer(name).activation is keras.activations.relu
    normalized = backbones.input_normalization("vgg16")(_pixels((1, 32, 32, 3)))
    expected_features = keras.ops.convert_to_numpy(plain(normalized))
    assert expected_features.max() > 0
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(features(normalized)),
        expected_features,
        rtol=1e-4,
        atol=1e-4 * expected_features.max(),
    )


def test_resnet50_with_deformable_last_stage_from_weights_file_matches_the_plain_backbone(tmp_path):
    plain = backbones.build_backbone("resnet50")
    _randomize_batchnorm(plain)
    path = tmp_path / "resnet50.weights.h5"
    plain.save_weights(str(path))

    model = build_model(NUM_LABELS, backbone="resnet50", deformable_stages=1, weights=str(path))

    assert _deformable_names(model) == [f"conv5_block{b}_2_conv" for b in (1, 2, 3)]
    features = model.get_layer("backbone")
    for name in _deformable_names(model):
        np.testing.assert_array_equal(features.get_layer(name).kernel, plain.get_layer(name).kernel)
        np.testing.assert_array_equal(features.get_layer(name).bias, plain.get_layer(name).bias)
    pixels = _pixels((1, 64, 64, 3))
    _assert_same_features(model, plain, pixels)
    assert model(pixels, training=False).shape == (1, NUM_LABELS)


def test_one_model_accepts_inputs_of_any_height_and_width():
    model = build_model(NUM_LABELS, backbone="compact")
    assert model.input_shape == (None, None, None, 3)
    assert model(_pixels((2, 64, 64, 3)), training=False).shape == (2, NUM_LABELS)
    assert model(_pixels((1, 48, 80, 3)), training=False).shape == (1, NUM_LABELS)
    assert model(_pixels((1, 9, 9, 3)), training=False).shape == (1, NUM_LABELS)


def test_image_size_fixes_the_input_shape_and_is_validated():
    model = build_model(NUM_LABELS, backbone="compact", image_size=(64, 96))
    assert model.input_shape == (None, 64, 96, 3)
    assert model(_pixels((1, 64, 96, 3)), training=False).shape == (1, NUM_LABELS)
    with pytest.raises(ValueError, match=r"image_size.*Received: image_size=\(64,\)"):
        build_model(NUM_LABELS, backbone="compact", image_size=(64,))
    with pytest.raises(ValueError, match="Received: deformable_implementation='cuda'"):
        build_model(NUM_LABELS, backbone="compact", deformable_stages=0, deformable_implementation="cuda")


def test_weight_decay_adds_half_lambda_times_the_squared_norm_of_every_kernel():
    weight_decay = 1e-2
    model = build_model(NUM_LABELS, backbone="compact", weight_decay=weight_decay)

    kernels = [v for v in model.trainable_weights if v.name == "kernel"]
    expected = sum(0.5 * weight_decay * float(np.sum(np.square(v.numpy()))) for v in kernels)
    assert model.losses
    actual = float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses))
    np.testing.assert_allclose(actual, expected, rtol=1e-5)

    features = model.get_layer("backbone")
    assert all(l.kernel_regularizer is not None for l in features.layers if hasattr(l, "kernel_regularizer"))
    assert model.get_layer("logits").kernel_regularizer is not None
    assert not build_model(NUM_LABELS, backbone="compact", weight_decay=0.0).losses


def test_mixed_float16_model_returns_float32_logits():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(NUM_LABELS, backbone="compact")
        logits = model(_pixels((2, 32, 32, 3)), training=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("backbone").output.dtype == "float16"
    assert logits.dtype == "float32" and logits.shape == (2, NUM_LABELS)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(logits)))


def test_keras_file_round_trip_in_a_fresh_process_keeps_the_deformable_layers_and_outputs(tmp_path):
    model = build_model(NUM_LABELS, backbone="compact", image_size=(32, 32))
    _randomize_batchnorm(model.get_layer("backbone"))
    model.save(str(tmp_path / "model.keras"))
    pixels = _pixels((3, 32, 32, 3))
    np.save(tmp_path / "pixels.npy", pixels)

    # A fresh process registers the custom layers only through `import e2e_tf.model`.
    script = textwrap.dedent(
        """
        import sys
        import keras, numpy as np
        import e2e_tf.model
        from e2e_tf.layers import DeformableConv2D
        loaded = keras.saving.load_model(sys.argv[1] + "/model.keras")
        backbone = loaded.get_layer("backbone")
        print(sorted(l.name for l in backbone.layers if isinstance(l, DeformableConv2D)))
        logits = loaded(np.load(sys.argv[1] + "/pixels.npy"), training=False)
        np.save(sys.argv[1] + "/logits.npy", keras.ops.convert_to_numpy(logits))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "['stage4_conv1', 'stage4_conv2']"
    np.testing.assert_allclose(
        np.load(tmp_path / "logits.npy"),
        keras.ops.convert_to_numpy(model(pixels, training=False)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_normalization_follows_the_keras_applications_conventions():
    pixels = _pixels((2, 8, 8, 3))
    np.testing.assert_allclose(
        backbones.input_normalization("resnet50")(pixels),
        keras.applications.resnet50.preprocess_input(pixels.copy()),
        rtol=1e-6,
        atol=1e-4,
    )
    np.testing.assert_allclose(
        backbones.input_normalization("compact")(pixels), pixels / 127.5 - 1.0, rtol=1e-6, atol=1e-6
    )


def test_unknown_backbone_error_lists_the_known_backbones():
    with pytest.raises(ValueError, match="Unknown backbone") as error:
        build_model(NUM_LABELS, backbone="resnet5")
    for name in ("compact", "resnet101", "resnet50", "vgg16"):
        assert repr(name) in str(error.value)
    assert "Received: backbone='resnet5'" in str(error.value)


def test_bad_weights_give_errors_naming_the_cause(tmp_path, monkeypatch):
    missing = tmp_path / "missing.weights.h5"
    with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
        build_model(NUM_LABELS, backbone="compact", weights=str(missing))
    with pytest.raises(ValueError, match="'compact' backbone has no pretrained weights"):
        build_model(NUM_LABELS, backbone="compact", weights="imagenet")

    def offline(input_shape, weights):
        raise Exception("URL fetch failure on https://example.invalid/notop.h5: [Errno -3]")

    spec = dataclasses.replace(backbones.BACKBONES["resnet50"], constructor=offline)
    monkeypatch.setitem(backbones.BACKBONES, "resnet50", spec)
    with pytest.raises(RuntimeError, match=r"ImageNet weights of backbone 'resnet50'.*weights=<file>"):
        build_model(NUM_LABELS, backbone="resnet50", weights="imagenet")
