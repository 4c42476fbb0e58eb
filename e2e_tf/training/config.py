"""Everything one training run is configured by (the fields are `python -m e2e_tf.train`'s flags)."""

import dataclasses
import math
from typing import Optional

from e2e_tf.preprocessing import RESIZE_POLICIES
from e2e_tf.training.distribute import STRATEGIES
from e2e_tf.training.schedules import LR_DECAYS

DATASETS = ("corel5k", "espgame", "iaprtc12", "visual_concepts")
AUGMENTATIONS = ("none", "traditional", "mlwgan", "mlwgan+traditional")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run. Field names are the command-line flags; see `e2e_tf/train.py` for their help."""

    model_dir: str
    dataset: str = "visual_concepts"
    data_dir: Optional[str] = None
    manual_dir: Optional[str] = None
    # Model.
    backbone: str = "resnet50"
    deformable_stages: int = 1
    spp: bool = True
    dropout: float = 0.5
    weight_decay: float = 1e-4
    weights: Optional[str] = None
    deformable_implementation: str = "auto"
    # Input.
    image_size: tuple[int, int] = (224, 224)
    resize_policy: str = "stretch"
    augmentation: str = "none"
    augmented_dir: Optional[str] = None
    cache: bool = True
    shuffle_buffer: int = 2048
    max_train_examples: Optional[int] = None
    max_test_examples: Optional[int] = None
    validation: bool = True
    # Optimisation.
    batch_size: int = 64
    epochs: Optional[int] = None
    steps: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    learning_rate: float = 0.005
    rho: float = 0.9
    momentum: float = 0.0
    epsilon: float = 1e-7
    lr_decay: str = "none"
    lr_decay_rate: float = 0.1
    lr_decay_steps: int = 0
    lr_min_ratio: float = 0.0
    # Execution.
    strategy: str = "default"
    mixed_precision: bool = False
    seed: int = 0
    top_k: int = 5
    verbose: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", _image_size(self.image_size))
        _one_of("dataset", self.dataset, DATASETS)
        _one_of("resize_policy", self.resize_policy, RESIZE_POLICIES)
        _one_of("augmentation", self.augmentation, AUGMENTATIONS)
        _one_of("strategy", self.strategy, STRATEGIES)
        _one_of("lr_decay", self.lr_decay, LR_DECAYS)
        for name in ("batch_size", "top_k", "shuffle_buffer"):
            _positive(name, getattr(self, name))
        for name in ("epochs", "steps", "steps_per_epoch", "max_train_examples", "max_test_examples"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        for name in ("learning_rate", "epsilon"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name} must be > 0. Received: --{name}={getattr(self, name)}")
        for name in ("rho", "dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"--{name} must be in [0, 1). Received: --{name}={getattr(self, name)}")
        for name in ("weight_decay", "momentum"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"--{name} must be >= 0. Received: --{name}={getattr(self, name)}")
        if self.deformable_stages < 0:
            raise ValueError(f"--deformable_stages must be >= 0. Received: --deformable_stages={self.deformable_stages}")
        if self.epochs is not None and self.steps is not None:
            raise ValueError(
                f"Give --epochs or --steps, not both. Received: --epochs={self.epochs} --steps={self.steps}"
            )
        if "mlwgan" in self.augmentation and not self.augmented_dir:
            raise ValueError(
                f"--augmentation={self.augmentation} needs --augmented_dir, the output folder of "
                "`python -m e2e_tf.augment --method=mlwgan`."
            )
        if not self.model_dir:
            raise ValueError("--model_dir is required: the folder the run writes (and resumes from).")

    def schedule(self, num_train_examples: int) -> tuple[int, int]:
        """`(epochs, steps_per_epoch)`; --steps is rounded up to whole epochs."""
        steps_per_epoch = self.steps_per_epoch or max(1, math.ceil(num_train_examples / self.batch_size))
        if self.steps is not None:
            steps_per_epoch = min(steps_per_epoch, self.steps)
            return math.ceil(self.steps / steps_per_epoch), steps_per_epoch
        return (self.epochs if self.epochs is not None else 10), steps_per_epoch


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"--{name} must be one of {', '.join(choices)}. Received: --{name}={value!r}")


def _positive(name: str, value: int) -> None:
    if not value >= 1:
        raise ValueError(f"--{name} must be a positive integer. Received: --{name}={value}")


def _image_size(value) -> tuple[int, int]:
    """Accepts 224, "224", (224,), (160, 224) or "160,224"."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if isinstance(value, int):
        value = (value,)
    try:
        sizes = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        sizes = ()
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise ValueError(
            f"--image_size must be one positive int (square) or 'height,width'. Received: --image_size={value!r}"
        )
    return sizes
