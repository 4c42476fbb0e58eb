"""`deformable_conv2d`: the public deformable convolution op and its implementation switch.

Semantics: ../shared/notes/deformable-conv.md (torchvision `deform_conv2d` in NHWC with the
Keras Conv2D kernel layout). Two implementations sit behind one function: the compiled
C++/CUDA op (`e2e_tf.custom_ops`, when it is built and loads) and the pure-TensorFlow
bilinear-sampling path (`deformable_sampling.py`), which always works and is what exports for
TF Serving trace. The choice is made when the op is traced.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import logging
import numbers
import os
from typing import Iterator

import tensorflow as tf

from e2e_tf.ops.deformable_sampling import deformable_conv2d_pure_tf

IMPLEMENTATIONS = ("auto", "custom_op", "pure_tf")
PADDINGS = ("valid", "same")
FORCE_PURE_TF_ENV = "E2E_TF_PURE_TF_DEFORMABLE"

_CUSTOM_OP_MODULE = "e2e_tf.custom_ops.ops.deformable_conv2d_ops"
_HALF_DTYPES = (tf.float16, tf.bfloat16)
_logger = logging.getLogger(__name__)
_scope: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "deformable_conv2d_implementation", default=None)
_fallback_warned = False


# ----------------------------------------------------------------------------- switch


@contextlib.contextmanager
def implementation_scope(implementation: str) -> Iterator[None]:
    """Forces the implementation of every `deformable_conv2d` traced inside the block.

    It overrides the `implementation` argument of the op and of `DeformableConv2D` layers;
    exports use `implementation_scope("pure_tf")` so that the graph holds only stock TF ops.
    """
    implementation = check_implementation(implementation)
    token = _scope.set(implementation)
    try:
        yield
    finally:
        _scope.reset(token)


def resolve_implementation(implementation: str = "auto", *, warn: bool = True) -> str:
    """Returns "custom_op" or "pure_tf": what `deformable_conv2d` would use right now.

    Precedence: the environment variable E2E_TF_PURE_TF_DEFORMABLE=1 (forces "pure_tf"),
    then an enclosing `implementation_scope`, then the argument. "auto" picks the compiled
    op when it loads and otherwise falls back to pure TF with one warning per process;
    an explicit "custom_op" that cannot load raises with the loader's error.
    """
    implementation = check_implementation(implementation)
    if os.environ.get(FORCE_PURE_TF_ENV, "").strip().lower() in ("1", "true", "yes"):
        return "pure_tf"
    implementation = _scope.get() or implementation
    if implementation == "pure_tf":
        return "pure_tf"
    module, error = _load_custom_op()
    if module is not None:
        return "custom_op"
    if implementation == "custom_op":
        raise RuntimeError(
            "implementation='custom_op' was requested but the compiled DeformableConv2D op is "
            f"not available: {error}. Build it by installing the project (`pip install -e .` "
            "with a C++ compiler), or use implementation='auto' or 'pure_tf'.")
    global _fallback_warned
    if warn and not _fallback_warned:
        _fallback_warned = True
        _logger.warning(
            "The compiled DeformableConv2D op is not available (%s); using the slower pure-"
            "TensorFlow implementation. Set %s=1 to choose it explicitly.", error,
            FORCE_PURE_TF_ENV)
    return "pure_tf"


def check_implementation(implementation: str) -> str:
    """Validates an `implementation` name ("auto", "custom_op" or "pure_tf")."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"`implementation` must be one of {IMPLEMENTATIONS}. "
            f"Received: implementation={implementation!r}")
    return implementation


def _load_custom_op():
    """Returns (wrapper module or None, reason it is unavailable or None)."""
    try:
        module = importlib.import_module(_CUSTOM_OP_MODULE)
    except Exception as error:  # noqa: BLE001 - a broken build must never break the fallback
        return None, f"cannot import {_CUSTOM_OP_MODULE}: {error}"
    try:
        if module.is_available():
            return module, None
        return None, module.load_error() or "the op library did not load"
    except Exception as error:  # noqa: BLE001
        return None, f"{_CUSTOM_OP_MODULE} failed: {error}"


