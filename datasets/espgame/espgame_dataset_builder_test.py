"""Builds espgame from its dummy data (lists, test CSV and train JSON side by side, flat images/)."""

import tensorflow_datasets as tfds

from e2e_tf.datasets.espgame import espgame_dataset_builder


class EspgameTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = espgame_dataset_builder.Builder
    SPLITS = {"train": 3, "test": 2}


if __name__ == "__main__":
    tfds.testing.test_main()
