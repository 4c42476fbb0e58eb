"""Spatial pyramid pooling (the paper's SPP module, after PSMNet): context at several scales."""

from typing import Sequence

import keras
import tensorflow as tf


def adaptive_average_pool2d(inputs: tf.Tensor, output_size: int | Sequence[int]) -> tf.Tensor:
    """Average-pools an NHWC map to a fixed `output_size`, whatever its height and width.

    Same cells as PyTorch's `adaptive_avg_pool2d`: output row `i` of `b` averages input
    rows `[floor(i * H / b), ceil((i + 1) * H / b))`, and likewise for columns. Cells
    overlap when `H` is not a multiple of `b`, and repeat rows when `H < b`.

    The pooling is two matrix products with averaging matrices built from the dynamic
    `H` and `W`, so it works for unknown spatial sizes without Python loops over them.

    Args:
      inputs: float tensor `[batch, H, W, channels]`, `H, W >= 1`.
      output_size: `b` or `(b_h, b_w)`.

    Returns:
      tensor `[batch, b_h, b_w, channels]` of the input's dtype.
    """
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    shape = tf.shape(inputs)
    rows = _averaging_matrix(shape[1], out_h, inputs.dtype)  # [b_h, H]
    cols = _averaging_matrix(shape[2], out_w, inputs.dtype)  # [b_w, W]
    pooled = tf.einsum("ih,nhwc->niwc", rows, inputs)
    return tf.einsum("jw,niwc->nijc", cols, pooled)


def _averaging_matrix(size: tf.Tensor, bins: int, dtype: tf.DType) -> tf.Tensor:
    """`[bins, size]` matrix: row `i` averages `[floor(i*size/bins), ceil((i+1)*size/bins))`."""
    cell = tf.range(bins, dtype=tf.int32)[:, None]
    position = tf.range(size, dtype=tf.int32)[None, :]
    start = (cell * size) // bins
    end = ((cell + 1) * size + bins - 1) // bins  # ceil division on non-negative ints
    # Divide in at least float32 (float16 division is coarser than a float16 1/count).
    weight_dtype = tf.float64 if dtype == tf.float64 else tf.float32
    inside = tf.cast((position >= start) & (position < end), weight_dtype)
    return tf.cast(inside / tf.cast(end - start, weight_dtype), dtype)


