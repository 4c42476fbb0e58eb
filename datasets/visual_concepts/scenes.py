"""Draws random multi-label scenes of visual concepts with numpy.

A scene is an outdoor view (a sky over a ground, maybe with a sun, moon,
clouds or a tree) or an indoor one (a wall, maybe a floor), with one to three
coloured shapes, some filled with a texture. Its labels are the words of every
part drawn. Shapes, colours and textures are drawn with Zipf-like weights, so
label frequencies have a long tail like those of Corel5k or ESP Game.
"""

from __future__ import annotations

import functools

import numpy as np

SKIES = {"sky": ((90, 150, 230), (175, 210, 250)), "sunset": ((240, 110, 60), (250, 200, 120)),
         "night": ((10, 10, 40), (45, 45, 95))}
GROUNDS = {"grass": (60, 150, 50), "water": (30, 90, 170), "sand": (220, 200, 140),
           "snow": (238, 240, 246), "road": (90, 90, 95)}
INDOOR = ("wall", "floor")
EXTRAS = ("sun", "moon", "cloud", "tree")
SHAPES = ("circle", "square", "triangle", "ring", "cross", "diamond")
TEXTURES = ("striped", "checkered", "dotted")
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "yellow": (240, 220, 30),
           "green": (30, 180, 40), "white": (245, 245, 245), "black": (20, 20, 20),
           "orange": (250, 140, 20), "purple": (140, 40, 170), "pink": (250, 140, 190),
           "brown": (130, 80, 30)}

VOCABULARY = (*SKIES, *GROUNDS, *INDOOR, *EXTRAS, *SHAPES, *TEXTURES, *COLOURS)


def _zipf(n: int, exponent: float = 1.0) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


class _Canvas:
    """An RGB float image and the words of what has been painted on it."""

    def __init__(self, size: int):
        self.yy, self.xx = _grid(size)
        self.pixels = np.zeros((size, size, 3), np.float32)
        self.words: set[str] = set()

    def paint(self, mask: np.ndarray, colour, word: str | None = None) -> None:
        np.copyto(self.pixels, colour, where=mask[..., None])
        if word is not None and mask.any():
            self.words.add(word)


