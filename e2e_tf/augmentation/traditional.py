"""Constrained traditional augmentation: flip, noise, and geometry that loses at most 10% of the image.

Section IV-B-2 of the paper limits rotation and translation "to restrict the loss of image
content to be within 10% of the whole image", because in a multi-label image every region may
carry a keyword, and a transform that pushes a region off the canvas keeps a label whose evidence
is gone. Here the limit is enforced per draw, not by a fixed range:

* rotation by `a` about the centre (same canvas `W x H`, half sizes `w, h`) loses the four canvas
  corners that the rotated image no longer covers. For the angles that matter they are right
  triangles of area `d^2 / sin(2a)` (twice) and `e^2 / sin(2a)` (twice), with
  `d = w sin a + h cos a - h` and `e = h sin a + w cos a - w` (how far the rotated corners reach
  past the canvas). Lost fraction `r(a) = 2 (d^2 + e^2) / (sin(2a) 4 w h)`, exact while the
  triangles do not overlap (checked; larger angles count as losing everything);
* translation by `(tx, ty)` loses `t = 1 - (1 - |tx|/W)(1 - |ty|/H)`;
* rotation followed by translation loses at most `r(a) + t` (a point is lost only if the rotation
  or the shift moves it off the canvas, and rotation preserves area) - a sound bound.

Parameters are drawn from the proposal ranges, then all shrunk by the largest common factor whose
bound `r + t` stays within `max_content_loss` (bisection). Flip, noise and colour move no content
off the canvas. All randomness is stateless (`tf.random.stateless_*`): a seed fixes the draw.
"""

import math
from typing import NamedTuple

import tensorflow as tf

FILL_MODES = ("reflect", "constant", "nearest", "wrap")
_BISECTION_STEPS = 24


class GeometricParams(NamedTuple):
    """A rigid transform: rotation `angle` (radians) about the centre, then a shift in pixels."""

    angle: tf.Tensor
    translate_x: tf.Tensor
    translate_y: tf.Tensor


def rotation_content_loss(angle: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Fraction of a `height x width` image that rotating it by `angle` (radians) moves off the canvas.

    Exact in the regime where each canvas corner is cut by one edge of the rotated image and the
    cut triangles do not overlap; outside that regime it returns 1.0 (treated as "too much").
    """
    a = tf.abs(tf.cast(angle, tf.float32))
    w = tf.cast(width, tf.float32) / 2.0
    h = tf.cast(height, tf.float32) / 2.0
    sin_a, cos_a = tf.sin(a), tf.cos(a)
    d = tf.nn.relu(w * sin_a + h * cos_a - h)
    e = tf.nn.relu(h * sin_a + w * cos_a - w)
    safe_sin2a = tf.maximum(tf.sin(2.0 * a), 1e-12)
    lost = 2.0 * (d * d + e * e) / safe_sin2a / (4.0 * w * h)
    safe_sin = tf.maximum(sin_a, 1e-12)
    fits = tf.logical_and(
        e / cos_a + d / safe_sin <= 2.0 * w,  # the two triangles along a horizontal edge
        e / safe_sin + d / cos_a <= 2.0 * h,  # the two triangles along a vertical edge
    )
    valid = tf.logical_and(fits, a < math.pi / 4.0)
    return tf.where(a < 1e-7, 0.0, tf.where(valid, lost, 1.0))


def translation_content_loss(
    translate_x: tf.Tensor, translate_y: tf.Tensor, height: tf.Tensor, width: tf.Tensor
) -> tf.Tensor:
    """Fraction of the image that a shift by `(translate_x, translate_y)` pixels moves off the canvas."""
    fx = tf.abs(tf.cast(translate_x, tf.float32)) / tf.cast(width, tf.float32)
    fy = tf.abs(tf.cast(translate_y, tf.float32)) / tf.cast(height, tf.float32)
    return 1.0 - tf.nn.relu(1.0 - fx) * tf.nn.relu(1.0 - fy)


def content_loss_bound(params: GeometricParams, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Upper bound on the fraction of content lost by rotation then translation (`r + t`)."""
    return rotation_content_loss(params.angle, height, width) + translation_content_loss(
        params.translate_x, params.translate_y, height, width
    )


def sample_geometric_params(
    seed: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    *,
    max_content_loss: float = 0.1,
    max_rotation_degrees: float = 10.0,
    max_translation: float = 0.1,
) -> GeometricParams:
    """Draws a rotation and shift whose content loss bound is at most `max_content_loss`.

    Args:
      seed: int32/int64 tensor of shape [2] (stateless randomness).
      height, width: image size in pixels.
      max_content_loss: budget for the lost fraction of the image, in [0, 1).
      max_rotation_degrees: proposal range of the angle, +-degrees.
      max_translation: proposal range of each shift, +- this fraction of the side.
    """
    if not 0.0 <= max_content_loss < 1.0:
        raise ValueError(f"max_content_loss must be in [0, 1). Received: max_content_loss={max_content_loss}")
    if not 0.0 <= max_rotation_degrees < 45.0:
        raise ValueError(
            f"max_rotation_degrees must be in [0, 45). Received: max_rotation_degrees={max_rotation_degrees}"
        )
    if not 0.0 <= max_translation < 1.0:
        raise ValueError(f"max_translation must be in [0, 1). Received: max_translation={max_translation}")
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    u = tf.random.stateless_uniform([3], seed=seed, minval=-1.0, maxval=1.0)
    proposal = GeometricParams(
        angle=u[0] * math.radians(max_rotation_degrees),
        translate_x=u[1] * max_translation * w,
        translate_y=u[2] * max_translation * h,
    )

    def scaled(s: tf.Tensor) -> GeometricParams:
        return GeometricParams(*(s * p for p in proposal))

    def fits(s: tf.Tensor) -> tf.Tensor:
        return content_loss_bound(scaled(s), h, w) <= max_content_loss

    # Largest common factor s in [0, 1] that keeps the bound within budget; the bound grows with s.
    def bisect(lo, hi):
        for _ in range(_BISECTION_STEPS):
            mid = (lo + hi) / 2.0
            ok = fits(mid)
            lo, hi = tf.where(ok, mid, lo), tf.where(ok, hi, mid)
        return lo

    factor = tf.cond(
        fits(tf.constant(1.0)), lambda: tf.constant(1.0), lambda: bisect(tf.constant(0.0), tf.constant(1.0))
    )
    return scaled(factor)


def geometric_transform(
    image: tf.Tensor,
    params: GeometricParams,
    *,
    fill_mode: str = "reflect",
    fill_value: float = 0.0,
    interpolation: str = "bilinear",
) -> tf.Tensor:
    """Rotates `image` [H, W, C] about its centre by `params.angle`, then shifts it, on the same canvas."""
    if fill_mode not in FILL_MODES:
        raise ValueError(f"fill_mode must be one of {FILL_MODES}. Received: fill_mode={fill_mode!r}")
    shape = tf.shape(image)
    h = tf.cast(shape[0], tf.float32)
    w = tf.cast(shape[1], tf.float32)
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    cos_a, sin_a = tf.cos(params.angle), tf.sin(params.angle)
    sx, sy = cx + params.translate_x, cy + params.translate_y
    # ImageProjectiveTransform maps each OUTPUT pixel to the INPUT point it samples:
    # p_in = R(-a) (p_out - c - t) + c.
    transform = tf.stack(
        [cos_a, sin_a, cx - cos_a * sx - sin_a * sy, -sin_a, cos_a, cy + sin_a * sx - cos_a * sy, 0.0, 0.0]
    )
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[tf.newaxis],
        transforms=transform[tf.newaxis],
        output_shape=shape[:2],
        fill_value=tf.cast(fill_value, tf.float32),
        interpolation=interpolation.upper(),
        fill_mode=fill_mode.upper(),
    )
    return out[0]


