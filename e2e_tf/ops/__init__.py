"""Tensor operations of e2e_tf that Keras does not provide."""

from e2e_tf.ops.deformable_conv2d import deformable_conv2d
from e2e_tf.ops.deformable_conv2d import implementation_scope
from e2e_tf.ops.deformable_conv2d import resolve_implementation

__all__ = ["deformable_conv2d", "implementation_scope", "resolve_implementation"]
