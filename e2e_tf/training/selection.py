"""Model selection: keep the model of the epoch with the best validation score."""

import os
from typing import Optional

import keras

from e2e_tf.training.atomic_io import atomic_save_model
from e2e_tf.training.state import TrainingState


class SaveBestModel(keras.callbacks.Callback):
    """Saves the model atomically to `path` whenever `monitor` (in the epoch logs) improves.

    Like `keras.callbacks.ModelCheckpoint(save_best_only=True, mode="max")`, but the file
    is replaced atomically and the best score so far lives in the resumable
    `TrainingState`, so a resumed run does not overwrite a better earlier model.

    Args:
      path: the `.keras` file to write.
      state: the run's `TrainingState` (its `best_score` and `best_epoch` are updated).
      monitor: key of the epoch logs to maximise, e.g. "val_f1"; None keeps the latest
        epoch's model (training without a validation split).
    """

    def __init__(self, path: os.PathLike, state: TrainingState, monitor: Optional[str] = "val_f1"):
        super().__init__()
        self.path = path
        self.monitor = monitor
        self._state = state

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.monitor is None:
            self._state.best_epoch.assign(epoch)
            atomic_save_model(self.model, self.path)
            return
        if self.monitor not in logs:
            raise KeyError(f"SaveBestModel monitors {self.monitor!r}, absent from the epoch logs {sorted(logs)}")
        score = float(logs[self.monitor])
        if score > float(self._state.best_score.numpy()):
            self._state.best_score.assign(score)
            self._state.best_epoch.assign(epoch)
            atomic_save_model(self.model, self.path)
        logs[f"best_{self.monitor}"] = float(self._state.best_score.numpy())
