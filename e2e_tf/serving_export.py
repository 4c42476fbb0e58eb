"""SavedModel export for TF Serving: encoded images in, keywords out, stock ops only.

A trained model becomes a `tf.Module` with two signatures:

- `serving_default(image_bytes)`: a `tf.string` batch of encoded JPEG/PNG/BMP/GIF/WebP images.
  Decoding and resizing (the training preprocessing, `e2e_tf.preprocessing.resize_image`)
  happen in the graph, so REST clients send `{"b64": ...}` and need no project code.
- `serving_pixels(pixels)`: float32 `[batch, height, width, 3]` RGB pixels in [0, 255],
  resized in the graph the same way.

Both return `keywords` (string `[batch, k]`), `scores` (their probabilities, `[batch, k]`)
and `probabilities` (`[batch, M]`). The vocabulary is an asset file read by a lookup table.

The model is traced under `e2e_tf.ops.implementation_scope("pure_tf")` by default, so the
graph holds stock TensorFlow ops only and a stock model server can load it; stock TF Serving
answers "Op type not registered" for the compiled DeformableConv2D op.
"""

import functools
import json
import os
import shutil
import tempfile
from typing import Any, Mapping, Optional, Sequence

import keras
import tensorflow as tf

from e2e_tf import ops
from e2e_tf.preprocessing import resize_image, validate_resize_policy

IMAGE_BYTES_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "serving_pixels"
VOCABULARY_FILENAME = "vocabulary.txt"
# Written next to the SavedModel; TF Serving ignores `assets.extra` except for warm-up files.
EXPORT_INFO_PATH = os.path.join("assets.extra", "export_info.json")
DEFAULT_TOP_K = 5
# The `e2e_tf.ops` implementation name of the compiled DeformableConv2D op.
CUSTOM_OP_IMPLEMENTATION = "custom_op"
_TEMP_PREFIX = ".tmp-export-"


def decode_images(image_bytes: tf.Tensor, image_size: Sequence[int], resize_policy: str) -> tf.Tensor:
    """Decodes a batch of encoded images into the model's float32 input.

    Each image is decoded to RGB (grey and RGBA become 3 channels, an animated GIF gives its
    first frame) and resized on its own with `resize_image`, exactly as the training
    pipeline treats a decoded dataset image.

    Args:
      image_bytes: `tf.string` tensor `[batch]` of encoded JPEG, PNG, BMP, GIF or WebP images.
      image_size: the model's `(height, width)`.
      resize_policy: one of `e2e_tf.preprocessing.RESIZE_POLICIES`.

    Returns:
      float32 `[batch, height, width, 3]`, values in [0, 255]. An undecodable element
      raises `tf.errors.InvalidArgumentError` with the decoder's reason.
    """
    height, width = int(image_size[0]), int(image_size[1])

    def decode_one(contents: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(contents, channels=3, expand_animations=False)
        return resize_image(image, (height, width), resize_policy)

    return tf.map_fn(
        decode_one,
        image_bytes,
        fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32),
    )


