"""Annotates image files with top-k keywords, from a trained model or a TF Serving export.

An export is used through its `serving_default` signature only (no model code is imported);
a trained model (`model.keras` + `model_info.json`) is run with the same in-graph decoding and
resizing the export uses. Images are read and annotated in batches; an unreadable or
undecodable image gives an error record naming it and the others are still annotated.
"""

import os
import re
from typing import Callable, Iterable, Iterator, List, Optional, Sequence

import numpy as np
import tensorflow as tf

# The file name endings `find_images` walks folders for (all formats `tf.io.decode_image` reads).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# How messages name them, e.g. in annotate's usage and the error for a folder without images.
IMAGE_EXTENSIONS_TEXT = "/".join(IMAGE_EXTENSIONS)
DEFAULT_TOP_K = 5
SAVED_MODEL_FILENAME = tf.saved_model.SAVED_MODEL_FILENAME_PB

# Takes a list of encoded images, returns their label probabilities `[n, M]`; raises
# `tf.errors.InvalidArgumentError` when one of them cannot be decoded.
ProbabilitiesFn = Callable[[List[bytes]], np.ndarray]


def find_images(paths: Iterable[str]) -> List[str]:
    """Expands folders into the image files below them (sorted, recursive).

    Files named explicitly are kept whatever their extension, and so are paths that do not
    exist (annotation reports them). A folder without images is kept too, so that the
    caller can report it.
    """
    found = []
    for path in paths:
        if not os.path.isdir(path):
            found.append(path)
            continue
        images = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            images.extend(
                os.path.join(root, name) for name in sorted(files) if name.lower().endswith(IMAGE_EXTENSIONS)
            )
        found.extend(images or [path])
    return found


