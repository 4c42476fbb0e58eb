"""`python -m e2e_tf.datasets.build` runs TFDS's `build` command on these builders."""

import pathlib

from e2e_tf.datasets import build
from e2e_tf.datasets.iaprtc12 import iaprtc12_dataset_builder


def test_build_command_prepares_a_builder_from_a_manual_dir(tmp_path):
    dummy_data = pathlib.Path(str(iaprtc12_dataset_builder.Builder.pkg_dir_path)) / "dummy_data"
    build.main(["iaprtc12", f"--manual_dir={dummy_data}", f"--data_dir={tmp_path}"])
    prepared = tmp_path / "iaprtc12" / "1.0.0"
    assert (prepared / "dataset_info.json").is_file()
    assert sorted(p.name for p in prepared.glob("*.tfrecord*")) == [
        "iaprtc12-test.tfrecord-00000-of-00001",
        "iaprtc12-train.tfrecord-00000-of-00001",
    ]
