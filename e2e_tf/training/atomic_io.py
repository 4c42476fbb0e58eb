"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Training can be killed at any moment (pre-emption, Ctrl-C); everything the
model directory promises (model.keras, metrics, flags) is written to a
temporary file in the same folder and renamed over the target, which POSIX
makes atomic.
"""

import json
import os
import pathlib
from typing import Any, Callable

import keras


def _atomic_replace(path: os.PathLike, write: Callable[[str], None], suffix: str = "") -> None:
    """Calls `write(tmp_path)` then renames `tmp_path` onto `path`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{suffix or path.suffix}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    _atomic_replace(path, write)


def atomic_write_json(path: os.PathLike, value: Any) -> None:
    """Writes `value` as indented JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def atomic_save_model(model: keras.Model, path: os.PathLike) -> None:
    """Saves `model` in the `.keras` format to `path` atomically."""
    if pathlib.Path(path).suffix != ".keras":
        raise ValueError(f"A model file must end in .keras. Received: path={str(path)!r}")
    _atomic_replace(path, lambda tmp: model.save(tmp), suffix=".keras")
