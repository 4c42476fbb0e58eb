"""The backbones of E2E-DCNN and the surgery that makes their last stages deformable.

A backbone is a convolutional feature extractor (`keras.applications` without its top, or the
small from-scratch "compact" CNN) plus the pixel normalisation its weights expect. The paper
(section III-B) replaces the regular convolutions of the deepest layers by deformable ones;
`deformable_surgery` does that on any registered backbone by rebuilding its functional graph,
so residual connections are kept as they are.

Stages are identified by layer name, with one regular expression per backbone whose `stage`
group numbers the stage of a 3x3 `Conv2D` (the convolutions that become deformable):

  resnet50/101/152  `conv{stage}_block{b}_2_conv`  stages 2-5 (the 3x3 conv of each bottleneck)
  vgg16/vgg19       `block{stage}_conv{i}`         stages 1-5
  compact           `stage{stage}_conv{i}`         stages 1-4

`deformable_stages=k` converts every such convolution of the last `k` stages.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Sequence

import keras

from e2e_tf.layers import DeformableConv2D

# Per-channel pixel statistics of `keras.applications.imagenet_utils.preprocess_input`, in
# [0, 255] units and in the channel order the backbone consumes.
_NORMALIZATIONS = {
    "caffe": {"mean": (103.939, 116.779, 123.68), "std": (1.0, 1.0, 1.0), "channel_order": "bgr"},
    "tf": {"mean": (127.5, 127.5, 127.5), "std": (127.5, 127.5, 127.5), "channel_order": "rgb"},
}

COMPACT_FILTERS = (32, 64, 128, 256)


@keras.saving.register_keras_serializable(package="e2e_tf")
class PixelNormalization(keras.layers.Layer):
    """Maps RGB pixels in [0, 255] to what a backbone expects: `(x[..., order] - mean) / std`.

    Living inside the model, the normalisation travels with it to evaluation, annotation and
    TF Serving, so every consumer feeds the same [0, 255] RGB pixels.

    Args:
      mean: three per-channel means, in the output channel order, in [0, 255] units.
      std: three per-channel divisors, in the output channel order.
      channel_order: "rgb" keeps the channels, "bgr" reverses them first (Caffe-trained weights).
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        channel_order: str = "rgb",
        **kwargs,
    ):
        super().__init__(**kwargs)
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(
                "`mean` and `std` must hold 3 values each, `std` positive. "
                f"Received: mean={mean}, std={std}"
            )
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(
                f"`channel_order` must be 'rgb' or 'bgr'. Received: channel_order={channel_order!r}"
            )
        self.mean, self.std, self.channel_order = mean, std, channel_order

    def build(self, input_shape):
        if input_shape[-1] != 3:
            raise ValueError(
                f"PixelNormalization expects RGB inputs with 3 channels. Received: input_shape={input_shape}"
            )

    def call(self, inputs):
        if self.channel_order == "bgr":
            inputs = keras.ops.flip(inputs, axis=-1)
        mean = keras.ops.convert_to_tensor(self.mean, dtype=inputs.dtype)
        std = keras.ops.convert_to_tensor(self.std, dtype=inputs.dtype)
        return (inputs - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "mean": self.mean,
            "std": self.std,
            "channel_order": self.channel_order,
        }


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone, normalise its input and find its stages.

    Attributes:
      constructor: `(input_shape, weights) -> keras.Model` without a classification top; `weights`
        is None or "imagenet" (weights files are loaded by `build_backbone`).
      normalization: key of `_NORMALIZATIONS` (the `keras.applications` preprocess mode).
      stage_pattern: regular expression with a `stage` group, matched against the full name of
        each 3x3 Conv2D that belongs to a numbered stage.
    """

    constructor: Callable[[tuple, str | None], keras.Model]
    normalization: str
    stage_pattern: str


def _application(cls) -> Callable[[tuple, str | None], keras.Model]:
    return lambda input_shape, weights: cls(include_top=False, weights=weights, input_shape=input_shape)


def _compact(input_shape: tuple, weights: str | None) -> keras.Model:
    """A small from-scratch CNN for CPU runs: 4 stages of two 3x3 Conv-BN-ReLU, output stride 16.

    Filters `COMPACT_FILTERS` per stage; the first conv has stride 2 and each later stage starts
    with a 2x2 max pooling, so a 64x64 image gives a 4x4x256 map (~53 M multiply-adds per image).
    """
    if weights is not None:
        raise ValueError(
            "The 'compact' backbone has no pretrained weights; use weights=None or a weights "
            f"file of a compact backbone. Received: weights={weights!r}"
        )
    inputs = keras.Input(input_shape, name="pixels")
    x = inputs
    for stage, filters in enumerate(COMPACT_FILTERS, start=1):
        if stage > 1:
            x = keras.layers.MaxPooling2D(2, padding="same", name=f"stage{stage}_pool")(x)
        for i in (1, 2):
            x = keras.layers.Conv2D(
                filters,
                3,
                strides=2 if stage == 1 and i == 1 else 1,
                padding="same",
                use_bias=False,
                name=f"stage{stage}_conv{i}",
            )(x)
            # momentum 0.9: short CPU runs need moving statistics that catch up within ~50 steps.
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"stage{stage}_bn{i}")(x)
            x = keras.layers.ReLU(name=f"stage{stage}_relu{i}")(x)
    return keras.Model(inputs, x, name="compact")


_RESNET_STAGES = r"conv(?P<stage>\d+)_block\d+_2_conv"
_VGG_STAGES = r"block(?P<stage>\d+)_conv\d+"

BACKBONES: dict[str, BackboneSpec] = {
    "compact": BackboneSpec(_compact, "tf", r"stage(?P<stage>\d+)_conv\d+"),
    "vgg16": BackboneSpec(_application(keras.applications.VGG16), "caffe", _VGG_STAGES),
    "vgg19": BackboneSpec(_application(keras.applications.VGG19), "caffe", _VGG_STAGES),
    "resnet50": BackboneSpec(_application(keras.applications.ResNet50), "caffe", _RESNET_STAGES),
    "resnet101": BackboneSpec(_application(keras.applications.ResNet101), "caffe", _RESNET_STAGES),
    "resnet152": BackboneSpec(_application(keras.applications.ResNet152), "caffe", _RESNET_STAGES),
}


def get_backbone_spec(name: str) -> BackboneSpec:
    """Returns the registry entry of `name`, or raises a ValueError listing the known names."""
    if name not in BACKBONES:
        raise ValueError(
            f"Unknown backbone; expected one of {sorted(BACKBONES)}. Received: backbone={name!r}"
        )
    return BACKBONES[name]


def input_normalization(name: str) -> PixelNormalization:
    """The pixel normalisation layer of backbone `name` (the keras.applications convention)."""
    return PixelNormalization(**_NORMALIZATIONS[get_backbone_spec(name).normalization], name="normalization")


def build_backbone(
    name: str, *, input_shape: tuple = (None, None, 3), weights: str | os.PathLike | None = None
) -> keras.Model:
    """Builds the plain backbone `name` (normalised pixels -> last feature map).

    Args:
      name: a key of `BACKBONES`.
      input_shape: `(height, width, 3)`; height and width may be None.
      weights: None (Glorot-initialised), "imagenet" (downloaded by keras.applications), or the
        path of a weights file of this plain backbone: `backbone.save_weights("x.weights.h5")`
        or the `*_notop.h5` file keras.applications downloads.
    """
    spec = get_backbone_spec(name)
    if weights is None:
        return spec.constructor(input_shape, None)
    if weights == "imagenet":
        try:
            return spec.constructor(input_shape, weights)
        except ValueError:
            raise
        except Exception as e:  # keras.utils.get_file raises a bare Exception on fetch failures.
            raise RuntimeError(
                f"Could not get the ImageNet weights of backbone {name!r} ({e}). Without network "
                "access, copy the keras.applications weights file here and pass its path as "
                "weights=<file> (--weights=<file>)."
            ) from e
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Backbone weights file not found: {path!r} (weights must be None, 'imagenet' or the "
            f"path of a weights file of the plain {name!r} backbone)."
        )
    backbone = spec.constructor(input_shape, None)
    try:
        backbone.load_weights(path)
    except Exception as e:
        raise ValueError(
            f"Could not load the weights file {path!r} into backbone {name!r}: {e}"
        ) from e
    return backbone


def stage_convolutions(backbone: keras.Model, name: str) -> dict[int, list[str]]:
    """Names of the 3x3 Conv2D layers of each stage of `backbone` (built as backbone `name`)."""
    pattern = re.compile(get_backbone_spec(name).stage_pattern)
    stages: dict[int, list[str]] = {}
    for layer in backbone.layers:
        match = pattern.fullmatch(layer.name)
        if (
            match
            and type(layer) is keras.layers.Conv2D
            and tuple(layer.kernel_size) == (3, 3)
        ):
            stages.setdefault(int(match.group("stage")), []).append(layer.name)
    return dict(sorted(stages.items()))


def deformable_surgery(
    backbone: keras.Model,
    name: str,
    *,
    deformable_stages: int = 1,
    kernel_regularizer: keras.regularizers.Regularizer | None = None,
    implementation: str = "auto",
) -> keras.Model:
    """Rebuilds `backbone` with the 3x3 convolutions of its last stages made deformable.

    The graph is cloned layer by layer (residual branches included); each convolution of the
    last `deformable_stages` stages becomes a `DeformableConv2D` with the same name, filters,
    strides, padding, dilation, groups and activation (VGG fuses its ReLU into the conv). Every
    weight is copied from `backbone` (Conv2D kernels and biases into the deformable layers), and
    the offset predictors start at zero, so the result computes exactly the features of
    `backbone` until training moves the offsets.

    Args:
      backbone: a plain backbone from `build_backbone(name, ...)`.
      name: its registry name (selects the stage naming rule).
      deformable_stages: how many of the last stages to convert; 0 converts none.
      kernel_regularizer: set on every layer that has a kernel (Conv2D, Dense, the deformable
        layers); None leaves them unregularised.
      implementation: passed to each `DeformableConv2D` ("auto", "custom_op" or "pure_tf").

    Returns:
      A new functional model named "backbone"; `backbone` itself is unchanged.
    """
    stages = stage_convolutions(backbone, name)
    if (
        isinstance(deformable_stages, bool)
        or not isinstance(deformable_stages, int)
        or not 0 <= deformable_stages <= len(stages)
    ):
        raise ValueError(
            f"`deformable_stages` must be an int in [0, {len(stages)}] for backbone {name!r} "
            f"(stages {list(stages)}). Received: deformable_stages={deformable_stages!r}"
        )
    converted = {
        conv for stage in list(stages)[len(stages) - deformable_stages :] for conv in stages[stage]
    }

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if "kernel_regularizer" in config:
            config["kernel_regularizer"] = keras.regularizers.serialize(kernel_regularizer)
        if layer.name not in converted:
            return layer.__class__.from_config(config)
        if config.pop("data_format") != "channels_last":
            raise ValueError(
                f"Deformable surgery needs channels_last convolutions. Received: layer {layer.name!r} "
                f"with data_format={layer.data_format!r}"
            )
        # Every other Conv2D argument (activation included: VGG fuses its ReLU) carries over.
        return DeformableConv2D.from_config({**config, "implementation": implementation})

    clone = keras.models.clone_model(backbone, clone_function=clone_layer)
    for layer in backbone.layers:
        if not layer.weights:
            continue
        target = clone.get_layer(layer.name)
        if isinstance(target, DeformableConv2D):
            target.kernel.assign(layer.kernel)
            if layer.use_bias:
                target.bias.assign(layer.bias)
        else:
            target.set_weights(layer.get_weights())
    return keras.Model(clone.input, clone.output, name="backbone")
