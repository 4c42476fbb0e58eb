"""A trained model directory: `model.keras` plus `model_info.json`, and how to load them.

`python -m e2e_tf.train` writes the directory; annotation and export read it
with `load_trained_model`, so the vocabulary and the preprocessing (image size,
resize policy) always travel with the weights.
"""

import dataclasses
import json
import os
import pathlib
from typing import Any

import keras

from e2e_tf.preprocessing import validate_resize_policy
from e2e_tf.training.atomic_io import atomic_write_text

MODEL_FILE = "model.keras"
MODEL_INFO_FILE = "model_info.json"


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a trained model needs besides its weights.

    Attributes:
      vocabulary: label names, in the order of the model's logits.
      image_size: `(height, width)` the model was trained at.
      resize_policy: how images were resized to `image_size` ("stretch", "pad" or "crop",
        see `e2e_tf.preprocessing.resize_image`).
      dataset: name of the training dataset.
      backbone: name of the backbone (`e2e_tf.model.build_model`'s `backbone`).
    """

    vocabulary: tuple[str, ...]
    image_size: tuple[int, int]
    resize_policy: str
    dataset: str
    backbone: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "vocabulary", tuple(str(v) for v in self.vocabulary))
        object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
        if not self.vocabulary:
            raise ValueError("ModelInfo needs a non-empty vocabulary. Received: vocabulary=()")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(
                f"ModelInfo.image_size must be two positive ints (height, width). "
                f"Received: image_size={self.image_size}"
            )
        validate_resize_policy(self.resize_policy)

    def to_dict(self) -> dict[str, Any]:
        return {
            "vocabulary": list(self.vocabulary),
            "image_size": list(self.image_size),
            "resize_policy": self.resize_policy,
            "dataset": self.dataset,
            "backbone": self.backbone,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelInfo":
        fields = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in fields if name not in values]
        if missing:
            raise ValueError(f"model info lacks the keys {missing}. Received keys: {sorted(values)}")
        return cls(**{name: values[name] for name in fields})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "ModelInfo":
        return cls.from_dict(json.loads(text))

    def save(self, path: os.PathLike) -> None:
        """Writes the info as JSON to `path` atomically."""
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: os.PathLike) -> "ModelInfo":
        path = pathlib.Path(path)
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"No model info file at {path}") from None
        except (ValueError, TypeError) as e:
            raise ValueError(f"Invalid model info file {path}: {e}") from e


def load_trained_model(path: os.PathLike) -> tuple[keras.Model, ModelInfo]:
    """Loads a model written by `python -m e2e_tf.train`.

    Args:
      path: the training's `--model_dir`, or the `model.keras` file inside it
        (`model_info.json` must be next to it).

    Returns:
      `(model, info)`: the Keras model (float32 pixels in [0, 255] -> logits) and its `ModelInfo`.
    """
    # Registers the project's serializable layers (DeformableConv2D, SPP, ...).
    import e2e_tf.model  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

    path = pathlib.Path(path)
    model_file = path / MODEL_FILE if path.is_dir() else path
    if not model_file.is_file():
        raise FileNotFoundError(
            f"No trained model at {path}: expected a training --model_dir containing {MODEL_FILE} "
            f"(written once the first epoch is validated) or a .keras file."
        )
    info = ModelInfo.load(model_file.parent / MODEL_INFO_FILE)
    model = keras.saving.load_model(model_file, compile=False)
    outputs = model.outputs[0].shape[-1] if model.outputs else None
    if outputs is not None and outputs != len(info.vocabulary):
        raise ValueError(
            f"{model_file} has {outputs} outputs but {MODEL_INFO_FILE} lists "
            f"{len(info.vocabulary)} labels."
        )
    return model, info

