"""Builds iaprtc12 from its dummy data (TagProp .hvecs layout, images/<folder>/<id>.jpg)."""

import tensorflow_datasets as tfds

from e2e_tf.datasets.iaprtc12 import iaprtc12_dataset_builder


class Iaprtc12Test(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = iaprtc12_dataset_builder.Builder
    SPLITS = {"train": 3, "test": 2}


if __name__ == "__main__":
    tfds.testing.test_main()
