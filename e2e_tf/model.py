"""E2E-DCNN: the end-to-end annotation network of the paper (section III-B, Fig. 5).

pixels [0, 255] -> backbone normalisation -> backbone (last stages deformable) -> spatial pyramid
pooling -> global average pooling -> dropout -> dense layer of M logits.

The model returns LOGITS: training uses binary cross-entropy on logits (the paper's multiple
cross-entropy loss, eq. 9), and annotation applies the sigmoid with `probabilities` and keeps the
k most probable labels (Algorithm 1, annotating phase).
"""

from __future__ import annotations

import os
from typing import Sequence

import keras

from e2e_tf import backbones
from e2e_tf.layers import SpatialPyramidPooling
from e2e_tf.ops.deformable_conv2d import IMPLEMENTATIONS

SPP_BINS = (1, 2, 3, 6)


def build_model(
    num_labels: int,
    *,
    backbone: str = "resnet50",
    deformable_stages: int = 1,
    spp: bool = True,
    dropout: float = 0.5,
    weight_decay: float = 1e-4,
    weights: str | os.PathLike | None = None,
    deformable_implementation: str = "auto",
    image_size: Sequence[int] | None = None,
) -> keras.Model:
    """Builds E2E-DCNN for `num_labels` keywords.

    Args:
      num_labels: M, the vocabulary size (one logit per keyword).
      backbone: a name from `e2e_tf.backbones.BACKBONES` ("vgg16", "resnet50", "resnet101",
        "compact", ...).
      deformable_stages: how many of the backbone's last stages get deformable 3x3 convolutions
        (0 = none); see `e2e_tf.backbones` for how stages are numbered.
      spp: whether to add spatial pyramid pooling (bins `SPP_BINS`) after the backbone.
      dropout: dropout rate before the dense layer.
      weight_decay: lambda of the L2 term 1/2 * lambda * ||w||^2 (eq. 14; Caffe's weight_decay)
        added for every convolution and dense kernel, the backbone's included. 0 disables it.
      weights: None (Glorot initialisation), "imagenet", or the path of a weights file of the
        plain backbone; loaded before the surgery so the pretrained kernels are copied into the
        deformable layers.
      deformable_implementation: "auto", "custom_op" or "pure_tf" (see `e2e_tf.ops`).
      image_size: `(height, width)` to fix the input size, or None to accept any size.

    Returns:
      A `keras.Model` mapping float32 RGB pixels in [0, 255] of shape `(batch, H, W, 3)` to
      float32 logits `(batch, num_labels)`, also under a mixed-precision policy. The backbone is
      the nested model `model.get_layer("backbone")`, fed by the layer "normalization".
    """
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"`num_labels` must be a positive int. Received: num_labels={num_labels!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
    if weight_decay < 0:
        raise ValueError(f"`weight_decay` must be >= 0. Received: weight_decay={weight_decay!r}")
    if deformable_implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"`deformable_implementation` must be one of {IMPLEMENTATIONS}. "
            f"Received: deformable_implementation={deformable_implementation!r}"
        )
    input_shape = _input_shape(image_size)
    regularizer = keras.regularizers.L2(weight_decay / 2.0) if weight_decay > 0 else None

    plain = backbones.build_backbone(backbone, input_shape=input_shape, weights=weights)
    features = backbones.deformable_surgery(
        plain,
        backbone,
        deformable_stages=deformable_stages,
        kernel_regularizer=regularizer,
        implementation=deformable_implementation,
    )

    pixels = keras.Input(input_shape, dtype="float32", name="pixels")
    x = backbones.input_normalization(backbone)(pixels)
    x = features(x)
    if spp:
        x = SpatialPyramidPooling(bins=SPP_BINS, kernel_regularizer=regularizer, name="spp")(x)
    # SPP keeps the map's size (PSMNet); pooling it gives the dense layer a fixed-size input.
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(
        num_labels,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=regularizer,
        dtype="float32",  # logits stay float32 under mixed precision, for a stable loss
        name="logits",
    )(x)
    return keras.Model(pixels, logits, name=f"e2e_dcnn_{backbone}")


def probabilities(logits):
    """Per-keyword probabilities sigma(s) of the model's logits (numpy or tensor, any shape)."""
    return keras.ops.sigmoid(keras.ops.convert_to_tensor(logits, dtype="float32"))


def _input_shape(image_size: Sequence[int] | None) -> tuple:
    if image_size is None:
        return (None, None, 3)
    try:
        height, width = (int(s) for s in image_size)
    except (TypeError, ValueError):
        height = width = 0
    if height < 1 or width < 1:
        raise ValueError(
            f"`image_size` must be None or (height, width) positive ints. Received: image_size={image_size!r}"
        )
    return (height, width, 3)