class Annotator:
    """Top-k keywords for encoded images.

    Args:
      probabilities_fn: maps a list of encoded images to their probabilities `[n, M]`.
      vocabulary: the M label names, in the order of the probabilities.
      top_k: keywords per image (ties broken like `tf.math.top_k`: lower label index first);
        None gives `DEFAULT_TOP_K`, or M if it is smaller.
      batch_size: images run through the model at once.
    """

    def __init__(
        self,
        probabilities_fn: ProbabilitiesFn,
        vocabulary: Sequence[str],
        *,
        top_k: Optional[int] = None,
        batch_size: int = 32,
    ):
        if top_k is None:
            top_k = min(DEFAULT_TOP_K, len(vocabulary))
        if not 1 <= top_k <= len(vocabulary):
            raise ValueError(
                f"top_k must be between 1 and the number of labels ({len(vocabulary)}). Received: top_k={top_k}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive. Received: batch_size={batch_size}")
        self._probabilities_fn = probabilities_fn
        self.vocabulary = list(vocabulary)
        self.top_k = top_k
        self.batch_size = batch_size

    @classmethod
    def from_path(cls, path: str, *, top_k: Optional[int] = None, batch_size: int = 32) -> "Annotator":
        """Loads an export (a version folder, or a base folder: its highest version) or a trained model."""
        export_dir = find_export_dir(path)
        if export_dir is not None:
            return cls.from_export(export_dir, top_k=top_k, batch_size=batch_size)
        return cls.from_trained_model(path, top_k=top_k, batch_size=batch_size)

    @classmethod
    def from_export(cls, export_dir: str, *, top_k: Optional[int] = None, batch_size: int = 32) -> "Annotator":
        """Uses the `serving_default` signature of a SavedModel written by `e2e_tf.export`.

        Its `probabilities` output is ranked here, so any `top_k` works, whatever `--top_k`
        the export was written with.
        """
        loaded = tf.saved_model.load(export_dir)
        if "serving_default" not in loaded.signatures or not hasattr(loaded, "vocabulary_file"):
            raise ValueError(
                f"{export_dir} is not an e2e_tf export: it needs a serving_default signature and a "
                "vocabulary asset (write one with `python -m e2e_tf.export`)."
            )
        vocabulary_path = loaded.vocabulary_file.asset_path.numpy().decode("utf-8")
        with open(vocabulary_path, encoding="utf-8") as f:
            vocabulary = f.read().splitlines()

        def probabilities(images: List[bytes]) -> np.ndarray:
            # Going through `loaded` keeps the restored variables and table alive.
            outputs = loaded.signatures["serving_default"](image_bytes=tf.constant(images, dtype=tf.string))
            return outputs["probabilities"].numpy()

        return cls(probabilities, vocabulary, top_k=top_k, batch_size=batch_size)

    @classmethod
    def from_trained_model(cls, path: str, *, top_k: Optional[int] = None, batch_size: int = 32) -> "Annotator":
        """Runs a trained model (a model dir, or a `.keras` file with its `model_info.json` next to it)."""
        from e2e_tf.serving_export import decode_images
        from e2e_tf.trained_model import load_trained_model

        model, info = load_trained_model(path)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def probabilities_graph(image_bytes):
            pixels = decode_images(image_bytes, info.image_size, info.resize_policy)
            return tf.sigmoid(tf.cast(model(pixels, training=False), tf.float32))

        def probabilities(images: List[bytes]) -> np.ndarray:
            return probabilities_graph(tf.constant(images, dtype=tf.string)).numpy()

        return cls(probabilities, info.vocabulary, top_k=top_k, batch_size=batch_size)

    def annotate_bytes(self, images: List[bytes]) -> List[dict]:
        """Returns `{"keywords", "scores"}` per encoded image; raises on an undecodable one."""
        if not images:
            return []
        probabilities = self._probabilities_fn(list(images))
        scores, indices = tf.math.top_k(probabilities, k=self.top_k)
        return [
            {"keywords": [self.vocabulary[i] for i in row_indices], "scores": [float(s) for s in row_scores]}
            for row_indices, row_scores in zip(indices.numpy(), scores.numpy())
        ]

    def annotate_files(self, paths: Iterable[str]) -> Iterator[dict]:
        """Yields, in order, `{"image", "keywords", "scores"}` or `{"image", "error"}` per path."""
        batch: List[str] = []
        for path in paths:
            batch.append(path)
            if len(batch) == self.batch_size:
                yield from self._annotate_batch(batch)
                batch = []
        yield from self._annotate_batch(batch)

    def _annotate_batch(self, paths: List[str]) -> List[dict]:
        results: List[Optional[dict]] = [None] * len(paths)
        readable = []
        for index, path in enumerate(paths):
            contents, error = _read_image_file(path)
            if error is None:
                readable.append((index, contents))
            else:
                results[index] = {"image": path, "error": error}
        try:
            annotations = self.annotate_bytes([contents for _, contents in readable])
        except tf.errors.InvalidArgumentError:
            # One bad image fails the whole batch: run them one by one to find it.
            annotations = []
            for _, contents in readable:
                try:
                    annotations.append(self.annotate_bytes([contents])[0])
                except tf.errors.InvalidArgumentError as e:
                    annotations.append({"error": f"cannot decode the image: {decode_error_message(e)}"})
        for (index, _), annotation in zip(readable, annotations):
            results[index] = {"image": paths[index], **annotation}
        return results


def find_export_dir(path: str) -> Optional[str]:
    """Returns the SavedModel folder `path` names, or None when it is not an export.

    `path` may be a version folder (holding saved_model.pb) or a TF Serving base folder,
    whose highest numeric version is used, as TF Serving would serve it.
    """
    if not os.path.isdir(path):
        return None
    if os.path.isfile(os.path.join(path, SAVED_MODEL_FILENAME)):
        return path
    versions = sorted(
        (int(name) for name in os.listdir(path)
         if name.isdigit() and os.path.isfile(os.path.join(path, name, SAVED_MODEL_FILENAME))),
    )
    return os.path.join(path, str(versions[-1])) if versions else None


def decode_error_message(error: tf.errors.OpError) -> str:
    """The decoder's own reason from a TF error, without graph node and function names."""
    # Graph errors read "Graph execution error: ... Detected at node ... <reason>\n [[{{node ...}}]]".
    lines = [line.strip() for line in error.message.splitlines()]
    lines = [line for line in lines if line and not line.startswith("[[")]
    message = lines[-1] if lines else error.message
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
    message = re.sub(r"\s*\[\[\{\{node [^}]*\}\}\]\]", "", message)
    return re.sub(r"\s*\[Op:[^\]]*\]", "", message).strip()


def _read_image_file(path: str):
    if os.path.isdir(path):
        return None, f"no image files ({IMAGE_EXTENSIONS_TEXT}) in this folder"
    try:
        with open(path, "rb") as f:
            return f.read(), None
    except OSError as e:
        return None, f"cannot read the file: {e.strerror or e}"
