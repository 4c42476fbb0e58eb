"""The image-annotation evaluator: top-k annotation, per-label P/R, F1, N+ and mAP.

Implements the protocol of the field (Corel5k / ESP Game / IAPR TC-12 papers):

1. Every image is annotated with exactly its `k` highest-scoring labels; ties go
   to the lower label index (as `tf.math.top_k` does). Scores must be finite.
2. Per label `j` over the whole dictionary: `P_j = correct_j / predicted_j`
   (0 when never predicted) and `R_j = correct_j / ground_j` (0 when the label
   has no ground-truth image).
3. `precision` and `recall` are the means of `P_j` and `R_j` over all labels;
   `f1 = 2PR / (P + R)` from those means; `n_plus` counts labels with `R_j > 0`.
4. `map` is the mean over labels with at least one positive image of the
   label's average precision (see `average_precision_per_label`); the number
   of labels left out is `map_excluded_labels`.

Everything is vectorised numpy over an `(N, M)` matrix (N images, M labels).
"""

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class PerLabelStats:
    """Per-label counts and rates of a top-k annotation, each an array of shape `(M,)`.

    Attributes:
      ground_truth: number of images that have the label.
      predicted: number of images annotated with the label (in their top k).
      correct: number of images annotated with the label that have it.
      precision: `correct / predicted`, 0 where the label was never predicted.
      recall: `correct / ground_truth`, 0 where the label has no ground truth.
    """

    ground_truth: np.ndarray
    predicted: np.ndarray
    correct: np.ndarray
    precision: np.ndarray
    recall: np.ndarray


def _as_score_matrix(scores: Any) -> np.ndarray:
    """Checks that `scores` is a finite, real `(N, M)` matrix; returns it as float64."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(
            "`scores` must be a 2-D array of shape (num_images, num_labels). "
            f"Received: scores.shape={scores.shape}"
        )
    if not (np.issubdtype(scores.dtype, np.number) or scores.dtype == bool):
        raise ValueError(f"`scores` must be numeric. Received: scores.dtype={scores.dtype}")
    if np.iscomplexobj(scores):
        raise ValueError(f"`scores` must be real. Received: scores.dtype={scores.dtype}")
    # float64 holds every float32/float16/int32 score exactly, so ties are preserved.
    scores = scores.astype(np.float64, copy=False)
    finite = np.isfinite(scores)
    if not finite.all():
        bad = np.argwhere(~finite)
        first = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"`scores` must be finite, but {len(bad)} entries are NaN or infinite "
            f"(first at [image, label]={list(first)}: {scores[first]}). "
            f"Received: scores.shape={scores.shape}"
        )
    return scores


def _as_label_matrix(y_true: Any, scores_shape: tuple[int, ...]) -> np.ndarray:
    """Checks that `y_true` is a 0/1 matrix shaped like the scores; returns it as bool."""
    y_true = np.asarray(y_true)
    if y_true.shape != tuple(scores_shape):
        raise ValueError(
            "`y_true` and `scores` must have the same shape (num_images, num_labels). "
            f"Received: y_true.shape={y_true.shape}, scores.shape={tuple(scores_shape)}"
        )
    if y_true.dtype == bool:
        return y_true
    if not np.issubdtype(y_true.dtype, np.number):
        raise ValueError(f"`y_true` must be a 0/1 matrix. Received: y_true.dtype={y_true.dtype}")
    is_binary = (y_true == 0) | (y_true == 1)
    if not is_binary.all():
        bad = tuple(int(i) for i in np.argwhere(~is_binary)[0])
        raise ValueError(
            "`y_true` must hold only 0 and 1 (multi-hot labels). "
            f"Received: y_true[{bad[0]}, {bad[1]}]={y_true[bad]} (y_true.shape={y_true.shape})"
        )
    return y_true.astype(bool)


def _check_k(k: Any, num_labels: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"`k` must be a positive integer. Received: k={k!r}")
    if k > num_labels:
        raise ValueError(
            f"`k` must not exceed the number of labels ({num_labels}). Received: k={k}"
        )
    return int(k)


def top_k_annotate(scores: Any, k: int = 5) -> np.ndarray:
    """Annotates each image with its `k` highest-scoring labels.

    Ties break toward the lower label index, like `tf.math.top_k`: a stable sort
    of the negated scores keeps equal scores in index order.

    Args:
      scores: array `(N, M)` of finite real scores (logits or probabilities).
      k: labels per image, `1 <= k <= M`.

    Returns:
      int64 array `(N, k)` of label indices, best first.

    Raises:
      ValueError: if `scores` is not a finite 2-D array or `k` is out of range.
    """
    scores = _as_score_matrix(scores)
    return _top_k_indices(scores, _check_k(k, scores.shape[1]))


def _top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int64)


def _top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean `(N, M)` matrix, True where a label is among the image's top k."""
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, _top_k_indices(scores, k), True, axis=1)
    return mask


