"""Scoring a model on a labelled dataset with the field's top-5 protocol (`e2e_tf.metrics`)."""

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from e2e_tf import metrics


def make_predict_function(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """A compiled `pixels -> probabilities` function.

    It runs outside any `strategy.run`, on this process only, so every worker of a
    multi-worker job can score the validation set by itself (Keras' `predict` would
    shard the data across workers).
    """

    @tf.function(reduce_retracing=True)
    def predict(pixels):
        return tf.sigmoid(tf.cast(model(pixels, training=False), tf.float32))

    return predict


def predict_scores(predict: Callable[[tf.Tensor], tf.Tensor], dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Runs `predict` over a `(pixels, multi_hot)` dataset; returns `(y_true, scores)` arrays."""
    truths, scores = [], []
    for pixels, targets in dataset:
        scores.append(predict(pixels).numpy())
        truths.append(targets.numpy())
    if not scores:
        raise ValueError("Cannot score an empty dataset.")
    return np.concatenate(truths), np.concatenate(scores)


def constant_predictor_scores(label_counts: np.ndarray, num_images: int) -> np.ndarray:
    """Scores of the baseline that annotates every image with the most frequent training labels."""
    return np.tile(np.asarray(label_counts, np.float64)[None, :], (num_images, 1))


class ValidationScorer:
    """Computes top-k P/R/F1/N+/mAP of the current model on a validation dataset.

    Args:
      model: the model being trained.
      dataset: batched `(pixels, multi_hot)` validation data.
      k: labels annotated per image.
    """

    def __init__(self, model: keras.Model, dataset: tf.data.Dataset, k: int = 5):
        self._predict = make_predict_function(model)
        self._dataset = dataset
        self._k = k

    def __call__(self) -> dict[str, float]:
        y_true, scores = predict_scores(self._predict, self._dataset)
        result = metrics.annotation_metrics(y_true, scores, k=self._k)
        return {f"val_{name}": float(result[name]) for name in ("precision", "recall", "f1", "n_plus", "map")}
