"""Tests for the annotation evaluator (`e2e_tf.metrics`)."""

import numpy as np
import pytest
import scipy.io

from e2e_tf import data_location
from e2e_tf import metrics


# --- top-k annotation -------------------------------------------------------------------------


def test_top_k_ties_go_to_lower_label_index():
    scores = np.array([[0.5, 0.9, 0.5, 0.5, 0.9, 0.5, 0.1, 0.5]])
    np.testing.assert_array_equal(metrics.top_k_annotate(scores, k=5), [[1, 4, 0, 2, 3]])


def test_top_k_ties_hold_in_float32_and_for_all_equal_scores():
    scores = np.array([[0.5, 0.9, 0.5, 0.5, 0.9, 0.5, 0.1, 0.5], [0.0] * 8], dtype=np.float32)
    np.testing.assert_array_equal(
        metrics.top_k_annotate(scores, k=3), [[1, 4, 0], [0, 1, 2]]
    )


def test_top_k_matches_tf_math_top_k_on_scores_with_many_ties():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(50, 12)).astype(np.float32)
    expected = tf.math.top_k(scores, k=5).indices.numpy()
    np.testing.assert_array_equal(metrics.top_k_annotate(scores, k=5), expected)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_raise(bad):
    scores = np.zeros((3, 6))
    scores[2, 4] = bad
    with pytest.raises(ValueError, match=r"finite.*\[2, 4\].*scores.shape=\(3, 6\)"):
        metrics.top_k_annotate(scores)
    with pytest.raises(ValueError, match="finite"):
        metrics.annotation_metrics(np.zeros((3, 6)), scores)


def test_k_larger_than_number_of_labels_raises():
    with pytest.raises(ValueError, match=r"number of labels \(4\).*k=5"):
        metrics.top_k_annotate(np.zeros((2, 4)), k=5)
    with pytest.raises(ValueError, match=r"k=5"):
        metrics.annotation_metrics(np.zeros((2, 4)), np.zeros((2, 4)), k=5)


@pytest.mark.parametrize("k", [0, -1, 2.0, True])
def test_k_must_be_a_positive_integer(k):
    with pytest.raises(ValueError, match="positive integer"):
        metrics.top_k_annotate(np.zeros((2, 4)), k=k)


def test_scores_must_be_two_dimensional():
    with pytest.raises(ValueError, match=r"2-D.*scores.shape=\(8,\)"):
        metrics.top_k_annotate(np.zeros(8))


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"y_true.shape=\(3, 5\), scores.shape=\(3, 6\)"):
        metrics.annotation_metrics(np.zeros((3, 5)), np.zeros((3, 6)))


def test_non_binary_ground_truth_raises():
    y_true = np.zeros((2, 6))
    y_true[1, 3] = 2
    with pytest.raises(ValueError, match=r"0 and 1.*y_true\[1, 3\]=2"):
        metrics.annotation_metrics(y_true, np.zeros((2, 6)))


# --- hand-computed cases ----------------------------------------------------------------------