def constrained_augment(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    max_content_loss: float = 0.1,
    max_rotation_degrees: float = 10.0,
    max_translation: float = 0.1,
    flip: bool = True,
    gaussian_noise_stddev: float = 8.0,
    salt_and_pepper: float = 0.01,
    color: bool = False,
    fill_mode: str = "reflect",
) -> tf.Tensor:
    """One random constrained augmentation of an RGB image; the image's labels stay valid.

    Args:
      image: float32 [H, W, 3], values in [0, 255].
      seed: int32/int64 tensor of shape [2]; the same seed gives the same result.
      max_content_loss: at most this fraction of the image content leaves the canvas.
      max_rotation_degrees, max_translation: proposal ranges (see `sample_geometric_params`).
      flip: mirror horizontally with probability 1/2.
      gaussian_noise_stddev: the noise standard deviation is drawn from [0, this] (pixel units).
      salt_and_pepper: the fraction of pixels set to black or white is drawn from [0, this].
      color: also jitter contrast, saturation and brightness (off by default: it changes pixel
        statistics, which the paper notes can make images look unnatural).
      fill_mode: how pixels entering the canvas are filled ("reflect", "constant" (black), ...).

    Returns:
      float32 [H, W, 3] in [0, 255].
    """
    image = tf.convert_to_tensor(image, tf.float32)
    image.shape.assert_has_rank(3)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=9)
    shape = tf.shape(image)
    params = sample_geometric_params(
        seeds[0],
        shape[0],
        shape[1],
        max_content_loss=max_content_loss,
        max_rotation_degrees=max_rotation_degrees,
        max_translation=max_translation,
    )
    image = geometric_transform(image, params, fill_mode=fill_mode)
    if flip:
        do_flip = tf.random.stateless_uniform([], seed=seeds[1]) < 0.5
        image = tf.cond(do_flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    if color:
        image = tf.image.stateless_random_contrast(image, 0.8, 1.2, seed=seeds[2])
        image = tf.image.stateless_random_saturation(image, 0.8, 1.2, seed=seeds[3])
        image = tf.image.stateless_random_brightness(image, 20.0, seed=seeds[4])
    if gaussian_noise_stddev > 0:
        stddev = tf.random.stateless_uniform([], seed=seeds[5], maxval=gaussian_noise_stddev)
        image = image + stddev * tf.random.stateless_normal(tf.shape(image), seed=seeds[7])
    if salt_and_pepper > 0:
        amount = tf.random.stateless_uniform([], seed=seeds[6], maxval=salt_and_pepper)
        u = tf.random.stateless_uniform(shape[:2], seed=seeds[8])[..., tf.newaxis]
        image = tf.where(u < amount / 2.0, 0.0, tf.where(u > 1.0 - amount / 2.0, 255.0, image))
    return tf.clip_by_value(image, 0.0, 255.0)
