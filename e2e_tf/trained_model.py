"""A trained model directory: `model.keras` plus `model_info.json`, and how to load them.

`python -m e2e_tf.train` writes the directory; annotation and export read it
with `load_trained_model`, so the vocabulary and the preprocessing (image size,
resize policy) always travel with the weights.
"""

import dataclasses
import json
import os
import pathlib
import zipfile
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
      path: the training's `--model_dir`, or a `.keras` file with that training's
        `model_info.json` next to it (the weights alone lack the vocabulary and input size).

    Returns:
      `(model, info)`: the Keras model (float32 pixels in [0, 255] -> logits) and its `ModelInfo`.

    Raises:
      FileNotFoundError: no model file at `path`, or no `model_info.json` next to it.
      ValueError: the model file or `model_info.json` exists but cannot be loaded, or they disagree.
    """
    # Registers the project's serializable layers (DeformableConv2D, SPP, ...).
    import e2e_tf.model  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

    path = pathlib.Path(path)
    model_file = path / MODEL_FILE if path.is_dir() else path
    if not model_file.is_file():
        raise FileNotFoundError(
            f"No trained model at {path}: expected a training --model_dir containing {MODEL_FILE} "
            f"(written once the first epoch is validated) or a .keras file with {MODEL_INFO_FILE} next to it."
        )
    info_file = model_file.parent / MODEL_INFO_FILE
    if not info_file.is_file():
        raise FileNotFoundError(
            f"{model_file} needs {MODEL_INFO_FILE} (vocabulary, input size, resize policy) next to it, "
            f"but {info_file} does not exist: copy it from the training's --model_dir."
        )
    info = ModelInfo.load(info_file)
    model = _load_keras_model(model_file)
    outputs = model.outputs[0].shape[-1] if model.outputs else None
    if outputs is not None and outputs != len(info.vocabulary):
        raise ValueError(
            f"{model_file} has {outputs} outputs but {MODEL_INFO_FILE} lists "
            f"{len(info.vocabulary)} labels."
        )
    return model, info


# What `keras.saving.load_model` raises for a file that is damaged or not a Keras model.
_UNLOADABLE_MODEL_ERRORS = (ValueError, TypeError, KeyError, OSError, EOFError, zipfile.BadZipFile)


def _load_keras_model(model_file: pathlib.Path) -> keras.Model:
    """`keras.saving.load_model`, with an error that says the existing file is unloadable, and why.

    Keras reports a `.keras` file that is not a zip archive (e.g. a truncated copy) as
    "File not found", which misleads when the file is there.
    """
    try:
        return keras.saving.load_model(model_file, compile=False)
    except _UNLOADABLE_MODEL_ERRORS as e:
        if model_file.suffix == ".keras" and not zipfile.is_zipfile(model_file):
            reason = "it is not a zip archive, as a .keras file is (truncated by an interrupted copy?)"
        else:
            reason = _first_line(e)
        raise ValueError(
            f"{model_file} exists but could not be loaded as a Keras model (corrupt or not a Keras "
            f"model file): {reason}"
        ) from e


def _first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of `error`'s message, at most `limit` characters, for a one-line error."""
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else type(error).__name__
    return message if len(message) <= limit else message[: limit - 3] + "..."
