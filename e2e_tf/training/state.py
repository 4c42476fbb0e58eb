"""Resumable training state: weights, random states, optimizer slots and step, epoch, best score.

A `tf.train.Checkpoint` saved after every epoch. TensorFlow writes the data files
first and then swaps the `checkpoint` index file atomically, so a run killed while
saving resumes from the previous epoch; at most one epoch is lost. Unlike
`keras.callbacks.BackupAndRestore` (which saves model weights only), the
optimizer's accumulators and iteration count come back too, so the RMSProp
state and the learning-rate schedule continue where they stopped.
"""

import os
from typing import Optional

import keras
import tensorflow as tf


class TrainingState:
    """The checkpointed state of one training run.

    Args:
      model: the model being trained (built).
      optimizer: its optimizer (built, so its slot variables exist before restoring).
      directory: where this process writes its checkpoints.
      restore_directory: where to restore from; defaults to `directory`. Non-chief
        workers of a multi-worker job write to their own folder but restore from the
        chief's.
      max_to_keep: checkpoints kept on disk.
    """

    def __init__(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        directory: os.PathLike,
        restore_directory: Optional[os.PathLike] = None,
        max_to_keep: int = 2,
    ):
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best_score = tf.Variable(float("-inf"), dtype=tf.float64, trainable=False, name="best_score")
        self.best_epoch = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_epoch")
        # Every variable of the model, by position, besides the model itself: TensorFlow's checkpoint
        # of a Keras 3 model misses the non-trainable weights of layers nested in custom layers (the
        # BatchNormalization statistics inside SpatialPyramidPooling) and the random states of layers
        # such as Dropout; without them a resumed run would not continue the uninterrupted one.
        self._checkpoint = tf.train.Checkpoint(
            model=model,
            model_variables=list(model.variables),
            optimizer=optimizer,
            epoch=self.epoch,
            best_score=self.best_score,
            best_epoch=self.best_epoch,
        )
        self._manager = tf.train.CheckpointManager(self._checkpoint, str(directory), max_to_keep)
        self._restore_directory = str(restore_directory or directory)

    def restore(self) -> int:
        """Restores the latest checkpoint if there is one; returns the epoch to start at."""
        latest = tf.train.latest_checkpoint(self._restore_directory)
        if latest is None:
            return 0
        self._checkpoint.restore(latest).assert_existing_objects_matched()
        return int(self.epoch.numpy())

    def save(self, completed_epochs: int) -> str:
        """Checkpoints the state after `completed_epochs` epochs."""
        self.epoch.assign(completed_epochs)
        return self._manager.save(checkpoint_number=completed_epochs)


class SaveTrainingState(keras.callbacks.Callback):
    """Checkpoints a `TrainingState` at the end of every epoch (after model selection)."""

    def __init__(self, state: TrainingState):
        super().__init__()
        self._state = state

    def on_epoch_end(self, epoch, logs=None):
        self._state.save(epoch + 1)