@keras.saving.register_keras_serializable(package="e2e_tf")
class SpatialPyramidPooling(keras.layers.Layer):
    """Spatial pyramid pooling: pooled context at several scales, concatenated to the input.

    For each bin size `b`, the input map is average-pooled adaptively to `b x b`
    cells (`adaptive_average_pool2d`), reduced by a 1x1 convolution (+ batch norm)
    and ReLU, and upsampled bilinearly back to the input's height and width. The
    input and the `len(bins)` upsampled maps are concatenated along channels, so
    each position sees the whole image (b=1) and its region (b=2, 3, 6) - the
    context the paper adds before the classifier, after PSMNet's SPP module.

    Works on maps of any size, including unknown, odd and smaller than `b`. The
    upsampling uses half-pixel centres (`tf.image.resize`, PyTorch `align_corners=False`).

    Input shape: `(batch, height, width, channels)` (channels-last; channels known).
    Output shape: `(batch, height, width, channels + len(bins) * filters_per_level)`.

    Args:
      bins: sequence of distinct positive ints, the pooled grid sizes. Defaults to
        `(1, 2, 3, 6)` (four scales, as in the paper).
      filters_per_level: positive int, output channels of each level's 1x1 conv.
        Defaults to `channels // len(bins)` of the input (PSMNet's reduction).
      use_batch_norm: whether to batch-normalise each level's conv output (the conv
        then has no bias). Defaults to `True`.
      batch_norm_momentum: momentum of the batch-norm moving statistics.
      batch_norm_epsilon: epsilon of the batch normalisation.
      kernel_initializer: initializer of the 1x1 conv kernels. Defaults to
        `"glorot_uniform"` (Xavier, as the paper initialises new layers).
      bias_initializer: initializer of the conv biases (only without batch norm).
      kernel_regularizer: regularizer of the 1x1 conv kernels (the paper: L2 1e-4).
      **kwargs: base `Layer` arguments (`name`, `dtype`, `trainable`, ...).
    """

    def __init__(
        self,
        bins: Sequence[int] = (1, 2, 3, 6),
        filters_per_level: int | None = None,
        use_batch_norm: bool = True,
        batch_norm_momentum: float = 0.99,
        batch_norm_epsilon: float = 1e-3,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(bins, int) or not isinstance(bins, Sequence):
            raise ValueError(
                f"`bins` must be a sequence of positive integers. Received: bins={bins!r}"
            )
        bins = tuple(bins)
        if (
            not bins
            or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in bins)
            or len(set(bins)) != len(bins)
        ):
            raise ValueError(
                "`bins` must be a non-empty sequence of distinct positive integers. "
                f"Received: bins={bins!r}"
            )
        if filters_per_level is not None and (
            isinstance(filters_per_level, bool)
            or not isinstance(filters_per_level, int)
            or filters_per_level < 1
        ):
            raise ValueError(
                "`filters_per_level` must be a positive integer or None. "
                f"Received: filters_per_level={filters_per_level!r}"
            )
        self.bins = bins
        self.filters_per_level = filters_per_level
        self.use_batch_norm = bool(use_batch_norm)
        self.batch_norm_momentum = float(batch_norm_momentum)
        self.batch_norm_epsilon = float(batch_norm_epsilon)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def _level_filters(self, channels: int) -> int:
        return self.filters_per_level or channels // len(self.bins)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                "The channel dimension of the inputs to SpatialPyramidPooling must be known. "
                f"Received: input_shape={input_shape}"
            )
        filters = self._level_filters(channels)
        if filters < 1:
            raise ValueError(
                f"With filters_per_level=None each of the {len(self.bins)} levels gets "
                f"channels // {len(self.bins)} filters, which is 0 for {channels} channels; "
                f"pass filters_per_level. Received: input_shape={input_shape}"
            )
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})
        self.level_convs = []
        self.level_norms = []
        for b in self.bins:
            conv = keras.layers.Conv2D(
                filters,
                1,
                use_bias=not self.use_batch_norm,
                kernel_initializer=self.kernel_initializer,
                bias_initializer=self.bias_initializer,
                kernel_regularizer=self.kernel_regularizer,
                dtype=self.dtype_policy,
                name=f"level{b}_conv",
            )
            conv.build((input_shape[0], b, b, channels))
            self.level_convs.append(conv)
            if self.use_batch_norm:
                norm = keras.layers.BatchNormalization(
                    momentum=self.batch_norm_momentum,
                    epsilon=self.batch_norm_epsilon,
                    dtype=self.dtype_policy,
                    name=f"level{b}_bn",
                )
                norm.build((input_shape[0], b, b, filters))
                self.level_norms.append(norm)

    def call(self, inputs, training=None):
        size = tf.shape(inputs)[1:3]
        levels = [inputs]
        for i, b in enumerate(self.bins):
            level = self.level_convs[i](adaptive_average_pool2d(inputs, b))
            if self.use_batch_norm:
                level = self.level_norms[i](level, training=training)
            level = tf.nn.relu(level)
            levels.append(tf.cast(tf.image.resize(level, size, method="bilinear"), inputs.dtype))
        return tf.concat(levels, axis=-1)

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1]
        return (
            *input_shape[:-1],
            channels + len(self.bins) * self._level_filters(channels),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "bins": list(self.bins),
                "filters_per_level": self.filters_per_level,
                "use_batch_norm": self.use_batch_norm,
                "batch_norm_momentum": self.batch_norm_momentum,
                "batch_norm_epsilon": self.batch_norm_epsilon,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            }
        )
        return config
