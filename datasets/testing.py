"""Helpers for the dataset tests: timed builds and manual dirs with stand-in images."""

from __future__ import annotations

import io
import os
import pathlib
import shutil
import time

import tensorflow_datasets as tfds
from PIL import Image

from e2e_tf.datasets import loader

# Where the real Corel5k sits under `e2e_tf.data_location.shared_data_dir()`.
COREL5K_DIR = loader.SHARED_MANUAL_DIRS["corel5k"]


def prepare(name: str, data_dir: pathlib.Path, manual_dir: pathlib.Path) -> tfds.core.DatasetBuilder:
    """Prepares `name` and prints the build time and split sizes (shown with `pytest -s`)."""
    builder = tfds.builder(name, data_dir=str(data_dir))
    start = time.perf_counter()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    print(f"\n{name}: built in {time.perf_counter() - start:.1f} s; splits {builder.info.splits}")
    return builder


def stand_in_manual_dir(
    target: pathlib.Path, annotation_files: list[pathlib.Path], image_paths: list[str]
) -> pathlib.Path:
    """A manual dir with copies of real annotation files and a tiny JPEG at each image path.

    Every stand-in is the same 8x8 JPEG, encoded once, so ~20k of them take
    seconds to write.
    """
    target.mkdir(parents=True, exist_ok=True)
    for path in annotation_files:
        shutil.copyfile(path, target / path.name)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (40, 120, 200)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    for relative in image_paths:
        path = os.path.join(target, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return target
