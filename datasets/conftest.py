"""Fixtures for the dataset tests: the real data location and a real Corel5k shared by the session."""

import pathlib

import pytest
import tensorflow_datasets as tfds

import e2e_tf.datasets  # noqa: F401  (registers the builders)
from e2e_tf import data_location
from e2e_tf.datasets import testing


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The real datasets tree ($E2E_TF_DATA_DIR or ../shared/data); skips when absent."""
    root = data_location.shared_data_dir()
    if not (root / testing.COREL5K_DIR).is_dir():
        pytest.skip(f"real datasets not found under {root} (set ${data_location.DATA_DIR_ENV})")
    return root


@pytest.fixture(scope="session")
def corel5k_real(shared_data, tmp_path_factory) -> tfds.core.DatasetBuilder:
    """The full real Corel5k, prepared once per session from the .mat layout."""
    return testing.prepare("corel5k", tmp_path_factory.mktemp("tfds"), shared_data / testing.COREL5K_DIR)
