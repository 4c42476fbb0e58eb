"""Builds a small visual_concepts through the TFDS builder test."""

from unittest import mock

import tensorflow_datasets as tfds

from e2e_tf.datasets.visual_concepts import visual_concepts_dataset_builder


class VisualConceptsTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = visual_concepts_dataset_builder.Builder
    SPLITS = {"train": 6, "test": 3}
    # Nothing is downloaded, so there is no dummy_data/; any existing folder will do.
    EXAMPLE_DIR = str(visual_concepts_dataset_builder.Builder.pkg_dir_path)

    @classmethod
    def setUpClass(cls):
        # The full 2,000/400 build is checked in scenes_test; here a small one suffices.
        cls._sizes = mock.patch.dict(visual_concepts_dataset_builder.SPLIT_SIZES, cls.SPLITS)
        cls._sizes.start()
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        cls._sizes.stop()


if __name__ == "__main__":
    tfds.testing.test_main()
