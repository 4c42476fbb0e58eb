"""Keras layer for deformable 2D convolution (DCNv1, and DCNv2 with `use_mask=True`)."""

from __future__ import annotations

import keras
import tensorflow as tf

from e2e_tf.ops.deformable_conv2d import check_implementation
from e2e_tf.ops.deformable_conv2d import deformable_conv2d
from e2e_tf.ops.deformable_conv2d import deformable_conv2d_output_shape
from e2e_tf.ops.deformable_conv2d import normalize_pair
from e2e_tf.ops.deformable_conv2d import normalize_padding
from e2e_tf.ops.deformable_conv2d import resolve_implementation


@keras.saving.register_keras_serializable(package="e2e_tf")
class DeformableConv2D(keras.layers.Layer):
    """2D convolution whose taps sample the input at learned, per-pixel offsets.

    An owned `Conv2D` (same kernel size, strides, padding and dilation) predicts for every
    output pixel `2 * offset_groups * kh * kw` offsets (interleaved dy, dx) and, with
    `use_mask`, `offset_groups * kh * kw` modulation logits passed through a sigmoid. The
    input is sampled bilinearly at the shifted taps (zeros outside the image) and convolved
    with `kernel`. The offset predictor is zero-initialised, so without a mask a new layer
    computes exactly the `Conv2D` it replaces; with `use_mask` it starts at half of it
    (sigmoid(0) = 0.5, the DCNv2 convention). The kernel has the Keras `Conv2D` layout
    `(kh, kw, channels // groups, filters)`, so pretrained Conv2D kernels copy in unchanged.
    Inputs are NHWC with any batch, height and width.

    Args:
        filters: int, the number of output channels.
        kernel_size: int or pair of ints, the kernel's height and width.
        strides: int or pair of ints, the convolution strides. Default 1.
        padding: "valid" or "same" (padded exactly as Keras `Conv2D` pads).
        dilation_rate: int or pair of ints. Cannot be > 1 together with strides > 1 (the
            offset predictor is a Keras `Conv2D`, which does not allow that).
        groups: int, convolution groups; input channels and `filters` must be divisible.
        offset_groups: int, input channels are split into this many groups, each with its
            own offsets (and mask). Input channels must be divisible by it.
        use_mask: bool, learn a sigmoid modulation per tap (DCNv2). Default False.
        use_bias: bool, add a bias vector. Default True.
        activation: activation applied to the output, None for linear.
        implementation: "auto" (compiled op when it is built, else pure TensorFlow),
            "custom_op" or "pure_tf"; see `e2e_tf.ops.deformable_conv2d`. Chosen at trace
            time; `e2e_tf.ops.implementation_scope` and E2E_TF_PURE_TF_DEFORMABLE=1 override it.
        kernel_initializer, bias_initializer: initializers of the deformable kernel and bias.
        kernel_regularizer, bias_regularizer, activity_regularizer: optional regularizers
            (the offset predictor is not regularised).
        kernel_constraint, bias_constraint: optional constraints.
    """

    def __init__(
        self,
        filters: int,
        kernel_size,
        strides=1,
        padding: str = "valid",
        dilation_rate=1,
        groups: int = 1,
        offset_groups: int = 1,
        use_mask: bool = False,
        use_bias: bool = True,
        activation=None,
        implementation: str = "auto",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        for name, value in (("filters", filters), ("groups", groups),
                            ("offset_groups", offset_groups)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")
        if filters % groups:
            raise ValueError("`filters` must be divisible by `groups`. "
                             f"Received: filters={filters}, groups={groups}")
        self.filters = filters
        self.kernel_size = normalize_pair(kernel_size, "kernel_size")
        self.strides = normalize_pair(strides, "strides")
        self.padding = normalize_padding(padding)
        self.dilation_rate = normalize_pair(dilation_rate, "dilation_rate")
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError("`strides > 1` is not supported together with `dilation_rate > 1`. "
                             f"Received: strides={self.strides}, "
                             f"dilation_rate={self.dilation_rate}")
        self.groups = groups
        self.offset_groups = offset_groups
        self.use_mask = bool(use_mask)
        self.use_bias = bool(use_bias)
        self.activation = keras.activations.get(activation)
        self.implementation = check_implementation(implementation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.input_spec = keras.layers.InputSpec(ndim=4)
        # A compiled custom op has no XLA kernel: keep Keras from jit-compiling around it.
        self.supports_jit = not _uses_custom_op(self.implementation)

        taps = self.kernel_size[0] * self.kernel_size[1]
        self._offset_channels = 2 * offset_groups * taps
        self.offset_conv = keras.layers.Conv2D(
            self._offset_channels + (offset_groups * taps if self.use_mask else 0),
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            kernel_initializer="zeros",
            bias_initializer="zeros",
            dtype=self.dtype_policy,
            name="offset_conv",
        )

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("The channel dimension of the inputs must be known. "
                             f"Received: input_shape={tuple(input_shape)}")
        for name, divisor in (("groups", self.groups), ("offset_groups", self.offset_groups)):
            if channels % divisor:
                raise ValueError(
                    f"The number of input channels must be divisible by {name}. Received "
                    f"{name}={divisor}, but the input has {channels} channels (full input "
                    f"shape is {tuple(input_shape)}).")
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})
        self.kernel = self.add_weight(
            name="kernel",
            shape=(*self.kernel_size, channels // self.groups, self.filters),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.filters,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        self.offset_conv.build(input_shape)

    def call(self, inputs):
        predicted = self.offset_conv(inputs)
        offsets = predicted[..., : self._offset_channels]
        mask = tf.sigmoid(predicted[..., self._offset_channels :]) if self.use_mask else None
        outputs = deformable_conv2d(
            inputs, offsets, self.kernel, mask=mask, bias=self.bias, strides=self.strides,
            padding=self.padding, dilation_rate=self.dilation_rate, groups=self.groups,
            implementation=self.implementation)
        return self.activation(outputs) if self.activation is not None else outputs

    def compute_output_shape(self, input_shape):
        return deformable_conv2d_output_shape(
            tuple(input_shape), self.filters, self.kernel_size, self.strides, self.padding,
            self.dilation_rate)

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "dilation_rate": self.dilation_rate,
            "groups": self.groups,
            "offset_groups": self.offset_groups,
            "use_mask": self.use_mask,
            "use_bias": self.use_bias,
            "activation": keras.activations.serialize(self.activation),
            "implementation": self.implementation,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "activity_regularizer": keras.regularizers.serialize(self.activity_regularizer),
            "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
            "bias_constraint": keras.constraints.serialize(self.bias_constraint),
        })
        return config


def _uses_custom_op(implementation: str) -> bool:
    """Whether the compiled op would be traced for this setting in this process."""
    try:
        return resolve_implementation(implementation, warn=False) == "custom_op"
    except RuntimeError:  # "custom_op" requested but not built: it will fail when called
        return True