class ServingModule(tf.Module):
    """The exported object: a Keras model plus the pre- and post-processing around it.

    Args:
      model: Keras model taking float32 pixels in [0, 255] and returning logits `[batch, M]`.
      vocabulary_file: text file with the M label names, one per line, in logit order.
        It becomes the export's asset.
      image_size: `(height, width)` every image is resized to.
      resize_policy: one of `e2e_tf.preprocessing.RESIZE_POLICIES`.
      top_k: number of keywords returned per image, 1 <= top_k <= M.
    """

    def __init__(
        self,
        model: keras.Model,
        vocabulary_file: str,
        image_size: Sequence[int],
        resize_policy: str,
        top_k: int = DEFAULT_TOP_K,
    ):
        super().__init__(name="e2e_tf_serving")
        # Only the model's variables are tracked. Tracked as a child, a Keras model would add
        # its own traced serving function (pixels -> logits) to the SavedModel.
        self.model_variables = list(model.variables)
        self._model_fn = functools.partial(model, training=False)
        self._num_labels = int(model.output_shape[-1])
        self.vocabulary_file = tf.saved_model.Asset(vocabulary_file)
        self._keywords = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                self.vocabulary_file,
                key_dtype=tf.int64,
                key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
                value_dtype=tf.string,
                value_index=tf.lookup.TextFileIndex.WHOLE_LINE,
            ),
            default_value="",
        )
        self._image_size = (int(image_size[0]), int(image_size[1]))
        self._resize_policy = validate_resize_policy(resize_policy)
        self._top_k = int(top_k)

    def annotate_image_bytes(self, image_bytes: tf.Tensor) -> dict:
        """Annotates a `tf.string` batch `[batch]` of encoded images."""
        return self._annotate(decode_images(image_bytes, self._image_size, self._resize_policy))

    def annotate_pixels(self, pixels: tf.Tensor) -> dict:
        """Annotates float32 RGB pixels `[batch, height, width, 3]` in [0, 255]."""
        return self._annotate(resize_image(pixels, self._image_size, self._resize_policy))

    def signatures(self) -> dict:
        """Traces both signatures: {name: concrete function} for `tf.saved_model.save`.

        They are traced here, once, rather than kept as `tf.function` attributes, which
        `tf.saved_model.save` would trace again (the model included) to serialise them.
        """
        image_bytes = tf.TensorSpec([None], tf.string, name="image_bytes")
        pixels = tf.TensorSpec([None, None, None, 3], tf.float32, name="pixels")
        return {
            IMAGE_BYTES_SIGNATURE: tf.function(self.annotate_image_bytes, autograph=False)
            .get_concrete_function(image_bytes),
            PIXELS_SIGNATURE: tf.function(self.annotate_pixels, autograph=False).get_concrete_function(pixels),
        }

    def _annotate(self, pixels: tf.Tensor) -> dict:
        # An empty request never reaches the model: TensorFlow's oneDNN convolutions (on by
        # default on CPUs with AVX512-VNNI or newer) return their input unchanged for an
        # empty batch, which the next layer then rejects.
        logits = tf.cond(
            tf.shape(pixels)[0] > 0,
            lambda: tf.cast(self._model_fn(pixels), tf.float32),
            lambda: tf.zeros([0, self._num_labels], tf.float32),
        )
        probabilities = tf.sigmoid(logits)
        scores, indices = tf.math.top_k(probabilities, k=self._top_k)
        keywords = self._keywords.lookup(tf.cast(indices, tf.int64))
        return {"keywords": keywords, "scores": scores, "probabilities": probabilities}


def export_model(
    model: keras.Model,
    vocabulary: Sequence[str],
    image_size: Sequence[int],
    resize_policy: str,
    export_base: str,
    *,
    version: Optional[int] = None,
    top_k: int = DEFAULT_TOP_K,
    with_custom_op: bool = False,
    metadata: Optional[Mapping[str, Any]] = None,
) -> str:
    """Writes `model` as a TF Serving SavedModel to `<export_base>/<version>/`.

    The export is written into a temporary folder inside `export_base` whose name is not a
    number (TF Serving ignores it) and renamed to the version at the end, so a half-written
    export never appears under a version number.

    Args:
      model: Keras model taking float32 pixels in [0, 255], returning logits `[batch, M]`.
      vocabulary: the M label names in logit order.
      image_size: `(height, width)` the model was trained on.
      resize_policy: the resize policy used in training.
      export_base: the model base path TF Serving watches; created if missing.
      version: the version number; default the next free one (1 for an empty base).
        An existing version is never overwritten.
      top_k: keywords per image in the `keywords`/`scores` outputs.
      with_custom_op: trace DeformableConv2D with the compiled `E2eTf>DeformableConv2D` op
        instead of the pure-TF implementation. The export then only loads where the op
        library is loaded (a model server built with it).
      metadata: extra JSON-serialisable facts stored in `assets.extra/export_info.json`.

    Returns:
      The path of the written version folder.
    """
    vocabulary = _validate_vocabulary(vocabulary)
    num_labels = int(model.outputs[0].shape[-1]) if getattr(model, "outputs", None) else None
    if num_labels is not None and num_labels != len(vocabulary):
        raise ValueError(
            f"The model returns {num_labels} logits but the vocabulary has {len(vocabulary)} "
            "labels; they must match."
        )
    if not 1 <= int(top_k) <= len(vocabulary):
        raise ValueError(
            f"top_k must be between 1 and the number of labels ({len(vocabulary)}). Received: top_k={top_k}"
        )
    if len(image_size) != 2 or min(int(s) for s in image_size) < 1:
        raise ValueError(f"image_size must be a positive (height, width). Received: image_size={image_size}")
    check_export_base(export_base)
    os.makedirs(export_base, exist_ok=True)
    if version is not None:
        if int(version) < 0:
            raise ValueError(f"version must be a non-negative integer. Received: version={version}")
        _check_version_is_free(export_base, int(version))

    with tempfile.TemporaryDirectory() as vocabulary_dir:
        vocabulary_file = os.path.join(vocabulary_dir, VOCABULARY_FILENAME)
        with open(vocabulary_file, "w", encoding="utf-8") as f:
            f.write("".join(label + "\n" for label in vocabulary))
        module = ServingModule(model, vocabulary_file, image_size, resize_policy, top_k)
        export_info = {
            **dict(metadata or {}),
            "vocabulary_size": len(vocabulary),
            "image_size": [int(s) for s in image_size],
            "resize_policy": resize_policy,
            "top_k": int(top_k),
            "deformable_implementation": CUSTOM_OP_IMPLEMENTATION if with_custom_op else "pure_tf",
            "signatures": [IMAGE_BYTES_SIGNATURE, PIXELS_SIGNATURE],
        }
        # The whole save runs inside the scope, so that any trace it makes is covered too.
        with _implementation_scope(with_custom_op):
            signatures = module.signatures()
            return _save_atomically(module, signatures, export_info, export_base, version)


