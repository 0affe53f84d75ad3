"""dSprites (Higgins et al., 2017; Matthey et al., 2017), generated and rendered on the device.

Nothing is downloaded: a record is the (5,) vector of factor indices of one image, and `render`
turns a batch of records into 64x64 binary images inside the jitted step, so the whole data set
costs 14.7 MB of int32 indices instead of 3 GB of pixels.

Factors, in order (the index of image i is i written in the radices `FACTOR_SIZES`, last factor
fastest, as in the original):

  shape        3   square, ellipse, heart
  scale        6   0.5 ... 1, linearly spaced
  orientation 40   0 ... 2*pi, linearly spaced, endpoint excluded (see symmetry below)
  position_x  32   0 ... 1, left to right (column index)
  position_y  32   0 ... 1, top to bottom (row index; image y points down)

Geometry. A pixel at (row r, column c) has its centre at (x, y) = (c + 1/2, r + 1/2) in a frame
whose unit is one pixel. A sprite's centre is

  (x0, y0) = (16.25 + 31 * position_x, 16.25 + 31 * position_y),

so one position step is exactly one pixel and the centres span the middle half of the image.
Integer steps make every position a pure translation of the same rasterised pattern, so two
different positions can never give the same image; distinctness then only asks that the
3 * 6 * 40 patterns differ, which tests/test_dsprites.py verifies over all 737,280 images.
The quarter pixel keeps centres off every point the pixel grid is symmetric about (pixel centres,
corners, edge midpoints) and keeps pixel centres off the edges of axis-aligned sprites, so no
exact tie is left to floating-point rounding.

Orientation and symmetry. A square is unchanged by a quarter turn and an ellipse by a half turn,
so rotating them by 2*pi*k/40 (as the original does) repeats every square 4 times and every ellipse
twice, whatever the pixel grid: the rotated sets are identical. Here a shape with rotational
symmetry of order n (square 4, ellipse 2, heart 1; `SYMMETRY_ORDERS`) is rotated by the angle
orientation / n. The orientation factor thus still walks once around a circle (level 39 is next to
level 0) for every shape, but now each of its 40 levels is a different image.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    from vae_jax.data import Dataset

FACTOR_NAMES = ("shape", "scale", "orientation", "position_x", "position_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
NUM_IMAGES = 737_280
IMAGE_SHAPE = (64, 64, 1)
SHAPE_NAMES = ("square", "ellipse", "heart")
# Order of each shape's rotational symmetry: the sprite turns by orientation / order.
SYMMETRY_ORDERS = (4, 2, 1)
TEST_SIZE = 10_000

assert math.prod(FACTOR_SIZES) == NUM_IMAGES

_SIZE = IMAGE_SHAPE[0]
# Leftmost/topmost sprite centre, in pixels. The quarter pixel puts pixel centres k + 1/4 px from
# the sprite centre along each axis: none on the centre or on an axis of the sprite, and none on
# the edge of an axis-aligned one (its half-sizes avoid k + 1/4, k + 3/4): no exact ties to round.
_POSITION_ORIGIN = 16.25
# One pixel per position step, so positions are exact translations of one rasterised pattern.
_POSITION_SPAN = float(FACTOR_SIZES[3] - 1)
# Size in pixels of each shape at scale 1 (half-side, semi-major axis, heart unit). Chosen for
# about equal areas, ~400 px^2 (a 20.6-px square, ~1/3 of the image wide), and a radius of at most
# 14.6 px around the centre, so that even at the extreme positions (centre 16.25 px from an edge)
# the two outermost rows and columns stay dark.
# The square's half-side is not a whole number on purpose: with quarter-pixel centres, an integer
# half-side (10 -> 5 and 6 px at scales 0.5, 0.6) leaves every pixel centre 0.25 px from the
# edges, farther than a 2.25-degree turn moves them, and orientations 0 and +-1 rasterised alike.
# 10.3 puts an edge close to a row of pixel centres at every scale (any of 10.2 ... 10.35 works).
_SQUARE_HALF_SIDE = 10.3
_ELLIPSE_SEMI_AXES = (14.0, 9.0)
_HEART_UNIT = 10.45
# Centroid of the unit heart region below, from its defining inequality (numerically): the
# sprite rotates about its centroid, so that position means where its mass is.
_HEART_CENTROID_Y = 0.29348


def factor_values() -> dict[str, np.ndarray]:
    """The value of each factor level, keyed by `FACTOR_NAMES`.

    Returns:
      shape: int32 (3,) codes 0, 1, 2 (`SHAPE_NAMES`); scale: float64 (6,) 0.5 ... 1;
      orientation: float64 (40,) radians 2*pi*k/40 on the shape's orientation circle (the sprite
      itself turns by orientation / `SYMMETRY_ORDERS[shape]`); position_x, position_y: float64
      (32,) 0 ... 1.
    """
    return {
        "shape": np.arange(FACTOR_SIZES[0], dtype=np.int32),
        "scale": np.linspace(0.5, 1.0, FACTOR_SIZES[1]),
        "orientation": np.linspace(0.0, 2 * np.pi, FACTOR_SIZES[2], endpoint=False),
        "position_x": np.linspace(0.0, 1.0, FACTOR_SIZES[3]),
        "position_y": np.linspace(0.0, 1.0, FACTOR_SIZES[4]),
    }


def all_factor_indices() -> np.ndarray:
    """Every combination of factor levels once, in the original's order.

    Returns:
      (737280, 5) int32; row i holds the digits of i in the mixed radices `FACTOR_SIZES`
      (row-major, last factor fastest), so it is the record of image i.
    """
    return np.indices(FACTOR_SIZES, dtype=np.int32).reshape(len(FACTOR_SIZES), -1).T.copy()


def _tables() -> dict[str, np.ndarray]:
    """Per-level constants for `render`, computed once in float64 and rounded to float32.

    Looking up cos/sin instead of evaluating them in the step makes every backend start from the
    same bits, so CPU, GPU and TPU agree on all but pathological boundary pixels.
    """
    values = factor_values()
    angles = values["orientation"][None, :] / np.array(SYMMETRY_ORDERS, float)[:, None]  # (3, 40)
    unit = np.array([_SQUARE_HALF_SIDE, _ELLIPSE_SEMI_AXES[0], _HEART_UNIT])
    return {
        "cos": np.cos(angles).astype(np.float32),
        "sin": np.sin(angles).astype(np.float32),
        # (3, 6): pixels -> the shape's unit frame.
        "inv_size": (1.0 / (unit[:, None] * values["scale"][None, :])).astype(np.float32),
        "centre_x": (_POSITION_ORIGIN + _POSITION_SPAN * values["position_x"]).astype(np.float32),
        "centre_y": (_POSITION_ORIGIN + _POSITION_SPAN * values["position_y"]).astype(np.float32),
        "pixel_centres": (np.arange(_SIZE) + 0.5).astype(np.float32),
    }


_TABLES = _tables()


def _inside_square(u: jax.Array, v: jax.Array) -> jax.Array:
    """max(|u|, |v|) <= 1: the square of half-side 1, edges along the axes at orientation 0."""
    return jnp.maximum(jnp.abs(u), jnp.abs(v)) <= 1.0


def _inside_ellipse(u: jax.Array, v: jax.Array) -> jax.Array:
    """u^2 + (v / b)^2 <= 1, b = 9/14: semi-major axis 1 along u, horizontal at orientation 0."""
    ratio = _ELLIPSE_SEMI_AXES[0] / _ELLIPSE_SEMI_AXES[1]
    return u * u + (v * ratio) ** 2 <= 1.0


def _inside_heart(u: jax.Array, v: jax.Array) -> jax.Array:
    """The classic implicit heart (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, with y pointing up.

    Its region spans x in [-1.14, 1.14], y in [-1, 1.24], area 3.66 (so `_HEART_UNIT` = 10.45 px
    gives 400 px^2, like the other shapes), with the lobes up and the tip at (0, -1): with v
    pointing up on the screen the heart points down at orientation 0. (u, v) is measured from the
    centroid (0, 0.2935), hence the shift.
    """
    y = v + _HEART_CENTROID_Y
    x2 = u * u
    r = x2 + y * y - 1.0
    return r * r * r - x2 * y * y * y <= 0.0


def render(factor_indices: jax.Array) -> jax.Array:
    """Rasterises dSprites images from their factor indices; jittable, no loop over the batch.

    A pixel is lit when its centre lies inside the sprite: each centre p is mapped to the shape's
    unit frame, (u, v) = R(-angle) (p - centre) / (scale * size), with y pointing up so that a
    positive angle turns the sprite counter-clockwise on screen, and tested against the shape's
    inequality. All three inequalities are evaluated and one is selected per image, which keeps
    the computation a branch-free elementwise kernel.

    Args:
      factor_indices: (B, 5) integer factor indices, columns in `FACTOR_NAMES` order.

    Returns:
      (B, 64, 64, 1) uint8 images with values exactly 0 or 255.
    """
    idx = jnp.asarray(factor_indices).astype(jnp.int32)
    shape, scale, orientation, pos_x, pos_y = (idx[:, k] for k in range(len(FACTOR_SIZES)))
    t = {name: jnp.asarray(table) for name, table in _TABLES.items()}

    def per_image(table):  # (B,) -> (B, 1, 1), to broadcast against the pixel grid.
        return table[:, None, None]

    cos = per_image(t["cos"][shape, orientation])
    sin = per_image(t["sin"][shape, orientation])
    inv_size = per_image(t["inv_size"][shape, scale])
    dx = t["pixel_centres"][None, None, :] - per_image(t["centre_x"][pos_x])  # (B, 1, 64)
    dy = per_image(t["centre_y"][pos_y]) - t["pixel_centres"][None, :, None]  # (B, 64, 1), up
    u = (cos * dx + sin * dy) * inv_size  # (B, 64, 64)
    v = (cos * dy - sin * dx) * inv_size
    shape = per_image(shape)
    inside = jnp.where(
        shape == 0,
        _inside_square(u, v),
        jnp.where(shape == 1, _inside_ellipse(u, v), _inside_heart(u, v)),
    )
    return jnp.where(inside, jnp.uint8(255), jnp.uint8(0))[..., None]


def load_dsprites() -> Dataset:
    """All of dSprites as factor-index records, rendered on the device by `render`.

    Returns:
      A `Dataset` with splits 'train' (all 737,280 records, in order) and 'test' (10,000 distinct
      records drawn without replacement by np.random.default_rng(0), in drawn order so that any
      prefix is itself a random sample; they are also in 'train', as dSprites has no held-out
      split), image_shape (64, 64, 1), binary=True, labels = the shape index (int32), render.
    """
    from vae_jax.data import Dataset  # Lazily: vae_jax.data imports this module's loader.

    train = all_factor_indices()
    test_rows = np.random.default_rng(0).choice(NUM_IMAGES, size=TEST_SIZE, replace=False)
    test = train[test_rows]
    return Dataset(
        name="dsprites",
        splits={"train": train, "test": test},
        image_shape=IMAGE_SHAPE,
        binary=True,
        labels={"train": train[:, 0].copy(), "test": test[:, 0].copy()},
        render=render,
    )