def per_label_precision_recall(y_true: Any, scores: Any, k: int = 5) -> PerLabelStats:
    """Per-label counts, precision and recall of the top-`k` annotation.

    Args:
      y_true: 0/1 (or bool) ground-truth matrix `(N, M)`.
      scores: finite real scores `(N, M)`.
      k: labels per image.

    Returns:
      A `PerLabelStats` with arrays of shape `(M,)`.
    """
    scores = _as_score_matrix(scores)
    y_true = _as_label_matrix(y_true, scores.shape)
    return _per_label_stats(y_true, scores, _check_k(k, scores.shape[1]))


def _per_label_stats(y_true: np.ndarray, scores: np.ndarray, k: int) -> PerLabelStats:
    predicted_mask = _top_k_mask(scores, k)
    ground_truth = y_true.sum(axis=0).astype(np.int64)
    predicted = predicted_mask.sum(axis=0).astype(np.int64)
    correct = (predicted_mask & y_true).sum(axis=0).astype(np.int64)
    precision = np.divide(
        correct, predicted, out=np.zeros(correct.shape, np.float64), where=predicted > 0
    )
    recall = np.divide(
        correct, ground_truth, out=np.zeros(correct.shape, np.float64), where=ground_truth > 0
    )
    return PerLabelStats(ground_truth, predicted, correct, precision, recall)


def average_precision_per_label(y_true: Any, scores: Any) -> np.ndarray:
    """Non-interpolated average precision of each label's ranking of the images.

    For label `j` with `n_j > 0` positive images, the images are ranked by their
    score for `j`. Images with equal scores form one group and are cut together
    (so the result does not depend on image order):

        AP_j = sum over groups g of (TP_g - TP_prev) / n_j * TP_g / rank_g

    where `rank_g` is the number of images scoring at least the group's score and
    `TP_g` the positives among them (`TP_prev` that count for the previous group).
    Without ties this is the usual mean, over positives, of the precision at
    each positive's rank; with ties it is the definition scikit-learn's
    `average_precision_score` uses (one precision-recall point per distinct score).
    A constant score column gives `AP_j = n_j / N`.

    Args:
      y_true: 0/1 (or bool) ground-truth matrix `(N, M)`.
      scores: finite real scores `(N, M)`.

    Returns:
      float64 array `(M,)`; NaN for labels without positives (callers exclude them).
    """
    scores = _as_score_matrix(scores)
    return _average_precision(_as_label_matrix(y_true, scores.shape), scores)


def _average_precision(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    num_images, num_labels = scores.shape
    num_positives = y_true.sum(axis=0)
    ap = np.full(num_labels, np.nan)
    if num_images == 0:
        return ap
    order = np.argsort(-scores, axis=0, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=0)
    sorted_positive = np.take_along_axis(y_true, order, axis=0)
    true_positives = np.cumsum(sorted_positive, axis=0)
    # Row i ends a tie group when the next score differs (or it is the last row).
    ends_group = np.ones(scores.shape, dtype=bool)
    ends_group[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    # For every row, the index of the last row of its group: a reverse running minimum.
    row = np.arange(num_images)[:, None]
    end_index = np.where(ends_group, row, num_images)
    group_end = np.minimum.accumulate(end_index[::-1], axis=0)[::-1]
    precision_at_group_end = np.take_along_axis(true_positives, group_end, axis=0) / (group_end + 1)
    has_positives = num_positives > 0
    summed = np.where(sorted_positive, precision_at_group_end, 0.0).sum(axis=0)
    ap[has_positives] = summed[has_positives] / num_positives[has_positives]
    return ap


def annotation_metrics(y_true: Any, scores: Any, k: int = 5) -> dict[str, float | int]:
    """Evaluates a top-`k` annotation against ground truth (the field's protocol).

    Args:
      y_true: 0/1 (or bool) ground-truth matrix `(N, M)`.
      scores: finite real scores `(N, M)`; only their order matters.
      k: labels per image (5 in the literature).

    Returns:
      A dict of python numbers: `precision`, `recall`, `f1`, `n_plus`, `map`,
      `map_excluded_labels`, `num_images`, `num_labels`, `k`. `map` is 0.0 when no
      label has a positive image (then `map_excluded_labels == num_labels`).
    """
    scores = _as_score_matrix(scores)
    y_true = _as_label_matrix(y_true, scores.shape)
    k = _check_k(k, scores.shape[1])
    stats = _per_label_stats(y_true, scores, k)
    precision = float(stats.precision.mean())
    recall = float(stats.recall.mean())
    f1 = 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    ap = _average_precision(y_true, scores)
    included = ~np.isnan(ap)
    num_images, num_labels = scores.shape
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "n_plus": int((stats.recall > 0).sum()),
        "map": float(ap[included].mean()) if included.any() else 0.0,
        "map_excluded_labels": int((~included).sum()),
        "num_images": int(num_images),
        "num_labels": int(num_labels),
        "k": k,
    }
