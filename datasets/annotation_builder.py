"""The TFDS builder shared by the manually downloaded annotation datasets."""

from __future__ import annotations

import pathlib
from typing import ClassVar

from absl import logging
import tensorflow_datasets as tfds

from e2e_tf.datasets import annotation_layouts
from e2e_tf.datasets import image_files


class AnnotationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images with multi-label annotations over a fixed vocabulary.

    A subclass sets `pkg_dir_path` to its folder, names its files
    (`FILE_NAMES`), ships its vocabulary there as `vocabulary.txt` (so `info`
    works before the data is there; the manual dir's vocabulary must equal it)
    and gives the published split sizes (a different count is logged, not
    refused, so that subsets build). The manual directory may be the dataset
    folder itself or hold it as `<name>/`.

    Features: `image` (the RGB image at its own size), `file_name` (the list
    entry, e.g. `1000/1000`) and `labels` (indices into the vocabulary; an
    image may have none).
    """

    FILE_NAMES: ClassVar[annotation_layouts.FileNames]
    SPLIT_SIZES: ClassVar[dict[str, int]]
    HOMEPAGE: ClassVar[str]

    @classmethod
    def vocabulary_path(cls) -> pathlib.Path:
        return pathlib.Path(str(cls.pkg_dir_path)) / "vocabulary.txt"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "file_name": tfds.features.Text(),
                    "labels": tfds.features.Sequence(
                        tfds.features.ClassLabel(names_file=str(self.vocabulary_path()))
                    ),
                }
            ),
            homepage=self.HOMEPAGE,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = pathlib.Path(str(dl_manager.manual_dir))
        if (manual_dir / self.name).is_dir():
            manual_dir = manual_dir / self.name
        annotations = annotation_layouts.read_annotations(manual_dir, self.FILE_NAMES)
        expected = self.info.features["labels"].feature.names
        if annotations.vocabulary != expected:
            raise ValueError(
                f"The vocabulary in {manual_dir} ({len(annotations.vocabulary)} words) is not "
                f"the {self.name} vocabulary shipped in {self.vocabulary_path()} "
                f"({len(expected)} words); these files are of another dataset or label set."
            )
        for split, split_annotations in annotations.splits.items():
            if len(split_annotations.entries) != self.SPLIT_SIZES[split]:
                logging.warning(
                    "%s: %d %s images; the published %s %s split has %d.",
                    split_annotations.sources[0], len(split_annotations.entries), split,
                    self.name, split, self.SPLIT_SIZES[split],
                )
        images = image_files.ImageIndex(manual_dir)
        # Every image is looked up before anything is written, so a missing one
        # fails the build at once.
        return {
            split: self._generate_examples(
                split_annotations, [images.find(e) for e in split_annotations.entries]
            )
            for split, split_annotations in annotations.splits.items()
        }

    def _generate_examples(
        self, annotations: annotation_layouts.SplitAnnotations, paths: list[str]
    ):
        for entry, path, row in zip(annotations.entries, paths, annotations.labels):
            yield entry, {
                "image": image_files.encoded_rgb(path),
                "file_name": entry,
                "labels": row.nonzero()[0].tolist(),
            }
