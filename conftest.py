"""Project-wide pytest set-up.

The TFDS builders live in `datasets/` but are installed as `e2e_tf.datasets`;
their tests are collected under that package name, so that no module named
`datasets` (which would shadow Hugging Face `datasets`) ever enters
`sys.modules`. Also holds the fixtures for the real data.
"""

import importlib
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


_PROJECT_ROOT = pathlib.Path(__file__).resolve().parent
_PACKAGE_FOLDERS = {"datasets": "e2e_tf.datasets"}


def _installed_parts(path: pathlib.Path) -> tuple[str, ...] | None:
    """`path` as (installed package, sub-path parts...) when it lies in a remapped folder, else None."""
    try:
        parts = pathlib.Path(path).resolve().relative_to(_PROJECT_ROOT).parts
    except ValueError:
        return None
    if not parts or parts[0] not in _PACKAGE_FOLDERS:
        return None
    return (_PACKAGE_FOLDERS[parts[0]], *parts[1:])


class _InstalledPackageModule(pytest.Module):
    """A test module imported by its installed package name, not by its folder name."""

    def _getobj(self):
        parts = _installed_parts(self.path)
        return importlib.import_module(".".join((*parts[:-1], pathlib.Path(parts[-1]).stem)))


def pytest_pycollect_makemodule(module_path: pathlib.Path, parent):
    if _installed_parts(module_path) is None:
        return None
    return _InstalledPackageModule.from_parent(parent, path=module_path)


def pytest_collect_directory(path: pathlib.Path, parent):
    # A plain directory collector: pytest's Package collector would import
    # datasets/__init__.py under the top-level name `datasets`.
    if _installed_parts(path) is None:
        return None
    return pytest.Dir.from_parent(parent, path=path)