# ----------------------------------------------------------------------------- geometry


def normalize_pair(value, name: str) -> tuple[int, int]:
    """An int or a pair of ints -> a pair of positive ints (`Received: ...` on error)."""
    if isinstance(value, numbers.Integral):
        pair = (value, value)
    else:
        pair = tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(pair) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                 and v > 0 for v in pair):
        raise ValueError(f"`{name}` must be a positive int or a pair of positive ints. "
                         f"Received: {name}={value!r}")
    return int(pair[0]), int(pair[1])


def normalize_padding(padding: str) -> str:
    if not isinstance(padding, str) or padding.lower() not in PADDINGS:
        raise ValueError(f"`padding` must be one of {PADDINGS}. Received: padding={padding!r}")
    return padding.lower()


def conv_output_size(size, kernel_size: int, stride: int, dilation: int, padding: str):
    """Output length along one axis, as Keras Conv2D computes it; None stays None."""
    if size is None:
        return None
    if padding == "same":
        return -(-size // stride)
    return max(size - dilation * (kernel_size - 1) - 1, -1) // stride + 1


def deformable_conv2d_output_shape(input_shape, filters: int, kernel_size, strides,
                                   padding: str, dilation_rate) -> tuple:
    """(N, Ho, Wo, filters) from a static NHWC input shape (None for unknown dims)."""
    return (
        input_shape[0],
        conv_output_size(input_shape[1], kernel_size[0], strides[0], dilation_rate[0], padding),
        conv_output_size(input_shape[2], kernel_size[1], strides[1], dilation_rate[1], padding),
        filters,
    )


def _same_pads(size, kernel_size: int, stride: int, dilation: int):
    """(before, after) padding of TF/Keras "same"; ints for ints, tensors for tensors."""
    effective = dilation * (kernel_size - 1) + 1
    if isinstance(size, int):
        total = max((-(-size // stride) - 1) * stride + effective - size, 0)
        return total // 2, total - total // 2
    total = tf.maximum(((size + stride - 1) // stride - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _dim(tensor: tf.Tensor, axis: int):
    """The static size of an axis when known, else the dynamic one."""
    static = tensor.shape[axis]
    return int(static) if static is not None else tf.shape(tensor)[axis]


# ----------------------------------------------------------------------------- the op


# Shape logic only: nothing for autograph to convert, and converting it costs seconds.
@tf.autograph.experimental.do_not_convert
def deformable_conv2d(
    inputs,
    offsets,
    kernel,
    *,
    mask=None,
    bias=None,
    strides=1,
    padding: str = "valid",
    dilation_rate=1,
    groups: int = 1,
    implementation: str = "auto",
) -> tf.Tensor:
    """Deformable 2D convolution (DCNv1, or DCNv2 with `mask`) of NHWC tensors.

    Tap `(i, j)` of output pixel `(oy, ox)` reads the input at
    `(oy*sh - pad_top + i*dh + dy, ox*sw - pad_left + j*dw + dx)` by bilinear interpolation
    with zeros outside the image, scales it by the mask, and the result is convolved with
    `kernel`. With zero offsets and no mask this is `Conv2D`.

    Args:
        inputs: `(N, H, W, C)` float tensor; C must be known.
        offsets: `(N, Ho, Wo, 2 * offset_groups * kh * kw)`: for offset group g and tap
            (i, j), channel `g*2*kh*kw + 2*(i*kw + j)` is dy and the next one dx.
            `offset_groups` is inferred from this channel count.
        kernel: `(kh, kw, C // groups, filters)`, the Keras Conv2D layout.
        mask: optional `(N, Ho, Wo, offset_groups * kh * kw)` modulation (DCNv2), usually
            a sigmoid output; channel `g*kh*kw + i*kw + j`.
        bias: optional `(filters,)`.
        strides, dilation_rate: int or pair of ints.
        padding: "valid" or "same" (padded exactly as Keras Conv2D pads).
        groups: convolution groups; C and filters must be divisible by it.
        implementation: "auto", "custom_op" or "pure_tf"; see `resolve_implementation`.

    Returns:
        `(N, Ho, Wo, filters)` in the dtype of `inputs`. float16/bfloat16 are computed in
        float32 and cast back.
    """
    strides = normalize_pair(strides, "strides")
    dilation_rate = normalize_pair(dilation_rate, "dilation_rate")
    padding = normalize_padding(padding)
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"`groups` must be a positive int. Received: groups={groups!r}")
    implementation = check_implementation(implementation)

    inputs = tf.convert_to_tensor(inputs)
    if not inputs.dtype.is_floating:
        raise ValueError(f"`inputs` must be a float tensor. Received: dtype={inputs.dtype.name}")
    output_dtype = inputs.dtype
    compute_dtype = tf.float32 if output_dtype in _HALF_DTYPES else output_dtype
    inputs = tf.cast(inputs, compute_dtype)
    offsets = tf.cast(tf.convert_to_tensor(offsets), compute_dtype)
    kernel = tf.cast(tf.convert_to_tensor(kernel), compute_dtype)
    if mask is not None:
        mask = tf.cast(tf.convert_to_tensor(mask), compute_dtype)

    kernel_size, filters, offset_groups = _validate_shapes(inputs, offsets, kernel, mask, groups)
    height, width = _dim(inputs, 1), _dim(inputs, 2)
    pads = (*_pads(height, kernel_size[0], strides[0], dilation_rate[0], padding),
            *_pads(width, kernel_size[1], strides[1], dilation_rate[1], padding))
    offsets, mask = _check_output_size(inputs, offsets, mask, kernel_size, strides, padding,
                                       pads, dilation_rate)

    if resolve_implementation(implementation) == "custom_op":
        outputs = _run_custom_op(inputs, offsets, kernel, mask, strides, pads, dilation_rate,
                                 groups, offset_groups)
    else:
        outputs = deformable_conv2d_pure_tf(
            inputs, offsets, kernel, mask, strides=strides, pads=pads, dilations=dilation_rate,
            groups=groups, offset_groups=offset_groups)
    static_shape = deformable_conv2d_output_shape(
        tuple(inputs.shape), filters, kernel_size, strides, padding, dilation_rate)
    outputs.set_shape(static_shape)

    if bias is not None:
        bias = tf.cast(tf.convert_to_tensor(bias), compute_dtype)
        if bias.shape.rank != 1 or bias.shape[0] != filters:
            raise ValueError(f"`bias` must have shape ({filters},) to match kernel shape "
                             f"{tuple(kernel.shape)}. Received: bias.shape={tuple(bias.shape)}")
        outputs = tf.nn.bias_add(outputs, bias)
    return tf.cast(outputs, output_dtype)


def _pads(size, kernel_size: int, stride: int, dilation: int, padding: str):
    if padding == "same":
        return _same_pads(size, kernel_size, stride, dilation)
    return 0, 0


def _validate_shapes(inputs, offsets, kernel, mask, groups: int):
    """Static checks; returns (kernel_size, filters, offset_groups)."""
    if inputs.shape.rank != 4 or inputs.shape[-1] is None:
        raise ValueError("`inputs` must be (batch, height, width, channels) with known channels. "
                         f"Received: inputs.shape={tuple(inputs.shape)}")
    if kernel.shape.rank != 4 or not kernel.shape.is_fully_defined():
        raise ValueError("`kernel` must have a known shape (kh, kw, channels // groups, filters). "
                         f"Received: kernel.shape={tuple(kernel.shape)}")
    kh, kw, channels_per_group, filters = (int(d) for d in kernel.shape)
    channels = int(inputs.shape[-1])
    if channels != channels_per_group * groups:
        raise ValueError(
            f"The input channels ({channels}) must equal kernel.shape[2] * groups "
            f"({channels_per_group} * {groups}). Received: inputs.shape={tuple(inputs.shape)}, "
            f"kernel.shape={tuple(kernel.shape)}, groups={groups}")
    if filters % groups:
        raise ValueError(f"The number of filters ({filters}) must be divisible by groups "
                         f"({groups}). Received: kernel.shape={tuple(kernel.shape)}")
    taps = kh * kw
    if offsets.shape.rank != 4 or offsets.shape[-1] is None or offsets.shape[-1] % (2 * taps):
        raise ValueError(
            f"`offsets` must be (batch, out_height, out_width, 2 * offset_groups * {kh} * {kw}) "
            f"for a {kh}x{kw} kernel. Received: offsets.shape={tuple(offsets.shape)}")
    offset_groups = int(offsets.shape[-1]) // (2 * taps)
    if offset_groups == 0 or channels % offset_groups:
        raise ValueError(
            f"The input channels ({channels}) must be divisible by offset_groups "
            f"({offset_groups}, from offsets.shape[-1] = 2 * offset_groups * {taps}). "
            f"Received: inputs.shape={tuple(inputs.shape)}, offsets.shape={tuple(offsets.shape)}")
    if mask is not None and (mask.shape.rank != 4 or mask.shape[-1] != offset_groups * taps):
        raise ValueError(
            f"`mask` must be (batch, out_height, out_width, {offset_groups * taps}) "
            f"(offset_groups * kh * kw). Received: mask.shape={tuple(mask.shape)}, "
            f"offsets.shape={tuple(offsets.shape)}")
    return (kh, kw), filters, offset_groups


def _check_output_size(inputs, offsets, mask, kernel_size, strides, padding, pads, dilations):
    """Offsets and mask must be given at the output resolution (and batch) of the conv."""
    expected = [_dim(inputs, 0)]
    for axis in (0, 1):
        size = _dim(inputs, axis + 1)
        span = dilations[axis] * (kernel_size[axis] - 1) + 1
        expected.append((size + pads[2 * axis] + pads[2 * axis + 1] - span) // strides[axis] + 1)
    checked = []
    for name, tensor in (("offsets", offsets), ("mask", mask)):
        if tensor is None:
            checked.append(None)
            continue
        message = (f"`{name}` must have the batch size and the output spatial size of the "
                   f"convolution (kernel_size={kernel_size}, strides={strides}, "
                   f"padding={padding!r}, dilation_rate={dilations}).")
        dynamic = []
        for axis in range(3):
            want, have = expected[axis], tensor.shape[axis]
            if isinstance(want, int) and have is not None:
                if max(want, 0) != have:
                    expected_shape = tuple(e if isinstance(e, int) else None for e in expected)
                    raise ValueError(
                        f"{message} Expected {name}.shape[:3]={expected_shape}. Received: "
                        f"inputs.shape={tuple(inputs.shape)}, {name}.shape={tuple(tensor.shape)}")
            else:
                want = tf.maximum(tf.cast(want, tf.int32), 0)
                dynamic.append(tf.debugging.Assert(
                    tf.equal(want, tf.shape(tensor)[axis]),
                    [message, f"Expected {name}.shape[{axis}]=", want, "Received: inputs.shape=",
                     tf.shape(inputs), f"{name}.shape=", tf.shape(tensor)], summarize=8))
        if dynamic:
            with tf.control_dependencies(dynamic):
                tensor = tf.identity(tensor)
        checked.append(tensor)
    return checked[0], checked[1]


def _run_custom_op(inputs, offsets, kernel, mask, strides, pads, dilations, groups,
                   offset_groups):
    """Calls the compiled op; dynamic "same" pads become an explicit zero pad of the input
    (identical result: the op samples zeros outside the image either way)."""
    module, _ = _load_custom_op()
    if not all(isinstance(p, int) for p in pads):
        inputs = tf.pad(inputs, [[0, 0], [pads[0], pads[1]], [pads[2], pads[3]], [0, 0]])
        pads = (0, 0, 0, 0)
    return module.deformable_conv2d(
        inputs, offsets, kernel, mask, strides=strides, pads=pads, dilations=dilations,
        groups=groups, offset_groups=offset_groups)
