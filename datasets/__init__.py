"""TFDS builders of the image-annotation datasets and a loader for their splits.

Importing this package registers `corel5k`, `espgame`, `iaprtc12` and
`visual_concepts` with TFDS (`tfds.builder(name)`, `tfds build --imports
e2e_tf.datasets <name>`).
"""

from e2e_tf.datasets.corel5k import corel5k_dataset_builder
from e2e_tf.datasets.espgame import espgame_dataset_builder
from e2e_tf.datasets.iaprtc12 import iaprtc12_dataset_builder
from e2e_tf.datasets.loader import DATASETS, SPLITS, in_validation, load, multi_hot
from e2e_tf.datasets.visual_concepts import visual_concepts_dataset_builder
