"""Tests of the Fig. 7 style snapshot grid."""

import numpy as np
import pytest

from e2e_tf.augmentation.augmented_records import RECORD_SUFFIX, serialize_example, write_records_atomically
from e2e_tf.augmentation.mlwgan import MLWGANConfig
from e2e_tf.augmentation.snapshot_grid import recorded_snapshots, snapshot_grid, train_snapshots


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


def _record(source: str, method: str, iteration: int, value: int) -> bytes:
    return serialize_example(
        image=np.full((4, 4, 3), value, np.uint8), file_name=f"{source}#{method}{iteration}", labels=[1],
        source_file_name=source, method=method, iteration=iteration, copy=0,
    )


def test_recorded_snapshots_are_grouped_by_source_and_ordered_by_iteration(tmp_path):
    records = [_record("b", "mlwgan", 20, 21), _record("a", "mlwgan", 20, 11), _record("a", "traditional", 0, 99),
               _record("b", "mlwgan", 10, 20), _record("a", "mlwgan", 10, 10), _record("c", "mlwgan", 10, 30)]
    write_records_atomically(tmp_path / f"augmented-g0{RECORD_SUFFIX}", records)
    names, snapshots, iterations = recorded_snapshots(tmp_path, None, limit=2)
    assert names == ["b", "a"] and iterations == [10, 20]  # "c" is beyond the limit; traditional copies are ignored
    np.testing.assert_array_equal(snapshots[:, :, 0, 0, 0], [[20, 21], [10, 11]])
    names, snapshots, _ = recorded_snapshots(tmp_path, ["a"])
    np.testing.assert_array_equal(snapshots[0, :, 0, 0, 0], [10, 11])
    with pytest.raises(ValueError, match="different iterations"):
        recorded_snapshots(tmp_path, ["a", "c"])
    with pytest.raises(ValueError, match=r"\['zzz'\]"):
        recorded_snapshots(tmp_path, ["zzz"])
