"""Learning-rate schedules selectable by name from the command line."""

from typing import Union

import keras

LR_DECAYS = ("none", "exponential", "step", "cosine")


def learning_rate_schedule(
    learning_rate: float,
    decay: str,
    *,
    total_steps: int,
    decay_rate: float = 0.1,
    decay_steps: int = 0,
    min_ratio: float = 0.0,
) -> Union[float, keras.optimizers.schedules.LearningRateSchedule]:
    """Returns the learning rate (a float) or schedule for `decay`.

    Args:
      learning_rate: initial learning rate.
      decay: "none" (constant), "exponential" (`lr * rate^(step / decay_steps)`), "step"
        (the same, staircase: Caffe's "step" policy) or "cosine" (from `lr` down to
        `lr * min_ratio` over `total_steps`).
      total_steps: optimizer steps of the whole training.
      decay_rate: factor per `decay_steps` of "exponential" and "step".
      decay_steps: period of "exponential" and "step"; 0 means `total_steps // 3`.
      min_ratio: final learning rate of "cosine", relative to `learning_rate`.
    """
    if learning_rate <= 0:
        raise ValueError(f"The learning rate must be positive. Received: learning_rate={learning_rate}")
    if decay == "none":
        return float(learning_rate)
    if decay in ("exponential", "step"):
        if not 0 < decay_rate <= 1:
            raise ValueError(f"decay_rate must be in (0, 1]. Received: decay_rate={decay_rate}")
        return keras.optimizers.schedules.ExponentialDecay(
            learning_rate,
            decay_steps=decay_steps or max(1, total_steps // 3),
            decay_rate=decay_rate,
            staircase=decay == "step",
        )
    if decay == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=max(1, total_steps), alpha=min_ratio
        )
    raise ValueError(f"Unknown learning-rate decay; expected one of {LR_DECAYS}. Received: decay={decay!r}")