def _jitter(rng: np.random.Generator, colour, amount: float = 15.0) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _shape_mask(canvas: _Canvas, shape: str, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = canvas.yy - cy, canvas.xx - cx
    if shape == "circle":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return np.maximum(abs(dy), abs(dx)) <= 0.85 * r
    if shape == "triangle":
        return (dy >= -r) & (dy <= 0.8 * r) & (abs(dx) <= 0.6 * (dy + r))
    if shape == "ring":
        return (dy**2 + dx**2 <= r**2) & (dy**2 + dx**2 >= (0.55 * r) ** 2)
    if shape == "cross":
        return ((abs(dx) <= 0.3 * r) & (abs(dy) <= r)) | ((abs(dy) <= 0.3 * r) & (abs(dx) <= r))
    if shape == "diamond":
        return abs(dy) + abs(dx) <= r
    raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")


def _texture_mask(canvas: _Canvas, texture: str) -> np.ndarray:
    yy, xx = canvas.yy.astype(np.int32), canvas.xx.astype(np.int32)
    if texture == "striped":
        return ((xx + yy) // 3) % 2 == 0
    if texture == "checkered":
        return (xx // 3 + yy // 3) % 2 == 0
    return (xx % 5 - 2) ** 2 + (yy % 5 - 2) ** 2 <= 2  # dotted


def _paint_outdoor(canvas: _Canvas, rng: np.random.Generator, size: int) -> None:
    horizon = rng.uniform(0.4, 0.62) * size
    sky = rng.choice(list(SKIES), p=[0.6, 0.22, 0.18])
    top, bottom = (_jitter(rng, c) for c in SKIES[sky])
    t = np.clip(canvas.yy / horizon, 0, 1)[..., None]
    canvas.paint(canvas.yy < horizon, (1 - t) * top + t * bottom, sky)
    if sky != "night" and rng.random() < 0.35:
        cy, cx = rng.uniform(4, horizon - 4), rng.uniform(8, size - 8)
        cloud = np.zeros_like(canvas.yy, bool)
        for dx in (-6, 0, 6):
            cloud |= ((canvas.yy - cy) / 3.5) ** 2 + ((canvas.xx - cx - dx) / 5) ** 2 <= 1
        canvas.paint(cloud & (canvas.yy < horizon), _jitter(rng, (240, 240, 245), 8), "cloud")

    if sky != "night" and rng.random() < 0.4:
        cy, cx = rng.uniform(5, horizon - 6), rng.uniform(6, size - 6)
        sun = (canvas.yy - cy) ** 2 + (canvas.xx - cx) ** 2 <= rng.uniform(4, 7) ** 2
        canvas.paint(sun & (canvas.yy < horizon), _jitter(rng, (255, 225, 60), 10), "sun")
    if sky == "night" and rng.random() < 0.7:
        cy, cx, r = rng.uniform(6, horizon - 6), rng.uniform(6, size - 6), rng.uniform(4, 6)
        disc = (canvas.yy - cy) ** 2 + (canvas.xx - cx) ** 2 <= r**2
        bite = (canvas.yy - cy + 0.3 * r) ** 2 + (canvas.xx - cx - 0.6 * r) ** 2 <= r**2
        canvas.paint(disc & ~bite, _jitter(rng, (235, 235, 200), 10), "moon")
    ground = rng.choice(list(GROUNDS), p=_zipf(len(GROUNDS), 0.8))
    below = canvas.yy >= horizon
    colour = _jitter(rng, GROUNDS[ground])
    if ground == "water":
        waves = 0.85 + 0.15 * np.sin(canvas.yy * 1.6 + 2 * np.sin(canvas.xx * 0.3))
        colour = colour * waves[..., None]
    elif ground == "road":
        line = (abs(canvas.xx - size / 2) < 1.2) & ((canvas.yy.astype(int) // 4) % 2 == 0)
        colour = np.where(line[..., None], 235.0, colour)
    else:
        grain = {"grass": 25.0, "sand": 12.0, "snow": 4.0}[ground]
        colour = colour + rng.normal(0, grain, (size, size, 1)).astype(np.float32)
    canvas.paint(below, colour, ground)
    if ground in ("grass", "snow") and rng.random() < 0.3:
        cx, base = rng.uniform(6, size - 6), rng.uniform(horizon + 4, size - 1)
        trunk = (abs(canvas.xx - cx) <= 1.5) & (canvas.yy <= base) & (canvas.yy >= base - 6)
        crown = (canvas.yy <= base - 5) & (canvas.yy >= base - 19) & (
            abs(canvas.xx - cx) <= 0.45 * (canvas.yy - (base - 19)))
        canvas.paint(trunk, _jitter(rng, (100, 60, 25), 10), "tree")
        canvas.paint(crown, _jitter(rng, (20, 110, 30), 10), "tree")


def _paint_indoor(canvas: _Canvas, rng: np.random.Generator, size: int) -> None:
    wall = _jitter(rng, (200, 190, 170), 30) * (0.95 + 0.05 * np.sin(canvas.xx * 0.8))[..., None]
    canvas.paint(np.ones_like(canvas.yy, bool), wall, "wall")
    if rng.random() < 0.7:
        top = rng.uniform(0.6, 0.75) * size
        boards = (0.85 + 0.15 * ((canvas.xx.astype(int) // 6) % 2))[..., None]
        canvas.paint(canvas.yy >= top, _jitter(rng, (150, 100, 55), 20) * boards, "floor")


def render_scene(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, list[str]]:
    """Draws one scene.

    Args:
        rng: The random generator; the same state gives the same scene.
        size: Height and width in pixels.

    Returns:
        (uint8 image of shape (size, size, 3), its words in vocabulary order).
    """
    canvas = _Canvas(size)
    (_paint_outdoor if rng.random() < 0.8 else _paint_indoor)(canvas, rng, size)
    occupied = np.zeros((size, size), bool)
    for _ in range(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15])):
        shape = rng.choice(SHAPES, p=_zipf(len(SHAPES)))
        colour_word = rng.choice(list(COLOURS), p=_zipf(len(COLOURS), 1.1))
        r = rng.uniform(0.11, 0.19) * size
        for _ in range(10):  # objects do not hide each other, so every label stays visible
            cy, cx = rng.uniform(r, size - r, 2)
            mask = _shape_mask(canvas, shape, cy, cx, r)
            if not (mask & occupied).any():
                break
        occupied |= mask
        colour = _jitter(rng, COLOURS[colour_word])
        canvas.paint(mask, colour, shape)
        canvas.words.add(colour_word)
        if rng.random() < 0.3:
            texture = rng.choice(TEXTURES, p=_zipf(len(TEXTURES)))
            shade = colour * 0.35 if colour.mean() > 60 else np.full(3, 160.0, np.float32)
            canvas.paint(mask & _texture_mask(canvas, texture), shade, texture)
    canvas.pixels += rng.normal(0, 4, canvas.pixels.shape).astype(np.float32)
    image = np.clip(canvas.pixels, 0, 255).round().astype(np.uint8)
    return image, [w for w in VOCABULARY if w in canvas.words]
