"""Image preprocessing shared by training, evaluation, annotation and export.

One function turns a decoded uint8 RGB image into the model's input, so the
pixels a SavedModel sees in TF Serving are exactly the pixels training saw.
Normalisation (per-backbone mean/scale) lives inside the model itself; this
module only fixes the spatial size.
"""

from typing import Sequence

import tensorflow as tf

RESIZE_POLICIES = ("stretch", "pad", "crop")


def validate_resize_policy(policy: str) -> str:
    """Returns `policy` if it is known, else raises a ValueError naming it."""
    if policy not in RESIZE_POLICIES:
        raise ValueError(
            f"Unknown resize policy; expected one of {RESIZE_POLICIES}. Received: policy={policy!r}"
        )
    return policy


def resize_image(image: tf.Tensor, image_size: Sequence[int], policy: str = "stretch") -> tf.Tensor:
    """Resizes an RGB image (or a batch) to `image_size` = (height, width).

    Args:
      image: uint8 or float tensor `[H, W, 3]` or `[N, H, W, 3]`, pixel values in [0, 255].
      image_size: target `(height, width)`.
      policy: "stretch" resizes both sides (aspect ratio changes); "pad" keeps the
        aspect ratio and pads with zeros; "crop" resizes the shorter side to fit
        and crops the centre.

    Returns:
      float32 tensor with the same rank, spatial size `image_size`, values in [0, 255].
    """
    validate_resize_policy(policy)
    height, width = int(image_size[0]), int(image_size[1])
    image = tf.cast(image, tf.float32)
    if policy == "stretch":
        resized = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
    elif policy == "pad":
        resized = tf.image.resize_with_pad(image, height, width, method="bilinear", antialias=True)
    else:
        resized = _resize_shorter_side_and_center_crop(image, height, width)
    return tf.clip_by_value(resized, 0.0, 255.0)


def _resize_shorter_side_and_center_crop(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
    shape = tf.shape(image)
    in_h = tf.cast(shape[-3], tf.float32)
    in_w = tf.cast(shape[-2], tf.float32)
    scale = tf.maximum(height / in_h, width / in_w)
    scaled_size = tf.cast(tf.math.ceil(tf.stack([in_h * scale, in_w * scale])), tf.int32)
    scaled = tf.image.resize(image, scaled_size, method="bilinear", antialias=True)
    return tf.image.resize_with_crop_or_pad(scaled, height, width)
