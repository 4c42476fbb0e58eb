"""Draws the paper's Fig. 7 for real images: each source, then its ML-WGAN's snapshots.

  python -m e2e_tf.mlwgan_grid --images=1000/1000,10000/10001,108000/108001 \
      --image_size=32 --snapshots=100,300,600,1000,1500 --output=runs/mlwgan_fig7.png

`--images` are Corel5k ids (`<folder>/<id>`) under `<shared data>/corel5k/Lihit__SML/DataSet`
(or any JPEG paths relative to `--image_root`); all their GANs train at once (one
`MultiImageWGAN`). Prints the ML-WGAN time per image and rewrites the PNG after every snapshot.
"""

import os
import pathlib

import numpy as np
import tensorflow as tf
from absl import app, flags

from e2e_tf import data_location, preprocessing
from e2e_tf.augmentation.augmented_records import to_uint8
from e2e_tf.augmentation.mlwgan import MLWGANConfig
from e2e_tf.augmentation.snapshot_grid import snapshot_grid, train_snapshots

_IMAGES = flags.DEFINE_list("images", ["1000/1000", "10000/10001", "108000/108001"], "Image ids or relative paths.")
_IMAGE_ROOT = flags.DEFINE_string("image_root", None, "Folder of the images (default: shared Corel5k DataSet).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "GAN image side.")
_FILTERS = flags.DEFINE_integer("filters", 32, "generator_filters = critic_filters.")
_SNAPSHOTS = flags.DEFINE_list("snapshots", ["100", "300", "600", "1000"], "Generator iterations of the snapshots.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the GANs.")
_OUTPUT = flags.DEFINE_string("output", "mlwgan_fig7.png", "Where the PNG goes.")


def main(argv):
    del argv
    root = pathlib.Path(_IMAGE_ROOT.value or data_location.shared_data_dir() / "corel5k" / "Lihit__SML" / "DataSet")
    sources, size = [], _IMAGE_SIZE.value
    for name in _IMAGES.value:
        path = root / (name if pathlib.Path(name).suffix else f"{name}.jpeg")
        if not path.is_file():
            raise app.UsageError(f"--images: no image file {path}")
        pixels = tf.io.decode_image(tf.io.read_file(str(path)), channels=3, expand_animations=False)
        sources.append(preprocessing.resize_image(pixels, (size, size)).numpy())
    sources = np.stack(sources)
    iterations = sorted(int(s) for s in _SNAPSHOTS.value)
    config = MLWGANConfig(image_size=size, generator_filters=_FILTERS.value, critic_filters=_FILTERS.value)
    output = pathlib.Path(_OUTPUT.value)
    output.parent.mkdir(parents=True, exist_ok=True)

    def save(snapshots: np.ndarray, iteration: int, seconds: float) -> None:
        titles = ["source"] + [f"iter {i}" for i in iterations[: snapshots.shape[1]]]
        temporary = output.with_name(f"{output.name}.tmp-{os.getpid()}.png")
        snapshot_grid(to_uint8(sources), snapshots, titles).save(temporary)
        os.replace(temporary, output)  # the grid so far, so a long run shows progress
        print(
            f"iteration {iteration}: {len(sources)} images of {size}x{size} trained together for {seconds:.1f} s = "
            f"{seconds / len(sources):.1f} s per image ({seconds / len(sources) / iteration * 1000:.1f} ms per "
            f"image-iteration). Grid: {output}",
            flush=True,
        )

    train_snapshots(sources, config, iterations, _SEED.value, on_snapshot=save)


if __name__ == "__main__":
    app.run(main)
