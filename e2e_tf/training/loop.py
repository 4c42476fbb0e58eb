"""The synchronous data-parallel training loop of an annotation model.

An explicit `strategy.run` loop instead of `Model.fit`: Keras 3's `fit` fails
under `MultiWorkerMirroredStrategy` (tensorflow/tensorflow#72388), and one loop
for every strategy keeps single-device and multi-worker runs identical. It
drives ordinary Keras callbacks (progress bar, TensorBoard, checkpoints).
"""

import math
import time
from typing import Callable, Optional, Sequence

import keras
import tensorflow as tf


def sigmoid_cross_entropy(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example binary cross-entropy on logits, averaged over the labels: `[B]`."""
    per_label = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=tf.cast(logits, tf.float32))
    return tf.reduce_mean(per_label, axis=-1)


class AnnotationTrainer:
    """Trains a logits model with binary cross-entropy plus the model's L2 losses.

    Args:
      model: Keras model, created under `strategy.scope()`, pixels -> logits.
      optimizer: Keras optimizer created under the same scope (a
        `keras.optimizers.LossScaleOptimizer` for mixed precision).
      strategy: the distribution strategy.
      global_batch_size: examples per step over all replicas (the loss is averaged over it).
    """

    def __init__(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        strategy: tf.distribute.Strategy,
        global_batch_size: int,
    ):
        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.global_batch_size = global_batch_size
        self._train_function = self._make_train_function()
        self._sync_function = self._make_sync_function() if strategy.num_replicas_in_sync > 1 else None

    def _make_train_function(self) -> Callable:
        model, optimizer, strategy = self.model, self.optimizer, self.strategy
        scales_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

        def replica_step(pixels, targets):
            with tf.GradientTape() as tape:
                logits = model(pixels, training=True)
                loss = tf.nn.compute_average_loss(
                    sigmoid_cross_entropy(targets, logits), global_batch_size=self.global_batch_size
                )
                regularization = (
                    tf.nn.scale_regularization_loss(tf.add_n([tf.cast(l, tf.float32) for l in model.losses]))
                    if model.losses
                    else tf.constant(0.0)
                )
                total = loss + regularization
                if scales_loss:
                    total = optimizer.scale_loss(total)
            gradients = tape.gradient(total, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return loss, regularization

        @tf.function
        def train_function(iterator):
            loss, regularization = strategy.run(replica_step, args=next(iterator))
            sum_ = tf.distribute.ReduceOp.SUM
            return strategy.reduce(sum_, loss, axis=None), strategy.reduce(sum_, regularization, axis=None)

        return train_function

    def _make_sync_function(self) -> Callable:
        """Averages the non-trainable float variables (BatchNorm moving statistics) over all replicas.

        Gradients are all-reduced every step, so the trainable weights stay identical, but
        each replica updates the moving statistics from its own shard of the batch. Averaging
        them once per epoch gives every worker, the validation and the saved model the same
        statistics (the mean of the per-replica exponential averages).
        """
        strategy = self.strategy
        variables = [v for v in self.model.non_trainable_variables if "float" in str(v.dtype)]

        @tf.function
        def sync_function():
            local_values = strategy.run(lambda: [tf.identity(v.value) for v in variables])
            for variable, value in zip(variables, local_values):
                variable.assign(strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None))

        return sync_function

    def fit(
        self,
        dataset: tf.data.Dataset,
        *,
        epochs: int,
        steps_per_epoch: int,
        initial_epoch: int = 0,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        validate: Optional[Callable[[], dict[str, float]]] = None,
        verbose: int = 1,
    ) -> keras.callbacks.History:
        """Runs epochs `initial_epoch .. epochs - 1` of `steps_per_epoch` steps each.

        Args:
          dataset: infinite batched `(pixels, multi_hot)` training data (global batches).
          epochs: index of the last epoch + 1, as in `Model.fit`.
          steps_per_epoch: optimizer steps per epoch.
          initial_epoch: epoch to start at (a resumed run).
          callbacks: Keras callbacks; the epoch logs hold "loss", "regularization_loss",
            "learning_rate", "images_per_second" and what `validate` returns.
          validate: called after every epoch; its metrics join the epoch logs before
            the callbacks see them.
          verbose: 1 shows the Keras progress bar (rate and ETA), 0 is silent.
        """
        history = keras.callbacks.History()
        callback_list = keras.callbacks.CallbackList(
            [*callbacks, history],
            add_history=False,
            add_progbar=verbose != 0,
            model=self.model,
            verbose=verbose,
            epochs=epochs,
            steps=steps_per_epoch,
        )
        iterator = iter(self.strategy.experimental_distribute_dataset(dataset))
        self.model.stop_training = False
        callback_list.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            callback_list.on_epoch_begin(epoch)
            loss_sum, start = 0.0, time.perf_counter()
            for step in range(steps_per_epoch):
                callback_list.on_train_batch_begin(step)
                loss, regularization = self._train_function(iterator)
                loss_sum += float(loss)
                if not math.isfinite(loss_sum):
                    raise FloatingPointError(
                        f"The training loss became {loss_sum} at epoch {epoch + 1}, step {step + 1}; "
                        "lower --learning_rate or raise --epsilon."
                    )
                logs = {"loss": loss_sum / (step + 1), "regularization_loss": float(regularization)}
                callback_list.on_train_batch_end(step, logs)
            if self._sync_function is not None:
                self._sync_function()
            logs["images_per_second"] = steps_per_epoch * self.global_batch_size / (time.perf_counter() - start)
            logs["learning_rate"] = float(self._current_learning_rate())
            if validate is not None:
                logs.update(validate())
            callback_list.on_epoch_end(epoch, logs)
            if self.model.stop_training:
                break
        callback_list.on_train_end()
        return history

    def _current_learning_rate(self) -> float:
        optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        learning_rate = optimizer.learning_rate
        return float(learning_rate.numpy() if hasattr(learning_rate, "numpy") else learning_rate)
