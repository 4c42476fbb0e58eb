"""A grid like the paper's Fig. 7: each source image, then its GAN's snapshots at increasing iterations.

The command line is `python -m e2e_tf.mlwgan_grid`.
"""

import os
import time
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from e2e_tf.augmentation.augmented_records import load_augmented_dataset, to_uint8
from e2e_tf.augmentation.mlwgan import MLWGANConfig, MultiImageWGAN


def train_snapshots(
    images: np.ndarray,
    config: MLWGANConfig,
    snapshot_iterations: list[int],
    seed: int = 0,
    on_snapshot: Callable[[np.ndarray, int, float], None] | None = None,
) -> tuple[np.ndarray, float]:
    """Trains one GAN per image ([N, S, S, 3] in [0, 255]) all at once.

    Returns the snapshots [N, len(snapshot_iterations), S, S, 3] (uint8) and the training seconds;
    `on_snapshot(snapshots so far, iteration, seconds)` is called after each snapshot.
    """
    model = MultiImageWGAN(len(images), config)
    model.reset(np.stack([np.full(len(images), seed), np.arange(len(images))], axis=1))
    start, done, columns = time.perf_counter(), 0, []
    for iteration in sorted(snapshot_iterations):
        model.train_iterations(images, iteration - done)
        done = iteration
        columns.append(to_uint8(model.sample(iteration)))
        if on_snapshot is not None:
            on_snapshot(np.stack(columns, axis=1), iteration, time.perf_counter() - start)
    return np.stack(columns, axis=1), time.perf_counter() - start


def recorded_snapshots(augmented_dir: os.PathLike, source_names: list[str] | None, limit: int = 4) -> tuple[list[str], np.ndarray, list[int]]:
    """The ML-WGAN snapshots that `python -m e2e_tf.augment` wrote, without training again.

    Returns the source names (`source_names`, or the first `limit` sources found), their snapshots
    [N, T, S, S, 3] uint8 ordered by iteration, and the T iterations (the same for every source).
    """
    found: dict[str, dict[int, np.ndarray]] = {}
    for record in load_augmented_dataset(augmented_dir, with_metadata=True).as_numpy_iterator():
        if record["method"].decode() != "mlwgan":
            continue
        name = record["source_file_name"].decode()
        if source_names is None and name not in found and len(found) == limit:
            continue
        found.setdefault(name, {})[int(record["iteration"])] = record["image"]
    names = source_names if source_names is not None else list(found)
    missing = [n for n in names if n not in found]
    if missing or not names:
        raise ValueError(f"No ML-WGAN snapshots of {missing or 'any image'} in {augmented_dir}.")
    iterations = sorted(found[names[0]])
    if any(sorted(found[n]) != iterations for n in names):
        raise ValueError(f"The sources in {augmented_dir} have snapshots at different iterations.")
    return names, np.stack([[found[n][i] for i in iterations] for n in names]), iterations


def snapshot_grid(sources: np.ndarray, snapshots: np.ndarray, titles: list[str], tile: int = 128) -> Image.Image:
    """Source column then snapshot columns, each tile upscaled (nearest) to `tile` pixels, titles on top."""
    rows, columns = snapshots.shape[0], snapshots.shape[1] + 1
    header, gap = 16, 4
    grid = Image.new("RGB", (columns * (tile + gap) + gap, header + rows * (tile + gap) + gap), "white")
    draw = ImageDraw.Draw(grid)
    for c, title in enumerate(titles):
        draw.text((gap + c * (tile + gap), 2), title, fill="black")
    for r in range(rows):
        for c in range(columns):
            pixels = sources[r] if c == 0 else snapshots[r, c - 1]
            image = Image.fromarray(pixels).resize((tile, tile), Image.NEAREST)
            grid.paste(image, (gap + c * (tile + gap), header + gap + r * (tile + gap)))
    return grid
