"""Tests of the Fig. 7 style snapshot grid."""

import numpy as np

from e2e_tf.augmentation.mlwgan import MLWGANConfig
from e2e_tf.augmentation.snapshot_grid import snapshot_grid, train_snapshots


def test_grid_has_source_and_one_column_per_snapshot():
    sources = np.random.default_rng(0).uniform(0, 255, size=(2, 8, 8, 3)).astype(np.float32)
    config = MLWGANConfig(image_size=8, noise_dim=8, generator_filters=4, critic_filters=4, batch_size=2, jit_compile=False)
    seen = []
    snapshots, seconds = train_snapshots(sources, config, [2, 1], on_snapshot=lambda s, it, _: seen.append((s.shape, it)))
    assert snapshots.shape == (2, 2, 8, 8, 3) and snapshots.dtype == np.uint8 and seconds > 0
    assert seen == [((2, 1, 8, 8, 3), 1), ((2, 2, 8, 8, 3), 2)]
    grid = snapshot_grid(sources.astype(np.uint8), snapshots, ["source", "1", "2"], tile=16)
    assert grid.size == (3 * (16 + 4) + 4, 16 + 2 * (16 + 4) + 4)
    top_left_tile = np.asarray(grid)[16 + 4 : 16 + 4 + 16, 4 : 4 + 16]
    np.testing.assert_array_equal(top_left_tile[::2, ::2], sources[0].astype(np.uint8))
