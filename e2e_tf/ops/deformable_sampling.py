"""Pure-TensorFlow deformable convolution: bilinear-sampling im2col plus one GEMM per group.

This is the fallback behind `e2e_tf.ops.deformable_conv2d` when the compiled op is not built,
and the path traced into exports for TF Serving (plain TF ops only). Gradients come from
autodiff (plus one hand-written, equivalent gradient for speed); the formulation is chosen so
that they follow the project's convention: the right-hand derivative at integer coordinates,
including at -1, and zero for samples beyond one pixel outside the image.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

_INT32_LIMIT = 2**31 - 1


# Shape logic only: nothing for autograph to convert, and converting it costs seconds.
@tf.autograph.experimental.do_not_convert
def deformable_conv2d_pure_tf(
    inputs: tf.Tensor,
    offsets: tf.Tensor,
    kernel: tf.Tensor,
    mask: tf.Tensor | None,
    *,
    strides: tuple[int, int],
    pads: Sequence,
    dilations: tuple[int, int],
    groups: int,
    offset_groups: int,
) -> tf.Tensor:
    """Deformable convolution of validated NHWC tensors of one float dtype (no bias).

    Args:
        inputs: `(N, H, W, C)`; C must be static.
        offsets: `(N, Ho, Wo, 2 * offset_groups * kh * kw)`, interleaved (dy, dx) per tap.
        kernel: `(kh, kw, C // groups, filters)`, static shape.
        mask: `None` or `(N, Ho, Wo, offset_groups * kh * kw)`.
        strides, dilations: `(h, w)` python ints.
        pads: `(top, bottom, left, right)`, ints or scalar tensors (only top/left are used:
            the output size is the offsets' spatial size, checked by the caller).
        groups, offset_groups: python ints dividing C.

    Returns:
        `(N, Ho, Wo, filters)` in the inputs' dtype.
    """
    kh, kw, channels_per_group, filters = (int(d) for d in kernel.shape)
    channels = int(inputs.shape[-1])
    taps = kh * kw
    dtype = inputs.dtype

    input_shape = tf.shape(inputs)
    batch, height, width = input_shape[0], input_shape[1], input_shape[2]
    offset_shape = tf.shape(offsets)
    out_h, out_w = offset_shape[1], offset_shape[2]

    # Sample coordinates, laid out (N, Ho, Wo, K, G) so that the gathered columns come out
    # in the kernel's (tap, channel) order without moving any channel-sized data.
    offsets = tf.reshape(offsets, [batch, out_h, out_w, offset_groups, taps, 2])
    offsets = tf.transpose(offsets, [0, 1, 2, 4, 3, 5])
    tap_rows = tf.constant([i * dilations[0] for i in range(kh) for _ in range(kw)], dtype)
    tap_cols = tf.constant([j * dilations[1] for _ in range(kh) for j in range(kw)], dtype)
    pad_top = tf.cast(pads[0], dtype)
    pad_left = tf.cast(pads[2], dtype)
    base_y = tf.cast(tf.range(out_h) * strides[0], dtype) - pad_top
    base_x = tf.cast(tf.range(out_w) * strides[1], dtype) - pad_left
    y = base_y[:, None, None, None] + tap_rows[:, None] + offsets[..., 0]
    x = base_x[:, None, None] + tap_cols[:, None] + offsets[..., 1]

    index, weights = _bilinear_quad_index(y, x, height, width, offset_groups)
    if mask is not None:
        mask = tf.reshape(mask, [batch, out_h, out_w, offset_groups, taps])
        weights = weights * tf.transpose(mask, [0, 1, 2, 4, 3])[..., None]

    # One gather per sample fetches its 4 bilinear corners, stored next to each other.
    quads = _corner_quads(inputs, offset_groups)
    rows = batch * out_h * out_w
    samples_count = rows * taps * offset_groups
    samples = tf.gather(quads, tf.reshape(index, [samples_count]))
    samples = tf.reshape(samples, [samples_count, 4, channels // offset_groups])
    columns = _interpolate(samples, tf.reshape(weights, [samples_count, 4]))
    columns = tf.reshape(columns, [rows, taps, channels])

    if groups == 1:
        outputs = tf.matmul(tf.reshape(columns, [rows, taps * channels]),
                            tf.reshape(kernel, [taps * channels, filters]))
    else:
        filters_per_group = filters // groups
        columns = tf.reshape(columns, [rows, taps, groups, channels_per_group])
        columns = tf.reshape(tf.transpose(columns, [2, 0, 1, 3]),
                             [groups, rows, taps * channels_per_group])
        grouped_kernel = tf.reshape(kernel, [taps, channels_per_group, groups, filters_per_group])
        grouped_kernel = tf.reshape(tf.transpose(grouped_kernel, [2, 0, 1, 3]),
                                    [groups, taps * channels_per_group, filters_per_group])
        outputs = tf.matmul(columns, grouped_kernel)  # (groups, rows, filters/groups)
        outputs = tf.reshape(tf.transpose(outputs, [1, 0, 2]), [rows, filters])
    return tf.reshape(outputs, [batch, out_h, out_w, filters])


@tf.custom_gradient
def _interpolate(samples: tf.Tensor, weights: tf.Tensor):
    """Weighted sum of each sample's 4 corners: (S, 4, C) x (S, 4) -> (S, C).

    The gradient is written out because autodiff of the einsum yields outer-product einsums
    that are much slower on CPU than the broadcast multiply and batched matvec below.
    """

    def grad(upstream):
        return upstream[:, None, :] * weights[:, :, None], tf.linalg.matvec(samples, upstream)

    return tf.einsum("sqc,sq->sc", samples, weights), grad


def _corner_quads(inputs: tf.Tensor, offset_groups: int) -> tf.Tensor:
    """The input as rows of 2x2 pixel neighbourhoods, zero-padded by one pixel all round.

    Row `((n*(H+1) + qy)*(W+1) + qx)*G + g` holds, for offset group g, the channels of the
    padded pixels (qy, qx), (qy, qx+1), (qy+1, qx), (qy+1, qx+1): the corners of a sample
    whose top-left corner is input pixel (qy-1, qx-1). The zero border makes corners outside
    the image contribute 0 without per-corner tests. Shape (N*(H+1)*(W+1)*G, 4*C/G).
    """
    channels = int(inputs.shape[-1])
    padded = tf.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]])
    shape = tf.shape(padded)
    padded = tf.reshape(padded, [shape[0], shape[1], shape[2], offset_groups,
                                 channels // offset_groups])
    quads = tf.stack([padded[:, :-1, :-1], padded[:, :-1, 1:],
                      padded[:, 1:, :-1], padded[:, 1:, 1:]], axis=-2)
    return tf.reshape(quads, [-1, 4 * (channels // offset_groups)])


def _bilinear_quad_index(y: tf.Tensor, x: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                         offset_groups: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Row of `_corner_quads` and the 4 bilinear weights of each sample.

    `y`, `x` have shape (N, Ho, Wo, K, G). A sample that is not finite or lies outside
    [-1, H) x [-1, W) touches no pixel: it gets weight 0 (so value and gradient are exactly
    0) and a harmless in-bounds index. Returns indices (N, Ho, Wo, K, G) and weights
    (N, Ho, Wo, K, G, 4).
    """
    dtype = y.dtype
    height_f = tf.cast(height, dtype)
    width_f = tf.cast(width, dtype)
    # Sanitise before any floor/cast: NaN, inf and huge values would overflow integers.
    inside = (tf.math.is_finite(y) & tf.math.is_finite(x) & (y >= -1.0) & (y < height_f)
              & (x >= -1.0) & (x < width_f))
    y = tf.where(inside, y, tf.zeros_like(y))
    x = tf.where(inside, x, tf.zeros_like(x))

    # floor() carries no gradient, so d(frac)/dy = 1: the right-hand derivative at integers
    # (at y = -1 this is the value of row 0, as the zero border is the top corner).
    y0 = tf.stop_gradient(tf.floor(y))
    x0 = tf.stop_gradient(tf.floor(x))
    fy, fx = y - y0, x - x0
    weights = tf.stack([(1.0 - fy) * (1.0 - fx), (1.0 - fy) * fx, fy * (1.0 - fx), fy * fx],
                       axis=-1) * tf.cast(inside, dtype)[..., None]

    index_dtype = _index_dtype(y, height, width, offset_groups)
    qy = tf.cast(y0, index_dtype) + 1
    qx = tf.cast(x0, index_dtype) + 1
    batch = tf.shape(y, out_type=index_dtype)[0]
    quad_rows = tf.cast(height, index_dtype) + 1
    quad_cols = tf.cast(width, index_dtype) + 1
    image = tf.range(batch, dtype=index_dtype)[:, None, None, None, None] * quad_rows
    group = tf.range(offset_groups, dtype=index_dtype)
    return ((image + qy) * quad_cols + qx) * offset_groups + group, weights


def _index_dtype(y: tf.Tensor, height, width, offset_groups: int) -> tf.DType:
    """int32 when the quad rows provably fit in it, else int64."""
    static = [y.shape[0], tf.get_static_value(height), tf.get_static_value(width)]
    if all(d is not None for d in static):
        batch, h, w = (int(d) for d in static)
        if batch * (h + 1) * (w + 1) * offset_groups <= _INT32_LIMIT:
            return tf.int32
    return tf.int64
