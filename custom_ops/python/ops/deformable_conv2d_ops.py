"""Loader and Python function for the compiled `E2eTf>DeformableConv2D` op.

The shared library is built by `pip install` of the project (setup.py) and lives
next to this file; a Bazel build can point at its own with the environment variable
E2E_TF_DEFORMABLE_OP_LIBRARY. Loading is lazy and never raises: when the library
is missing or does not load (no compiler at install time, another TF version),
`is_available()` is False, `load_error()` says why, and `e2e_tf.ops.deformable_conv2d`
falls back to its pure-TensorFlow implementation. Most users call that function or the
`e2e_tf.layers.DeformableConv2D` layer rather than this module.
"""

from __future__ import annotations

import os
import threading
from typing import Optional, Sequence

import tensorflow as tf

LIBRARY_NAME = "_deformable_conv2d_ops.so"
LIBRARY_ENV = "E2E_TF_DEFORMABLE_OP_LIBRARY"
OP_NAME = "E2eTf>DeformableConv2D"

_lock = threading.Lock()
_library = None
_load_error: Optional[str] = None
_loaded = False


def library_path() -> str:
    """The library's path: $E2E_TF_DEFORMABLE_OP_LIBRARY, else next to this file."""
    return os.environ.get(LIBRARY_ENV) or os.path.join(os.path.dirname(__file__), LIBRARY_NAME)


def _load():
    """Loads the library once; returns it or None (the reason goes to `load_error()`)."""
    global _library, _load_error, _loaded
    with _lock:
        if not _loaded:
            _loaded = True
            path = library_path()
            if not os.path.exists(path):
                _load_error = _missing_library_error(path)
            else:
                try:
                    _library = tf.load_op_library(path)
                except Exception as error:  # noqa: BLE001 - e.g. built for another TF version
                    _load_error = f"{path} failed to load: {error}"
        return _library


def _missing_library_error(path: str) -> str:
    """Why `path` is missing: a wrong $E2E_TF_DEFORMABLE_OP_LIBRARY, or no build at install time."""
    if os.environ.get(LIBRARY_ENV):
        return (f"${LIBRARY_ENV} points at {path}, a file that does not exist (unset it to use the "
                f"library built at install time, or point it at a built {LIBRARY_NAME})")
    return (f"{path} does not exist: the op was not compiled when the project was installed "
            "(no C++ compiler, or the build failed)")


def is_available() -> bool:
    """True when the compiled op library loads in this process."""
    return _load() is not None


def load_error() -> Optional[str]:
    """Why the library is not available, or None when it is."""
    _load()
    return _load_error


def _pair(value: Sequence[int], name: str) -> list[int]:
    pair = [int(v) for v in value]
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"`{name}` must be a pair of positive ints. Received: {name}={value!r}")
    return pair


@tf.autograph.experimental.do_not_convert
def deformable_conv2d(inputs: tf.Tensor, offsets: tf.Tensor, kernel: tf.Tensor,
                      mask: Optional[tf.Tensor], *, strides: Sequence[int],
                      pads: Sequence[int], dilations: Sequence[int], groups: int,
                      offset_groups: int, chunk_rows: int = 0) -> tf.Tensor:
    """Deformable 2-D convolution with the compiled op (no bias).

    Args:
        inputs: (N, H, W, C) float16, bfloat16, float32 or float64.
        offsets: (N, Ho, Wo, 2 * offset_groups * kh * kw), interleaved (dy, dx) per tap.
        kernel: (kh, kw, C / groups, F), the Keras Conv2D layout.
        mask: (N, Ho, Wo, offset_groups * kh * kw) modulation (DCNv2), or None.
        strides: (h, w).
        pads: explicit zero padding (top, bottom, left, right).
        dilations: (h, w).
        groups: convolution groups (C and F divisible by it).
        offset_groups: groups of input channels sharing one offset field.
        chunk_rows: output pixels per column-buffer chunk; 0 picks the chunk from a fixed
            memory budget (tests set it small to cross chunk boundaries).

    Returns:
        (N, Ho, Wo, F), the dtype of `inputs`. Differentiable w.r.t. all four inputs.

    Raises:
        RuntimeError: the library is not available (see `load_error()`).
    """
    library = _load()
    if library is None:
        raise RuntimeError(f"The compiled DeformableConv2D op is not available: {_load_error}")
    pads = [int(p) for p in pads]
    if len(pads) != 4 or min(pads) < 0:
        raise ValueError("`pads` must be 4 non-negative ints (top, bottom, left, right). "
                         f"Received: pads={pads!r}")
    inputs = tf.convert_to_tensor(inputs)
    use_mask = mask is not None
    mask = (tf.convert_to_tensor(mask, dtype=inputs.dtype) if use_mask
            else tf.zeros([0], dtype=inputs.dtype))
    return library.e2e_tf_deformable_conv2d(
        inputs, tf.convert_to_tensor(offsets, dtype=inputs.dtype),
        tf.convert_to_tensor(kernel, dtype=inputs.dtype), mask,
        strides=_pair(strides, "strides"), pads=pads, dilations=_pair(dilations, "dilations"),
        groups=int(groups), offset_groups=int(offset_groups), use_mask=use_mask,
        chunk_rows=int(chunk_rows))


@tf.RegisterGradient(OP_NAME)
def _deformable_conv2d_grad(op, grad):
    """Gradients of input, offsets, kernel and mask (None without one), from one op."""
    attrs = {name: op.get_attr(name) for name in (
        "strides", "pads", "dilations", "groups", "offset_groups", "use_mask", "chunk_rows")}
    grad_input, grad_offsets, grad_mask, grad_kernel = _load().e2e_tf_deformable_conv2d_grad(
        *op.inputs, grad, **attrs)
    return grad_input, grad_offsets, grad_kernel, (grad_mask if attrs["use_mask"] else None)
