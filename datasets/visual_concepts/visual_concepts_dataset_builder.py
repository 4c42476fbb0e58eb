"""visual_concepts: procedurally drawn multi-label scenes, the embedded default dataset."""

import io

import numpy as np
from etils import epath
import tensorflow_datasets as tfds
from PIL import Image

from e2e_tf.datasets.visual_concepts import scenes

IMAGE_SIZE = 64
SEED = 20190101
SPLIT_SIZES = {"train": 2000, "test": 400}


class Builder(tfds.core.GeneratorBasedBuilder):
    """64x64 scenes (sky/ground or indoor, sun, clouds, coloured textured shapes), 33 words.

    Needs no download: every image is drawn from a random generator seeded by
    (SEED, split, index), so each build gives the same bytes on every machine.
    """

    # setup.py installs datasets/ as e2e_tf.datasets, so TFDS cannot infer this
    # builder's folder (README.md, CITATIONS.bib, dummy_data/) from its module name.
    code_path = epath.Path(__file__)
    pkg_dir_path = code_path.parent
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "2,000 train / 400 test scenes of 64x64 pixels."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
                    "file_name": tfds.features.Text(),
                    "labels": tfds.features.Sequence(
                        tfds.features.ClassLabel(names=scenes.VOCABULARY)
                    ),
                }
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Nothing to download.
        return {
            split: self._generate_examples(split_index, split, size)
            for split_index, (split, size) in enumerate(SPLIT_SIZES.items())
        }

    def _generate_examples(self, split_index: int, split: str, size: int):
        for index in range(size):
            image, words = scenes.render_scene(
                np.random.default_rng([SEED, split_index, index]), IMAGE_SIZE
            )
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            file_name = f"{split}/{index:05d}.png"
            yield file_name, {"image": buffer.getvalue(), "file_name": file_name, "labels": words}
