"""The `datasets/` folder is installed as `e2e_tf.datasets`, never as a top-level `datasets`."""

import subprocess
import sys


def test_importing_e2e_tf_adds_no_top_level_datasets_module():
    code = (
        "import sys, e2e_tf, e2e_tf.datasets;"
        "assert 'datasets' not in sys.modules, sorted(m for m in sys.modules if m.startswith('datasets'));"
        "print(e2e_tf.datasets.__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("e2e_tf.datasets")


def test_the_test_session_never_imported_a_top_level_datasets_module():
    # The builder tests under datasets/ are collected as e2e_tf.datasets.* by conftest.py.
    assert "datasets" not in sys.modules
