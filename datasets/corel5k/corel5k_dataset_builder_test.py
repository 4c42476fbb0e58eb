"""Builds corel5k from its dummy data (.mat layout, a CRLF train list and an image without labels)."""

import tensorflow_datasets as tfds

from e2e_tf.datasets.corel5k import corel5k_dataset_builder


class Corel5kTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = corel5k_dataset_builder.Builder
    SPLITS = {"train": 3, "test": 2}


if __name__ == "__main__":
    tfds.testing.test_main()
