"""Draws the paper's Fig. 7 for real images: each source, then its ML-WGAN's snapshots.

  python -m e2e_tf.mlwgan_grid --images=1000/1000,10000/10001,108000/108001 \
      --image_size=32 --snapshots=100,300,600,1000,1500 --output=runs/mlwgan_fig7.png

`--images` are Corel5k ids (`<folder>/<id>`) under `<shared data>/corel5k/Lihit__SML/DataSet`
(or any JPEG paths relative to `--image_root`); all their GANs train at once (one
`MultiImageWGAN`). Prints the ML-WGAN time per image and rewrites the PNG after every snapshot.

With `--augmented_dir` it trains nothing and draws the snapshots that `python -m e2e_tf.augment`
wrote there (for `--images`, or the first 4 sources in the records):

  python -m e2e_tf.mlwgan_grid --augmented_dir=runs/corel5k_aug --output=runs/mlwgan_fig7.png
"""

import os
import pathlib
import sys

import numpy as np
import tensorflow as tf
from absl import app, flags

from e2e_tf import data_location, preprocessing
from e2e_tf.augmentation.augmented_records import to_uint8
from e2e_tf.augmentation.mlwgan import MLWGANConfig
from e2e_tf.augmentation.snapshot_grid import recorded_snapshots, snapshot_grid, train_snapshots

_DEFAULT_IMAGES = ["1000/1000", "10000/10001", "108000/108001"]
_IMAGES = flags.DEFINE_list("images", None, f"Image ids or relative paths (default {','.join(_DEFAULT_IMAGES)}).")
_AUGMENTED_DIR = flags.DEFINE_string("augmented_dir", None, "Draw the snapshots recorded here by e2e_tf.augment.")
_IMAGE_ROOT = flags.DEFINE_string("image_root", None, "Folder of the images (default: shared Corel5k DataSet).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "GAN image side.")
_FILTERS = flags.DEFINE_integer("filters", 32, "generator_filters = critic_filters.")
_SNAPSHOTS = flags.DEFINE_list("snapshots", ["100", "300", "600", "1000"], "Generator iterations of the snapshots.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the GANs.")
_OUTPUT = flags.DEFINE_string("output", "mlwgan_fig7.png", "Where the PNG goes.")


def _source_images(names: list[str], size: int) -> np.ndarray:
    """The named images resized to `size` x `size`, float [N, size, size, 3] in [0, 255]."""
    root = pathlib.Path(_IMAGE_ROOT.value or data_location.shared_data_dir() / "corel5k" / "Lihit__SML" / "DataSet")
    sources = []
    for name in names:
        path = root / (name if pathlib.Path(name).suffix else f"{name}.jpeg")
        if not path.is_file():
            sys.exit(f"e2e_tf.mlwgan_grid: error: --images: no image file {path}")
        pixels = tf.io.decode_image(tf.io.read_file(str(path)), channels=3, expand_animations=False)
        sources.append(preprocessing.resize_image(pixels, (size, size)).numpy())
    return np.stack(sources)


def _save_grid(output: pathlib.Path, sources: np.ndarray, snapshots: np.ndarray, iterations: list[int]) -> None:
    titles = ["source"] + [f"iter {i}" for i in iterations[: snapshots.shape[1]]]
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f"{output.name}.tmp-{os.getpid()}.png")
    snapshot_grid(to_uint8(sources), snapshots, titles).save(temporary)
    os.replace(temporary, output)


def main(argv):
    del argv
    output = pathlib.Path(_OUTPUT.value)
    if _AUGMENTED_DIR.value:
        try:
            names, snapshots, iterations = recorded_snapshots(_AUGMENTED_DIR.value, _IMAGES.value)
        except ValueError as e:
            sys.exit(f"e2e_tf.mlwgan_grid: error: {e}")
        _save_grid(output, _source_images(names, snapshots.shape[2]), snapshots, iterations)
        print(f"Snapshots of {', '.join(names)} at iterations {iterations}. Grid: {output}")
        return
    size = _IMAGE_SIZE.value
    sources = _source_images(_IMAGES.value or _DEFAULT_IMAGES, size)
    iterations = sorted(int(s) for s in _SNAPSHOTS.value)
    config = MLWGANConfig(image_size=size, generator_filters=_FILTERS.value, critic_filters=_FILTERS.value)

    def save(snapshots: np.ndarray, iteration: int, seconds: float) -> None:
        _save_grid(output, sources, snapshots, iterations)  # the grid so far, so a long run shows progress
        print(
            f"iteration {iteration}: {len(sources)} images of {size}x{size} trained together for {seconds:.1f} s = "
            f"{seconds / len(sources):.1f} s per image ({seconds / len(sources) / iteration * 1000:.1f} ms per "
            f"image-iteration). Grid: {output}",
            flush=True,
        )

    train_snapshots(sources, config, iterations, _SEED.value, on_snapshot=save)


if __name__ == "__main__":
    app.run(main)
