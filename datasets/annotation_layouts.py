"""Reads the annotations of a manual directory in any of the accepted layouts.

An annotation dataset is a vocabulary plus, per split, a list of images and a
0/1 label matrix. The same split is published in several layouts, and a user
may hold files from more than one of them, so each part is found on its own
among the files at the top of the manual directory (`<name>` is the dataset's
TagProp name such as `corel5k`, `<short>` its short name such as `corel`):

* vocabulary: `<name>_dictionary.txt` (TagProp/LEAR), `<name>_words.txt`
  (.mat layout) or `<name>_vocabulary.txt` (JSON layout); one word per line,
  line k is label column k. When several are present they must agree.
* image list per split: `<name>_<split>_list.txt` or `<short>_<split>_list.txt`,
  one `<folder>/<id>` per line (LF or CRLF).
* labels per split, the first found of:
  1. `<name>_<split>_annot.hvecs`: TagProp rows of uint16 d + d uint16 values;
  2. `<name>_<split>_annot.mat`: one 2-D 0/1 matrix variable (`scipy.io`);
  3. `<name>_<split>_annot.txt` or `<short>_<split>_annot.txt`: CSV 0/1 rows;
  4. `<split>.json`: `{"samples": [{"image_name", "image_labels"}, ...]}`.
  A matrix (1-3) needs the split's list: row i labels list line i. JSON works
  alone (images are then found by base name); with a list, its base names must
  follow the list order.

For example ESP Game's public files (lists and test CSV from one source,
vocabulary and train/test JSON from another) put side by side read as: train
labels from `train.json`, test labels from `esp_test_annot.txt`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Callable, Sequence

import numpy as np
import scipy.io

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class FileNames:
    """The file-name prefixes one dataset's annotation files go by.

    Attributes:
        name: TagProp name, prefix of the dictionary, .hvecs and .mat files
            (e.g. `"corel5k"`).
        short: Alternative prefix of the CSV list/annotation files (e.g.
            `"corel"`); may equal `name`.
    """

    name: str
    short: str

    @property
    def prefixes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.name, self.short)))

    def vocabulary(self) -> list[str]:
        return [f"{self.name}_{kind}.txt" for kind in ("dictionary", "words", "vocabulary")]

    def image_list(self, split: str) -> list[str]:
        return [f"{p}_{split}_list.txt" for p in self.prefixes]

    def labels(self, split: str) -> list[tuple[str, str]]:
        """(file name, format) candidates in order of preference."""
        return (
            [(f"{self.name}_{split}_annot.hvecs", "hvecs"), (f"{self.name}_{split}_annot.mat", "mat")]
            + [(f"{p}_{split}_annot.txt", "csv") for p in self.prefixes]
            + [(f"{split}.json", "json")]
        )


@dataclasses.dataclass(frozen=True)
class SplitAnnotations:
    """One split: image entries and their label matrix.

    Attributes:
        entries: Image entries in file order, `<folder>/<id>` from a list file
            or `<id>` (a JSON image name without extension).
        labels: bool array (len(entries), vocabulary size).
        sources: The files read for this split.
    """

    entries: list[str]
    labels: np.ndarray
    sources: tuple[pathlib.Path, ...]


@dataclasses.dataclass(frozen=True)
class Annotations:
    vocabulary: list[str]
    splits: dict[str, SplitAnnotations]


class LayoutError(FileNotFoundError):
    """The manual directory holds no complete accepted layout."""


def read_annotations(
    manual_dir: pathlib.Path, names: FileNames, splits: Sequence[str] = SPLITS
) -> Annotations:
    """Finds and reads the vocabulary and every split's list and labels.

    Raises:
        LayoutError: a needed part is missing; the message lists every file
            name looked for and the directory.
        ValueError: files disagree (sizes, vocabularies, list order) or are
            malformed; the message names the file.
    """
    manual_dir = pathlib.Path(manual_dir)
    vocabulary = _read_vocabulary(manual_dir, names)
    result = {split: _read_split(manual_dir, names, split, vocabulary) for split in splits}
    _check_disjoint(result)
    return Annotations(vocabulary=vocabulary, splits=result)


def write_hvecs(path: pathlib.Path, matrix: np.ndarray) -> None:
    """Writes a 0/1 matrix as TagProp `.hvecs` (little-endian uint16 rows)."""
    matrix = np.asarray(matrix)
    rows = np.empty((matrix.shape[0], matrix.shape[1] + 1), dtype="<u2")
    rows[:, 0] = matrix.shape[1]
    rows[:, 1:] = matrix
    tmp = pathlib.Path(f"{path}.tmp")
    tmp.write_bytes(rows.tobytes())
    tmp.replace(path)


def read_hvecs(path: pathlib.Path, num_columns: int) -> np.ndarray:
    """Reads TagProp `.hvecs` rows, checking every row holds `num_columns` values."""
    values = np.fromfile(path, dtype="<u2")
    row_size = num_columns + 1
    if values.size == 0 or values.size % row_size or np.any(values[::row_size] != num_columns):
        found = int(values[0]) if values.size else "no data"
        raise ValueError(
            f"{path}: expected rows of uint16 d={num_columns} (the vocabulary size) followed "
            f"by d uint16 values; the first row says d={found} and the file has "
            f"{values.size * 2} bytes."
        )
    return values.reshape(-1, row_size)[:, 1:]


def _find(manual_dir: pathlib.Path, file_names: Sequence[str]) -> list[pathlib.Path]:
    return [manual_dir / f for f in file_names if (manual_dir / f).is_file()]


def _read_lines(path: pathlib.Path) -> list[str]:
    """Non-empty stripped lines; handles CRLF and a missing final newline."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_vocabulary(manual_dir: pathlib.Path, names: FileNames) -> list[str]:
    found = _find(manual_dir, names.vocabulary())
    if not found:
        raise LayoutError(
            f"No vocabulary file in {manual_dir}; looked for one of {names.vocabulary()}."
        )
    vocabulary = _read_lines(found[0])
    for other in found[1:]:
        if _read_lines(other) != vocabulary:
            raise ValueError(f"Vocabulary files {found[0]} and {other} differ.")
    if len(set(vocabulary)) != len(vocabulary):
        raise ValueError(f"{found[0]}: the vocabulary has duplicate words.")
    return vocabulary