def test_hand_computed_k1_with_tie():
    y_true = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.1], [0.5, 0.5, 0.5], [0.1, 0.2, 0.3]])
    # Top-1: image 0 -> 0, image 1 -> 1, image 2 -> 0 (three-way tie, lowest index), image 3 -> 2.
    # label 0: predicted 2, correct 2, ground 2 -> P 1, R 1
    # label 1: predicted 1, correct 1, ground 2 -> P 1, R 1/2
    # label 2: predicted 1, correct 0, ground 1 -> P 0, R 0
    stats = metrics.per_label_precision_recall(y_true, scores, k=1)
    np.testing.assert_array_equal(stats.ground_truth, [2, 2, 1])
    np.testing.assert_array_equal(stats.predicted, [2, 1, 1])
    np.testing.assert_array_equal(stats.correct, [2, 1, 0])
    np.testing.assert_allclose(stats.precision, [1.0, 1.0, 0.0])
    np.testing.assert_allclose(stats.recall, [1.0, 0.5, 0.0])
    result = metrics.annotation_metrics(y_true, scores, k=1)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(1 / 2)
    # F1 from the averaged P and R: 2 * (2/3) * (1/2) / (2/3 + 1/2) = 4/7.
    assert result["f1"] == pytest.approx(4 / 7)
    assert result["n_plus"] == 2
    # AP: label 0 ranks its positives 1st and 2nd -> 1; label 1 likewise -> 1;
    # label 2 (scores .3 .1 .5 .3, positive image 0): image 2 first, then images 0 and 3
    # tied at ranks 2-3 -> one cut at rank 3 holding 1 positive -> AP 1/3.
    np.testing.assert_allclose(metrics.average_precision_per_label(y_true, scores), [1, 1, 1 / 3])
    assert result["map"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert result["map_excluded_labels"] == 0
    assert (result["num_images"], result["num_labels"], result["k"]) == (4, 3, 1)


def test_hand_computed_k2_label_without_positives_and_label_never_predicted():
    y_true = np.array(
        [
            [1, 1, 0, 0, 0],
            [0, 1, 0, 0, 0],
            [1, 0, 1, 0, 1],
        ]
    )
    scores = np.array(
        [
            [0.9, 0.8, 0.1, 0.0, 0.05],
            [0.3, 0.6, 0.2, 0.7, 0.1],
            [0.4, 0.1, 0.3, 0.2, 0.0],
        ]
    )
    # Top-2: image 0 -> {0, 1}; image 1 -> {3, 1}; image 2 -> {0, 2}.
    # labels 0, 1, 2: every prediction correct, every positive found -> P 1, R 1.
    # label 3: no positive image, predicted once -> P 0, R 0 (no NaN).
    # label 4: one positive, never predicted -> P 0, R 0.
    stats = metrics.per_label_precision_recall(y_true, scores, k=2)
    np.testing.assert_array_equal(stats.predicted, [2, 2, 1, 1, 0])
    np.testing.assert_array_equal(stats.correct, [2, 2, 1, 0, 0])
    np.testing.assert_array_equal(stats.ground_truth, [2, 2, 1, 0, 1])
    np.testing.assert_allclose(stats.precision, [1, 1, 1, 0, 0])
    np.testing.assert_allclose(stats.recall, [1, 1, 1, 0, 0])
    result = metrics.annotation_metrics(y_true, scores, k=2)
    assert result["precision"] == pytest.approx(0.6)
    assert result["recall"] == pytest.approx(0.6)
    assert result["f1"] == pytest.approx(0.6)
    assert result["n_plus"] == 3
    # AP: labels 0, 1, 2 rank their positives first -> 1 each; label 4 (scores .05 .1 .0)
    # ranks its positive (image 2) last of 3 -> 1/3; label 3 is excluded.
    assert result["map"] == pytest.approx((1 + 1 + 1 + 1 / 3) / 4)
    assert result["map_excluded_labels"] == 1
    assert all(np.isfinite(v) for v in result.values())


def test_average_precision_textbook_value_without_ties():
    # Positives at ranks 1, 3 and 4 of 5: AP = (1/1 + 2/3 + 3/4) / 3 = 29/36.
    y_true = np.array([[1], [0], [1], [1], [0]])
    scores = np.array([[0.9], [0.8], [0.7], [0.6], [0.5]])
    np.testing.assert_allclose(metrics.average_precision_per_label(y_true, scores), [29 / 36])


def test_average_precision_cuts_tied_scores_together_regardless_of_order():
    # Image 2 (positive) first; images 0 (positive) and 1 tied at ranks 2-3:
    # AP = (1/2) * (1/1 + 2/3) = 5/6, whichever of the tied images comes first.
    y_true = np.array([[1], [0], [1], [0]])
    scores = np.array([[0.5], [0.5], [0.9], [0.1]])
    np.testing.assert_allclose(metrics.average_precision_per_label(y_true, scores), [5 / 6])
    swapped = [1, 0, 2, 3]
    np.testing.assert_allclose(
        metrics.average_precision_per_label(y_true[swapped], scores[swapped]), [5 / 6]
    )


def _average_precision_by_loop(labels, column):
    """AP by its definition: for each distinct score, descending, add dRecall * precision."""
    positives = sum(labels)
    ap, previous_true_positives = 0.0, 0
    for threshold in sorted(set(column), reverse=True):
        selected = [y for y, s in zip(labels, column) if s >= threshold]
        true_positives = sum(selected)
        recall_step = (true_positives - previous_true_positives) / positives
        ap += recall_step * true_positives / len(selected)
        previous_true_positives = true_positives
    return ap


def test_average_precision_matches_definition_on_random_scores_with_ties():
    rng = np.random.default_rng(1)
    y_true = rng.random((40, 6)) < 0.3
    y_true[:, 5] = False
    scores = rng.integers(0, 5, size=(40, 6)).astype(np.float32)
    ap = metrics.average_precision_per_label(y_true, scores)
    for j in range(5):
        expected = _average_precision_by_loop(y_true[:, j].tolist(), scores[:, j].tolist())
        assert ap[j] == pytest.approx(expected)
    assert np.isnan(ap[5])


def test_bool_int_and_float_ground_truth_agree():
    rng = np.random.default_rng(2)
    y_true = rng.random((20, 7)) < 0.4
    scores = rng.normal(size=(20, 7))
    expected = metrics.annotation_metrics(y_true, scores, k=3)
    assert metrics.annotation_metrics(y_true.astype(np.int32), scores, k=3) == expected
    assert metrics.annotation_metrics(y_true.astype(np.float32), scores, k=3) == expected


def test_tens_of_thousands_of_images():
    rng = np.random.default_rng(3)
    y_true = rng.random((20000, 291)) < 0.02
    scores = rng.random((20000, 291)).astype(np.float32)
    result = metrics.annotation_metrics(y_true, scores, k=5)
    assert result["num_images"] == 20000
    # Random scores: each label is predicted for ~5/291 of the images, independent of truth,
    # so precision is near the label rate (0.02) and recall near 5/291.
    assert result["precision"] == pytest.approx(0.02, abs=0.003)
    assert result["recall"] == pytest.approx(5 / 291, abs=0.003)
    assert result["map"] == pytest.approx(0.02, abs=0.005)


# --- real Corel5k -----------------------------------------------------------------------------


def _corel5k_annotations():
    folder = data_location.shared_data_dir() / "corel5k" / "Lihit__SML" / "DataSet"
    train_path = folder / "corel5k_train_annot.mat"
    test_path = folder / "corel5k_test_annot.mat"
    if not (train_path.exists() and test_path.exists()):
        pytest.skip(
            f"real Corel5k annotations not found under {folder} "
            f"(set ${data_location.DATA_DIR_ENV} to the shared data root)"
        )
    train = scipy.io.loadmat(train_path)["annot1"]
    test = scipy.io.loadmat(test_path)["annot2"]
    assert train.shape == (4500, 260) and test.shape == (499, 260)
    return train, test


@pytest.mark.real_data
@pytest.mark.parametrize("tie_break", ["lower_index", "noise"])
def test_real_corel5k_perfect_scores(tie_break):
    train, test = _corel5k_annotations()
    del train
    rng = np.random.default_rng(4)
    noise = rng.random(test.shape) * 1e-3 if tie_break == "noise" else np.zeros(test.shape)
    scores = test + noise
    # Each test image has 1..5 labels, so all its labels are in its top 5 and the remaining
    # slots go to the non-labels with the highest noise (lowest index without noise).
    num_images, num_labels = test.shape
    ground = [0] * num_labels
    predicted = [0] * num_labels
    for i in range(num_images):
        labels = [j for j in range(num_labels) if test[i, j]]
        others = sorted(
            (j for j in range(num_labels) if not test[i, j]), key=lambda j: (-noise[i, j], j)
        )
        for j in labels + others[: 5 - len(labels)]:
            predicted[j] += 1
        for j in labels:
            ground[j] += 1
    expected_precision = sum(g / p for g, p in zip(ground, predicted)) / num_labels
    result = metrics.annotation_metrics(test, scores, k=5)
    # Every one of the 260 labels occurs in the Corel5k test split (data README).
    assert result["recall"] == pytest.approx(1.0)
    assert result["n_plus"] == 260
    assert result["precision"] == pytest.approx(expected_precision)
    assert result["f1"] == pytest.approx(2 * expected_precision / (expected_precision + 1))
    assert result["map"] == pytest.approx(1.0)
    assert result["map_excluded_labels"] == 0
    # Top-5 precision cannot reach 1 on Corel5k: images have at most 5 labels, mean 3.519.
    assert result["precision"] < 1.0


@pytest.mark.real_data
def test_real_corel5k_constant_predictor_of_most_frequent_training_labels():
    train, test = _corel5k_annotations()
    num_images, num_labels = test.shape
    train_frequency = [int(sum(int(v) for v in train[:, j])) for j in range(num_labels)]
    most_frequent = sorted(range(num_labels), key=lambda j: (-train_frequency[j], j))[:5]
    scores = np.tile(np.asarray(train_frequency, np.float64), (num_images, 1))

    # The same 5 labels for every image: label j in them is predicted N times and is correct
    # on its test positives; every other label is never predicted (P = R = 0).
    test_count = [sum(int(test[i, j]) for i in range(num_images)) for j in range(num_labels)]
    precision = sum(test_count[j] / num_images for j in most_frequent) / num_labels
    recall = sum(1.0 for j in most_frequent if test_count[j] > 0) / num_labels
    # A constant score column is one tie group: AP_j = positives / N.
    with_positives = [j for j in range(num_labels) if test_count[j] > 0]
    mean_ap = sum(test_count[j] / num_images for j in with_positives) / len(with_positives)

    result = metrics.annotation_metrics(test, scores, k=5)
    assert result["precision"] == pytest.approx(precision)
    assert result["recall"] == pytest.approx(recall)
    assert result["recall"] == pytest.approx(5 / 260)  # all 260 labels occur in test
    assert result["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert result["n_plus"] == 5
    assert result["map"] == pytest.approx(mean_ap)
    # Mean AP of constant scores = mean label rate = mean labels per test image / 260.
    assert result["map"] == pytest.approx(test.sum() / num_images / num_labels)
    assert result["map_excluded_labels"] == 0
    np.testing.assert_array_equal(
        np.sort(metrics.top_k_annotate(scores[:1], k=5)[0]), np.sort(most_frequent)
    )
