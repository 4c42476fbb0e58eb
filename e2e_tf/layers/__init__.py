"""Keras layers of e2e_tf: deformable convolution and spatial pyramid pooling."""

from e2e_tf.layers.deformable_conv2d import DeformableConv2D
from e2e_tf.layers.spatial_pyramid_pooling import SpatialPyramidPooling

__all__ = ["DeformableConv2D", "SpatialPyramidPooling"]