def _read_split(
    manual_dir: pathlib.Path, names: FileNames, split: str, vocabulary: list[str]
) -> SplitAnnotations:
    lists = _find(manual_dir, names.image_list(split))
    entries = _read_lines(lists[0]) if lists else None
    for other in lists[1:]:
        if _read_lines(other) != entries:
            raise ValueError(f"Image lists {lists[0]} and {other} differ.")

    candidates = names.labels(split)
    for file_name, fmt in candidates:
        path = manual_dir / file_name
        if not path.is_file():
            continue
        if fmt == "json":
            json_entries, labels = _read_json(path, vocabulary)
            if entries is None:
                entries = json_entries
            else:
                _check_same_images(lists[0], entries, path, json_entries)
        else:
            if entries is None:
                raise LayoutError(
                    f"{path} has one label row per image of the {split} list, but no list "
                    f"is in {manual_dir}; looked for one of {names.image_list(split)}."
                )
            labels = _MATRIX_READERS[fmt](path, len(vocabulary))
            _check_shape(path, labels, len(entries), len(vocabulary))
        if len(set(entries)) != len(entries):
            raise ValueError(f"The {split} list {lists[0] if lists else path} has duplicate entries.")
        return SplitAnnotations(entries, labels.astype(bool), tuple(lists[:1]) + (path,))
    raise LayoutError(
        f"No {split} labels in {manual_dir}; looked for one of {[c for c, _ in candidates]} "
        f"(a matrix also needs one of {names.image_list(split)})."
    )


def _read_mat(path: pathlib.Path, num_columns: int) -> np.ndarray:
    variables = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    matrices = [v for v in variables.values() if isinstance(v, np.ndarray) and v.ndim == 2]
    if len(matrices) != 1:
        raise ValueError(
            f"{path}: expected exactly one 2-D label matrix variable, found {sorted(variables)}."
        )
    return _check_binary(path, matrices[0])


def _read_csv(path: pathlib.Path, num_columns: int) -> np.ndarray:
    rows = [line.split(",") for line in _read_lines(path)]
    for i, row in enumerate(rows):
        if len(row) != num_columns:
            raise ValueError(
                f"{path}: line {i + 1} has {len(row)} values, expected {num_columns} "
                "(the vocabulary size)."
            )
    try:
        matrix = np.array(rows, dtype=np.int64).reshape(len(rows), num_columns)
    except ValueError as e:
        raise ValueError(f"{path}: expected comma-separated 0/1 values ({e}).") from None
    return _check_binary(path, matrix)


def _read_json(path: pathlib.Path, vocabulary: list[str]) -> tuple[list[str], np.ndarray]:
    try:
        samples = json.loads(path.read_text(encoding="utf-8"))["samples"]
        names = [s["image_name"] for s in samples]
        words = [s["image_labels"] for s in samples]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f'{path}: expected {{"samples": [{{"image_name": ..., "image_labels": [...]}}]}} ({e!r}).'
        ) from None
    column = {word: k for k, word in enumerate(vocabulary)}
    labels = np.zeros((len(samples), len(vocabulary)), dtype=bool)
    for i, image_words in enumerate(words):
        for word in image_words:
            if word not in column:
                raise ValueError(f"{path}: {names[i]} has label {word!r}, not in the vocabulary.")
            labels[i, column[word]] = True
    return [pathlib.PurePosixPath(n).stem for n in names], labels


_MATRIX_READERS: dict[str, Callable[[pathlib.Path, int], np.ndarray]] = {
    "hvecs": read_hvecs,
    "mat": _read_mat,
    "csv": _read_csv,
}


def _check_binary(path: pathlib.Path, matrix: np.ndarray) -> np.ndarray:
    if not np.isin(matrix, (0, 1)).all():
        raise ValueError(f"{path}: label values must be 0 or 1.")
    return matrix


def _check_shape(path: pathlib.Path, labels: np.ndarray, rows: int, columns: int) -> None:
    if labels.shape != (rows, columns):
        raise ValueError(
            f"{path}: label matrix has shape {labels.shape}, expected ({rows}, {columns}) "
            "(list length, vocabulary size)."
        )


def _check_same_images(
    list_path: pathlib.Path, entries: list[str], json_path: pathlib.Path, json_entries: list[str]
) -> None:
    base_names = [pathlib.PurePosixPath(e).name for e in entries]
    if base_names != json_entries:
        mismatch = next(
            (i for i, (a, b) in enumerate(zip(base_names, json_entries)) if a != b),
            min(len(base_names), len(json_entries)),
        )
        raise ValueError(
            f"{json_path} does not follow the order of {list_path} ({len(json_entries)} vs "
            f"{len(entries)} images; first difference at position {mismatch})."
        )


def _check_disjoint(splits: dict[str, SplitAnnotations]) -> None:
    seen: dict[str, str] = {}
    for split, annotations in splits.items():
        for entry in annotations.entries:
            if entry in seen:
                raise ValueError(f"Image {entry!r} is in both the {seen[entry]} and {split} splits.")
            seen[entry] = split
