"""Finds a dataset's image files by list entry and encodes them as RGB for TFDS."""

from __future__ import annotations

import collections
import io
import os
import pathlib

from PIL import Image

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


class ImageIndex:
    """Every image file under a folder, found by one directory walk.

    An entry such as `00/25` matches the file whose path without extension ends
    with it (`00/25.jpeg`, `images/00/25.jpg`), else the one file whose base name
    is its last part (the flat `images/25.jpg`). Looking up an entry touches no
    file system.

    Args:
        root: The folder to index (recursively, following no symlinked dirs).
    """

    def __init__(self, root: pathlib.Path):
        self.root = pathlib.Path(root)
        self._by_suffix: dict[str, list[str]] = collections.defaultdict(list)
        # Plain strings, not pathlib: the walk over ~20k files stays well under a second.
        root_prefix = len(os.path.join(str(self.root), ""))
        for folder, _, files in os.walk(self.root):
            relative_folder = folder[root_prefix:].replace(os.sep, "/")
            for file_name in files:
                stem, extension = os.path.splitext(file_name)
                if extension.lower() not in IMAGE_EXTENSIONS:
                    continue
                path = os.path.join(folder, file_name)
                parts = (relative_folder.split("/") if relative_folder else []) + [stem]
                for start in range(len(parts)):
                    self._by_suffix["/".join(parts[start:])].append(path)

    def find(self, entry: str) -> str:
        """The image file of a list entry (`<folder>/<id>` or `<id>`).

        Raises:
            FileNotFoundError: no file matches; names the entry and the folder.
            ValueError: several files match equally well.
        """
        entry = entry.strip("/")
        base_name = entry.rsplit("/", 1)[-1]
        for key in dict.fromkeys((entry, base_name)):
            matches = self._by_suffix.get(key)
            if matches and len(matches) == 1:
                return matches[0]
            if matches:
                raise ValueError(
                    f"Image entry {entry!r} matches several files under {self.root}: "
                    f"{sorted(matches)[:5]}"
                )
        raise FileNotFoundError(
            f"No image for list entry {entry!r} under {self.root}: looked for "
            f"[.../]{entry}{{{','.join(IMAGE_EXTENSIONS)}}} and for a file named "
            f"{base_name}{{{','.join(IMAGE_EXTENSIONS)}}} anywhere below it."
        )


def encoded_rgb(path: str | os.PathLike) -> bytes:
    """The image as encoded bytes that decode to 3-channel RGB.

    An RGB JPEG is returned as its own file bytes (no re-encoding, no quality
    loss); any other mode (grayscale, CMYK, palette, RGBA) or format is
    converted to RGB and encoded as PNG. The image is fully decoded once either
    way, so a truncated or corrupt file fails here rather than during training.

    Raises:
        ValueError: the file cannot be decoded; names the file.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.format == "JPEG" and image.mode == "RGB":
                return data
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"Cannot decode image {path}: {e}") from e
    return buffer.getvalue()
