"""Tests for the per-label evaluation report (`e2e_tf.evaluation_report`)."""

import os

import numpy as np
import pytest
from PIL import Image

from e2e_tf import evaluation_report

# Top-2 annotation: image 0 -> {sky, water}; image 1 -> {snow, water}; image 2 -> {sky, tree}.
Y_TRUE = np.array(
    [
        [1, 1, 0, 0, 0],
        [0, 1, 0, 0, 0],
        [1, 0, 1, 0, 1],
    ]
)
SCORES = np.array(
    [
        [0.9, 0.8, 0.1, 0.0, 0.05],
        [0.3, 0.6, 0.2, 0.7, 0.1],
        [0.4, 0.1, 0.3, 0.2, 0.0],
    ]
)
NAMES = ["sky", "water", "tree", "snow", "cat"]


def test_csv_rows_hold_counts_precision_and_recall(tmp_path):
    csv_path, _ = evaluation_report.write_per_label_report(
        Y_TRUE, SCORES, NAMES, tmp_path, k=2, label_frequency=[10, 7, 7, 0, 2]
    )
    assert csv_path == tmp_path / "per_label.csv"
    # "snow" has no positive (R 0) and is predicted once, wrongly (P 0);
    # "cat" has a positive but is never predicted (P 0, R 0).
    assert csv_path.read_text() == (
        "label_index,label,frequency,ground_truth,predicted,correct,precision,recall\n"
        "0,sky,10,2,2,2,1.000000,1.000000\n"
        "1,water,7,2,2,2,1.000000,1.000000\n"
        "2,tree,7,1,1,1,1.000000,1.000000\n"
        "3,snow,0,0,1,0,0.000000,0.000000\n"
        "4,cat,2,1,0,0,0.000000,0.000000\n"
    )


def test_frequency_defaults_to_ground_truth_counts_and_precision_is_a_fraction(tmp_path):
    csv_path, _ = evaluation_report.write_per_label_report(Y_TRUE, SCORES, NAMES, tmp_path, k=3)
    rows = [line.split(",") for line in csv_path.read_text().splitlines()[1:]]
    # Top-3 adds: image 0 -> tree (.1, wrong); image 1 -> sky (.3, wrong); image 2 -> snow (.2).
    # sky: predicted 3, correct 2 -> P 2/3.
    assert rows[0] == ["0", "sky", "2", "2", "3", "2", "0.666667", "1.000000"]
    assert [row[2] for row in rows] == ["2", "2", "1", "0", "1"]


def test_png_is_a_valid_readable_image(tmp_path):
    rng = np.random.default_rng(0)
    y_true = rng.random((60, 30)) < 0.15
    scores = rng.random((60, 30))
    names = [f"label{j}" for j in range(30)]
    _, png_path = evaluation_report.write_per_label_report(y_true, scores, names, tmp_path / "new")
    assert png_path == tmp_path / "new" / "per_label.png"
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png_path) as image:
        image.verify()
    with Image.open(png_path) as image:
        assert image.format == "PNG"
        assert 800 <= image.width <= 3000 and 600 <= image.height <= 3000
    # Not blank: a plot has many distinct colours.
    with Image.open(png_path) as image:
        assert len(image.convert("RGB").getcolors(maxcolors=1_000_000)) > 50
    assert os.stat(png_path).st_size > 10_000


def test_writes_replace_existing_files_and_leave_no_temp_files(tmp_path):
    (tmp_path / "per_label.csv").write_text("stale")
    evaluation_report.write_per_label_report(Y_TRUE, SCORES, NAMES, tmp_path, k=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per_label.csv", "per_label.png"]
    assert (tmp_path / "per_label.csv").read_text().startswith("label_index,label,")


def test_wrong_number_of_label_names_raises(tmp_path):
    with pytest.raises(ValueError, match=r"one name per label column \(5\).*len\(label_names\)=4"):
        evaluation_report.write_per_label_report(Y_TRUE, SCORES, NAMES[:4], tmp_path, k=2)
    assert not (tmp_path / "per_label.csv").exists()


def test_wrong_label_frequency_shape_raises(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(5,\).*label_frequency.shape=\(3,\)"):
        evaluation_report.write_per_label_report(
            Y_TRUE, SCORES, NAMES, tmp_path, k=2, label_frequency=[1, 2, 3]
        )


def test_shape_mismatch_is_reported_by_the_evaluator(tmp_path):
    with pytest.raises(ValueError, match=r"y_true.shape=\(3, 5\), scores.shape=\(3, 4\)"):
        evaluation_report.write_per_label_report(Y_TRUE, SCORES[:, :4], NAMES, tmp_path)