def check_export_base(export_base: str) -> None:
    """Raises `FileExistsError` when `export_base` cannot be a TF Serving model base path.

    It must be a folder (or not exist yet) and must not itself be an export: a version folder
    given as the base would get a SavedModel nested inside it, which TF Serving never finds.
    """
    if os.path.exists(export_base) and not os.path.isdir(export_base):
        raise FileExistsError(f"--export_dir {export_base} is a file; give a folder for the numbered versions.")
    if os.path.isfile(os.path.join(export_base, tf.saved_model.SAVED_MODEL_FILENAME_PB)):
        parent = os.path.dirname(os.path.normpath(export_base)) or "."
        raise FileExistsError(
            f"--export_dir {export_base} is itself an export (it holds {tf.saved_model.SAVED_MODEL_FILENAME_PB}); "
            f"pass the base folder that holds the numbered versions ({parent}) instead."
        )


def next_free_version(export_base: str) -> int:
    """Returns one more than the largest numeric folder name in `export_base` (1 if none)."""
    versions = [int(name) for name in _list_dir(export_base) if name.isdigit()]
    return max(versions, default=0) + 1


def _save_atomically(
    module: ServingModule,
    signatures: Mapping[str, Any],
    export_info: Mapping[str, Any],
    export_base: str,
    version: Optional[int],
) -> str:
    temp_dir = tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=export_base)
    try:
        tf.saved_model.save(module, temp_dir, signatures=signatures)
        info_path = os.path.join(temp_dir, EXPORT_INFO_PATH)
        os.makedirs(os.path.dirname(info_path), exist_ok=True)
        with open(info_path, "w", encoding="utf-8") as f:
            json.dump(export_info, f, indent=2)
        os.chmod(temp_dir, 0o755)  # mkdtemp makes it private; a model server may run as another user.
        if version is not None:
            target = os.path.join(export_base, str(int(version)))
            _check_version_is_free(export_base, int(version))
            os.rename(temp_dir, target)
            return target
        # Another exporter may take the next number between listing and renaming: retry.
        for _ in range(100):
            target = os.path.join(export_base, str(next_free_version(export_base)))
            if not os.path.exists(target):
                try:
                    os.rename(temp_dir, target)
                    return target
                except OSError:
                    if not os.path.exists(temp_dir):
                        raise
        raise RuntimeError(f"Could not find a free version number in {export_base}.")
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise


def _check_version_is_free(export_base: str, version: int) -> None:
    target = os.path.join(export_base, str(version))
    if os.path.exists(target):
        raise FileExistsError(
            f"Export version {version} already exists at {target}; an export is never overwritten. "
            f"Pass another --version or omit it to use the next free one ({next_free_version(export_base)})."
        )


def _validate_vocabulary(vocabulary: Sequence[str]) -> list:
    vocabulary = [str(label) for label in vocabulary]
    if not vocabulary:
        raise ValueError("The vocabulary is empty; the export needs one label name per logit.")
    for index, label in enumerate(vocabulary):
        if not label or label != label.strip() or "\n" in label or "\r" in label:
            raise ValueError(
                "Label names must be non-empty single lines without surrounding whitespace "
                f"(the asset holds one per line). Received: vocabulary[{index}]={label!r}"
            )
    if len(set(vocabulary)) != len(vocabulary):
        duplicates = sorted({label for label in vocabulary if vocabulary.count(label) > 1})
        raise ValueError(f"Label names must be unique. Received duplicates: {duplicates}")
    return vocabulary


def _implementation_scope(with_custom_op: bool):
    if not with_custom_op:
        return ops.implementation_scope("pure_tf")
    # Raises with the loader's error when the compiled op is not built.
    if ops.resolve_implementation(CUSTOM_OP_IMPLEMENTATION) != CUSTOM_OP_IMPLEMENTATION:
        raise RuntimeError(
            "with_custom_op cannot trace the compiled DeformableConv2D op because the environment "
            "forces the pure-TF implementation (E2E_TF_PURE_TF_DEFORMABLE); unset it to export with the op."
        )
    return ops.implementation_scope(CUSTOM_OP_IMPLEMENTATION)


def _list_dir(path: str) -> list:
    return os.listdir(path) if os.path.isdir(path) else []
