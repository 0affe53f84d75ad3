"""Host-side drawing: image grids, the latent scatter plot, PNG files written atomically.

Everything takes numpy arrays of floats in [0, 1] (or class labels) and knows nothing of models.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw

from vae_jax.atomic import atomic_write

__all__ = [
    "PALETTE",
    "image_grid",
    "save_png",
    "save_reconstructions",
    "save_samples",
    "latent_scatter",
    "save_latent_scatter",
]


def image_grid(images: np.ndarray, columns: int) -> np.ndarray:
    """Tiles (N, H, W, C) images in [0, 1] into one (rows*(H+1)+1, columns*(W+1)+1, C) uint8
    image with 1-pixel gray borders; missing tiles stay gray."""
    count, height, width, channels = images.shape
    rows = max(1, math.ceil(count / columns))
    grid = np.full((rows * (height + 1) + 1, columns * (width + 1) + 1, channels), 128, np.uint8)
    pixels = np.clip(np.rint(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = 1 + row * (height + 1), 1 + column * (width + 1)
        grid[top : top + height, left : left + width] = pixels[index]
    return grid


def save_png(path: str, grid: np.ndarray) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    with atomic_write(path, "wb") as f:
        image.save(f, format="PNG")


def save_reconstructions(path: str, inputs: np.ndarray, reconstructions: np.ndarray) -> None:
    """Each input followed by its reconstruction, in pairs along rows of 8 pairs."""
    pairs = np.stack([inputs, reconstructions], axis=1).reshape((-1, *inputs.shape[1:]))
    save_png(path, image_grid(pairs, columns=16))


def save_samples(path: str, samples: np.ndarray) -> None:
    save_png(path, image_grid(samples, columns=8))


# Ten well-separated colours (Tableau 10), cycled for more classes; shared by every plot so
# that a class or a series has one colour everywhere.
PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def latent_scatter(means: np.ndarray, labels: np.ndarray, size: int = 320) -> np.ndarray:
    """An RGB scatter plot of the first two latent dimensions, a dot per example coloured by its
    label, on a square symmetric about the origin; with one latent, the second axis is zero."""
    points = np.asarray(means, np.float64)[:, :2]
    if points.shape[1] == 1:
        points = np.concatenate([points, np.zeros_like(points)], axis=1)
    extent = max(float(np.percentile(np.abs(points), 99)) if len(points) else 1.0, 1e-6) * 1.05
    margin = 8
    pixels = np.clip((points / extent + 1) / 2 * (size - 2 * margin) + margin, 0, size - 1)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    middle = size // 2
    draw.line([(margin, middle), (size - margin, middle)], fill=(210, 210, 210))
    draw.line([(middle, margin), (middle, size - margin)], fill=(210, 210, 210))
    for (x, y), label in zip(pixels, np.asarray(labels)):
        colour = PALETTE[int(label) % len(PALETTE)]
        draw.ellipse([x - 2, size - 1 - y - 2, x + 2, size - 1 - y + 2], fill=colour)
    return np.asarray(canvas)


def save_latent_scatter(path: str, means: np.ndarray, labels: np.ndarray) -> None:
    save_png(path, latent_scatter(means, labels))
