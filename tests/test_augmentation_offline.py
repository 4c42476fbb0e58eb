"""Tests of the offline augmentation runner, the augmented TFRecord files and the bench scripts' flags."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from e2e_tf.augmentation import augmented_records
from e2e_tf.augmentation.mlwgan import MLWGANConfig
from e2e_tf.augmentation.offline import ChangedSettingsError, OfflineSettings, in_shard, run_offline_augmentation

REPO = pathlib.Path(__file__).resolve().parent.parent
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

GAN = MLWGANConfig(image_size=8, noise_dim=8, generator_filters=4, critic_filters=4, batch_size=2, jit_compile=False)
SETTINGS = OfflineSettings(
    method="both", gan=GAN, iterations=3, warmup=2, snapshot_every=1, traditional_copies=2,
    images_per_step=2, log_every=1,
)


def _examples(count=5):
    rng = np.random.default_rng(0)
    return [
        {
            "image": rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8),
            "file_name": f"img{i}.jpeg".encode(),
            "labels": np.array([i, (i + 3) % 7], np.int64)[: 1 + i % 2],
        }
        for i in range(count)
    ]


def _read(output_dir):
    return list(augmented_records.load_augmented_dataset(output_dir, with_metadata=True).as_numpy_iterator())


class _Killed(Exception):
    pass


def test_records_round_trip_with_tfds_element_structure(tmp_path):
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    record = augmented_records.serialize_example(
        image=image, file_name="a#x", labels=[3, 1], source_file_name="a", method="mlwgan", iteration=7, copy=0
    )
    augmented_records.write_records_atomically(tmp_path / "one.tfrecord", [record])
    (element,) = augmented_records.load_augmented_dataset(tmp_path).as_numpy_iterator()
    assert sorted(element) == ["file_name", "image", "labels"]
    np.testing.assert_array_equal(element["image"], image)
    assert element["image"].dtype == np.uint8
    assert element["labels"].tolist() == [3, 1] and element["file_name"] == b"a#x"
    (full,) = _read(tmp_path)
    assert (full["source_file_name"], full["method"], full["iteration"]) == (b"a", b"mlwgan", 7)


def test_empty_directory_error_names_the_folder(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path)):
        augmented_records.load_augmented_dataset(tmp_path)


def test_both_methods_keep_source_labels_sizes_and_counts(tmp_path):
    examples = _examples()
    summary = run_offline_augmentation(examples, tmp_path, SETTINGS, log=lambda _: None)
    records = _read(tmp_path)
    # per source: 2 traditional + 2 snapshots x (1 + 2 traditional) = 8
    assert SETTINGS.images_per_source == 8
    assert summary["records"] == len(records) == 5 * 8
    by_source = {e["file_name"]: e for e in examples}
    for record in records:
        source = by_source[record["source_file_name"]]
        assert record["labels"].tolist() == source["labels"].tolist()
        expected_shape = (12, 10, 3) if record["method"] == b"traditional" else (8, 8, 3)
        assert record["image"].shape == expected_shape and record["image"].dtype == np.uint8
    assert len({r["file_name"] for r in records}) == len(records)
    snapshot_iterations = {r["iteration"] for r in records if r["method"] == b"mlwgan"}
    assert snapshot_iterations == {2, 3}
    assert list((tmp_path / "logs").rglob("events.out.tfevents*"))


def test_killed_run_resumes_without_duplicates_or_losses(tmp_path):
    examples = _examples()
    settings = OfflineSettings(**{**SETTINGS.__dict__, "method": "mlwgan"})
    reference_dir = tmp_path / "reference"
    run_offline_augmentation(examples, reference_dir, settings, log=lambda _: None)
    reference = {r["file_name"]: r["image"] for r in _read(reference_dir)}

    resumed_dir = tmp_path / "resumed"

    def kill_after_first_group(line):
        if "records" in line:  # the line that reports a finished group (GAN progress lines come before)
            raise _Killed(line)

    with pytest.raises(_Killed):
        run_offline_augmentation(examples, resumed_dir, settings, log=kill_after_first_group)
    (resumed_dir / "augmented-s00000-of-00001-g000001.tfrecord.tmp-999").write_bytes(b"partial")
    assert len(_read(resumed_dir)) == 2 * 2  # the first group (2 images x 2 snapshots) survived the kill
    summary = run_offline_augmentation(examples, resumed_dir, settings, log=lambda _: None)
    assert summary["groups_skipped"] == 1 and summary["groups_written"] == 2
    resumed = _read(resumed_dir)
    assert len(resumed) == len({r["file_name"] for r in resumed}) == len(reference)
    for record in resumed:  # deterministic per image: the same pixels as an uninterrupted run
        np.testing.assert_array_equal(record["image"], reference[record["file_name"]])
    assert not list(resumed_dir.glob("*.tmp-*"))


def test_limit_then_full_rerun_and_changed_settings_are_refused(tmp_path):
    settings = OfflineSettings(method="traditional", traditional_copies=1, images_per_step=2)
    run_offline_augmentation(_examples(), tmp_path, settings, limit=2, log=lambda _: None)
    assert len(_read(tmp_path)) == 2
    run_offline_augmentation(_examples(), tmp_path, settings, log=lambda _: None)
    assert sorted(r["source_file_name"] for r in _read(tmp_path)) == [f"img{i}.jpeg".encode() for i in range(5)]
    progress = json.loads((tmp_path / "progress-s00000-of-00001.json").read_text())
    assert sorted(progress["completed_groups"]) == ["0", "1", "2"]
    with pytest.raises(ChangedSettingsError, match="settings") as refused:
        run_offline_augmentation(
            _examples(), tmp_path, OfflineSettings(method="traditional", traditional_copies=2, images_per_step=2)
        )
    # Only what changed, not the two whole settings dicts.
    assert refused.value.differences == {"traditional_copies": (1, 2)}
    assert "traditional_copies: 1 -> 2" in str(refused.value) and "images_per_step" not in str(refused.value)


def test_changed_gan_settings_and_labels_are_named_alone(tmp_path):
    run_offline_augmentation(_examples(2), tmp_path, SETTINGS, label_names=list("abcdefg"), log=lambda _: None)
    changed = OfflineSettings(**{**SETTINGS.__dict__, "gan": MLWGANConfig(**{**GAN.__dict__, "batch_size": 4})})
    with pytest.raises(ChangedSettingsError) as refused:
        run_offline_augmentation(_examples(2), tmp_path, changed, label_names=list("abcdefgh"), log=lambda _: None)
    assert refused.value.differences == {"gan.batch_size": (2, 4), "label_names": (list("abcdefg"), list("abcdefgh"))}
    assert "label_names: [a, b, c, ... (7 items)] -> [a, b, c, ... (8 items)]" in str(refused.value)


def test_shards_partition_the_images(tmp_path):
    names = [f"img{i}.jpeg" for i in range(40)]
    shards = [[n for n in names if in_shard(n, 3, k)] for k in range(3)]
    assert sorted(sum(shards, [])) == sorted(names) and all(shards)
    settings = OfflineSettings(method="traditional", traditional_copies=1, images_per_step=4, num_shards=3, shard_index=1)
    run_offline_augmentation(_examples(12), tmp_path, settings, log=lambda _: None)
    written = {r["source_file_name"].decode() for r in _read(tmp_path)}
    assert written == {f"img{i}.jpeg" for i in range(12) if in_shard(f"img{i}.jpeg", 3, 1)}


def test_settings_validation_names_the_flag():
    with pytest.raises(ValueError, match="warmup"):
        OfflineSettings(method="mlwgan", iterations=10, warmup=20)
    with pytest.raises(ValueError, match="shard_index"):
        OfflineSettings(num_shards=2, shard_index=2)
    with pytest.raises(ValueError, match="num_shards must be >= 1"):
        OfflineSettings(num_shards=0, shard_index=0)


def _run(*command: str) -> subprocess.CompletedProcess:
    """Runs a program of this repository (`-m module` or a script path) with `sys.executable`."""
    return subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)


def _error_line(result: subprocess.CompletedProcess) -> str:
    """The one `e2e_tf.augment: error: ...` line a refused run ends with (exit status 1, no traceback)."""
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("e2e_tf.augment: error: "), result.stderr[-3000:]
    return line


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--dataset=nosuch"], ["--dataset=nosuch", "corel5k, espgame, iaprtc12, visual_concepts"]),
        (["--output_dir={file}"], ["--output_dir={file} is an existing file"]),
        (["--num_shards=2", "--shard_index=5"], ["shard_index=5", "num_shards=2"]),
        (["--warmup=100", "--iterations=50"], ["warmup=100", "iterations=50"]),
    ],
)
def test_augment_user_mistakes_end_with_one_error_line(tmp_path, args, expected):
    file = tmp_path / "a_file"
    file.write_text("")
    fill = lambda text: text.format(file=file)  # noqa: E731
    line = _error_line(_run("-m", "e2e_tf.augment", f"--output_dir={tmp_path / 'out'}", *map(fill, args)))
    for text in map(fill, expected):
        assert text in line


def test_augment_rerun_with_other_flags_names_only_those(tmp_path_factory, tmp_path):
    # The TFDS dir of test_train's smoke runs: the embedded dataset is built once per session.
    tfds_dir = tmp_path_factory.getbasetemp() / "tfds"
    common = (
        "-m", "e2e_tf.augment", f"--data_dir={tfds_dir}", f"--output_dir={tmp_path}",
        "--method=traditional", "--limit=1", "--images_per_step=1",
    )
    first = _run(*common, "--traditional_copies=1")
    assert first.returncode == 0, first.stderr[-3000:]
    line = _error_line(_run(*common, "--traditional_copies=2", "--rmsprop_rho=0.9"))
    assert line == (
        f"e2e_tf.augment: error: --output_dir={tmp_path} holds a run started with other flags "
        "(--rmsprop_rho: 0.99 -> 0.9; --traditional_copies: 1 -> 2). "
        "Use a new --output_dir, or remove that folder to start over."
    )


@pytest.mark.parametrize(
    "script, bad_flag",
    [
        ("deformable_conv_bench.py", "--repeats=0"),
        ("deformable_conv_bench.py", "--repeats=-2"),
        ("export_bench.py", "--batch_sizes=0,32"),
        ("input_pipeline_bench.py", "--steps=0"),
        ("mlwgan_bench.py", "--images=0"),
        ("model_step_bench.py", "--steps=0"),
    ],
)
def test_bench_scripts_reject_counts_below_one(script, bad_flag):
    result = _run(f"bench/{script}", bad_flag)
    assert result.returncode == 1 and f"Flags parsing error: flag {bad_flag.partition('=')[0]}=" in result.stderr
