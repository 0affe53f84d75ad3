"""The pictures to look at after training: latent traversals, interpolations, the 2-D manifold,
and the training curves.

Each picture is a pure function that returns an image array, and a `save_*` wrapper writes it as
a PNG through `drawing.save_png` (atomically). The model pictures return (N, H, W, C) float32
arrays of E[x|z] in [0, 1] (`objectives.likelihood_mean` of the decoder's output), in the order
the PNG tiles them row by row; their JAX parts (encoding, building the latent codes, decoding)
run as one compiled call per picture, with the model a static argument, so that drawing the same
picture again for new parameters does not compile again. Every decode is one batched call over
all the latent codes, split into chunks of `chunk_size` codes (scanned with `lax.map`) only when
there are more of them than that.

`training_curves` draws the per-epoch lines of `metrics.jsonl` (read it with
`workdir.MetricsLog(path).read()`) with PIL, on the host.

Images given to these functions are (H, W, C) arrays with C = 1 or 3: floats in [0, 1], or
integer pixels 0..255 (divided by 255).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vae_jax import drawing, objectives

DEFAULT_CHUNK_SIZE = 1024  # latent codes decoded at once

# ---------------------------------------------------------------------------------------------
# The JAX parts: pure functions of arrays, jittable.


def _as_float_images(images) -> jax.Array:
    images = jnp.asarray(images)
    if jnp.issubdtype(images.dtype, jnp.integer):
        return images.astype(jnp.float32) * (1.0 / 255.0)
    return images.astype(jnp.float32)


def _posterior_means(model, params, images: jax.Array) -> jax.Array:
    """The means of q(z|x) of a (B, H, W, C) batch: (B, latents)."""
    mean, _ = model.apply(params, images, method="encode")
    return mean


def _decode(model, params, z: jax.Array, chunk_size: int) -> jax.Array:
    """E[x|z] for (N, latents) codes: (N, H, W, C). At most `chunk_size` codes per decode; more
    are padded to whole chunks and mapped over, so memory stays at one chunk's activations."""

    def decode(codes):
        return objectives.likelihood_mean(*model.apply(params, codes, method="decode"))

    count = z.shape[0]
    if count <= chunk_size:
        return decode(z)
    num_chunks = -(-count // chunk_size)
    padded = jnp.pad(z, ((0, num_chunks * chunk_size - count), (0, 0)))
    images = jax.lax.map(decode, padded.reshape((num_chunks, chunk_size, z.shape[1])))
    return images.reshape((num_chunks * chunk_size, *images.shape[2:]))[:count]


@functools.partial(jax.jit, static_argnames=("model", "chunk_size"))
def decode_means(model, params, z: jax.Array, chunk_size: int = DEFAULT_CHUNK_SIZE) -> jax.Array:
    """E[x|z] in [0, 1] for a (N, latents) array of codes: (N, H, W, C), compiled."""
    return _decode(model, params, z, chunk_size)


def traversal_latents(
    mean: jax.Array, num_steps: int, span: float, dimensions: jax.Array | None = None
) -> jax.Array:
    """The codes of a latent traversal: (len(dimensions) * num_steps, latents).

    Row r (codes r * num_steps ... (r + 1) * num_steps - 1) is `mean` with dimension
    `dimensions[r]` replaced by `num_steps` values evenly spaced over [-span, span], endpoints
    included; these are absolute values of z, so in units of the prior's standard deviation.
    `dimensions` defaults to every dimension in index order.
    """
    latents = mean.shape[-1]
    dimensions = jnp.arange(latents) if dimensions is None else jnp.asarray(dimensions)
    values = jnp.linspace(-span, span, num_steps, dtype=mean.dtype)
    varied = jax.nn.one_hot(dimensions, latents, dtype=jnp.bool_)  # (R, latents)
    z = jnp.where(varied[:, None, :], values[None, :, None], mean[None, None, :])
    return z.reshape((-1, latents))


def interpolation_latents(mean_a: jax.Array, mean_b: jax.Array, num_steps: int) -> jax.Array:
    """(..., num_steps, latents) codes (1 - t) a + t b for t = 0, 1/(n-1), ..., 1: the first is
    exactly `mean_a` and the last exactly `mean_b`."""
    t = (jnp.arange(num_steps) / (num_steps - 1)).astype(mean_a.dtype)[:, None]
    return (1.0 - t) * mean_a[..., None, :] + t * mean_b[..., None, :]


@functools.partial(jax.jit, static_argnames=("side",))
def manifold_latents(side: int) -> jax.Array:
    """The (side * side, 2) codes of the manifold picture, in row-major tile order.

    Both coordinates run over the standard-normal quantiles Φ⁻¹((i + 0.5) / side), i = 0..side-1
    (as in Kingma & Welling 2014, figure 4), so that each tile stands for an equal share of the
    prior's mass. z1 (dimension 0) increases left to right along a row; z2 (dimension 1) decreases
    from the top row to the bottom one, as on a plot's y axis. The quantiles are exactly
    antisymmetric: the lower half is computed and mirrored (and the middle one of an odd side is
    exactly 0).
    """
    half = side // 2
    lower = jax.scipy.special.ndtri((jnp.arange(half, dtype=jnp.float32) + 0.5) / side)
    middle = jnp.zeros((side % 2,), jnp.float32)
    quantiles = jnp.concatenate([lower, middle, -lower[::-1]])
    z1 = jnp.broadcast_to(quantiles[None, :], (side, side))
    z2 = jnp.broadcast_to(quantiles[::-1, None], (side, side))
    return jnp.stack([z1, z2], axis=-1).reshape((side * side, 2))


@functools.partial(jax.jit, static_argnames=("model", "num_steps", "chunk_size"))
def _traversals(model, params, image, dimensions, num_steps, span, chunk_size):
    mean = _posterior_means(model, params, image[None])[0]
    return _decode(model, params, traversal_latents(mean, num_steps, span, dimensions), chunk_size)


@functools.partial(jax.jit, static_argnames=("model", "num_steps", "chunk_size"))
def _interpolations(model, params, images_a, images_b, num_steps, chunk_size):
    """(N, num_steps, H, W, C) for (N, H, W, C) batches of endpoints."""
    count = images_a.shape[0]
    means = _posterior_means(model, params, jnp.concatenate([images_a, images_b]))
    z = interpolation_latents(means[:count], means[count:], num_steps)
    images = _decode(model, params, z.reshape((count * num_steps, -1)), chunk_size)
    return images.reshape((count, num_steps, *images.shape[1:]))


@functools.partial(jax.jit, static_argnames=("model", "side", "chunk_size"))
def _manifold(model, params, side, chunk_size):
    return _decode(model, params, manifold_latents(side), chunk_size)


@functools.partial(jax.jit, static_argnames=("model",))
def _mean_kl_per_dimension(model, params, images):
    mean, log_variance = model.apply(params, images, method="encode")
    kl = 0.5 * (jnp.exp(log_variance) + mean**2 - 1.0 - log_variance)
    return jnp.mean(kl, axis=0)


# ---------------------------------------------------------------------------------------------
# The model pictures: host-side checks around the compiled parts.


def _latent_count(model) -> int:
    return int(model.encoder.latents)


def _check_image(image, name: str) -> jax.Array:
    image = _as_float_images(image)
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(
            f"{name} must be one (H, W, C) image with C = 1 or 3; got shape {tuple(image.shape)}"
        )
    return image


def _check_steps(num_steps: int) -> int:
    if int(num_steps) < 2:
        raise ValueError(f"num_steps must be at least 2 (both ends); got {num_steps}")
    return int(num_steps)


def latent_kl(model, params, images) -> np.ndarray:
    """The mean over `images` (N, H, W, C) of KL(q(z_j|x) || N(0, 1)) for each latent dimension
    j: (latents,) nats. They sum to the mean of the usual KL term. A dimension with a KL near
    zero is unused (its posterior is the prior): its traversal row shows one picture."""
    images = _as_float_images(images)
    if images.ndim != 4:
        raise ValueError(f"images must be a (N, H, W, C) batch; got shape {tuple(images.shape)}")
    return np.asarray(_mean_kl_per_dimension(model, params, images))


def dimensions_by_kl(model, params, images) -> np.ndarray:
    """The latent dimensions in decreasing order of `latent_kl` (ties in index order): pass it
    as `dimensions` to put the dimensions the model uses most at the top of a traversal."""
    return np.argsort(-latent_kl(model, params, images), kind="stable")


def latent_traversals(
    model,
    params,
    image,
    num_steps: int = 9,
    span: float = 3.0,
    dimensions: Sequence[int] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """Decoded traversals of the latent space around one image's posterior mean.

    Starts from the mean of q(z|image) and, for each latent dimension in turn, sets that
    dimension to `num_steps` values evenly spaced over [-span, span] (absolute values of z: prior
    standard deviations), the other dimensions fixed at the mean; see `traversal_latents`.

    Args:
      model: a `models.VAE`.
      params: its variables.
      image: (H, W, C) in [0, 1].
      num_steps: values per dimension, >= 2.
      span: the values run from -span to span.
      dimensions: which dimensions get a row, in row order; None is every dimension in index
        order. `dimensions_by_kl` orders them by how much the model uses them.
      chunk_size: the most codes decoded at once.

    Returns:
      (len(dimensions) * num_steps, H, W, C) float32 E[x|z], row by row: one row per dimension.
    """
    image = _check_image(image, "image")
    num_steps = _check_steps(num_steps)
    latents = _latent_count(model)
    if dimensions is None:
        dimensions = np.arange(latents)
    dimensions = np.asarray(dimensions)
    if (
        dimensions.ndim != 1
        or len(dimensions) == 0
        or not np.issubdtype(dimensions.dtype, np.integer)
        or dimensions.min() < 0
        or dimensions.max() >= latents
    ):
        raise ValueError(
            f"dimensions must be a non-empty list of latent indices in 0..{latents - 1}; "
            f"got {dimensions.tolist()}"
        )
    images = _traversals(
        model, params, image, jnp.asarray(dimensions, jnp.int32), num_steps, span, chunk_size
    )
    return np.asarray(images)


def interpolation(
    model, params, image_a, image_b, num_steps: int = 10, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> np.ndarray:
    """Decodes the straight line between the posterior means of two images.

    Args:
      model: a `models.VAE`.
      params: its variables.
      image_a, image_b: (H, W, C) in [0, 1]; or (N, H, W, C) batches, to interpolate N pairs.
      num_steps: codes on the line, both means included (the first and last exactly), >= 2.
      chunk_size: the most codes decoded at once.

    Returns:
      (num_steps, H, W, C) float32 E[x|z] from image_a's end to image_b's; (N, num_steps, H, W,
      C) for batches.
    """
    a, b = _as_float_images(image_a), _as_float_images(image_b)
    if a.shape != b.shape or a.ndim not in (3, 4) or a.shape[-1] not in (1, 3):
        raise ValueError(
            "image_a and image_b must both be (H, W, C) images (or (N, H, W, C) batches) of one "
            f"shape, C = 1 or 3; got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    num_steps = _check_steps(num_steps)
    single = a.ndim == 3
    if single:
        a, b = a[None], b[None]
    images = np.asarray(_interpolations(model, params, a, b, num_steps, chunk_size))
    return images[0] if single else images


def manifold_grid(
    model, params, side: int = 20, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> np.ndarray:
    """The decoded 2-D latent space, for a model with exactly 2 latents.

    Decodes the side x side codes of `manifold_latents`: both axes at standard-normal quantiles,
    z1 increasing left to right, z2 decreasing top to bottom.

    Returns:
      (side * side, H, W, C) float32 E[x|z], row by row.

    Raises:
      ValueError: the model does not have 2 latents.
    """
    latents = _latent_count(model)
    if latents != 2:
        raise ValueError(
            f"manifold_grid draws a 2-D latent space; this model has {latents} latents "
            "(train one with latents=2, or use latent_traversals)"
        )
    if int(side) < 1:
        raise ValueError(f"side must be at least 1; got {side}")
    return np.asarray(_manifold(model, params, int(side), chunk_size))


def save_traversals(
    path: str,
    model,
    params,
    image,
    num_steps: int = 9,
    span: float = 3.0,
    dimensions: Sequence[int] | None = None,
) -> None:
    """`latent_traversals` as a PNG: one row per dimension, num_steps columns."""
    images = latent_traversals(model, params, image, num_steps, span, dimensions)
    drawing.save_png(path, drawing.image_grid(images, columns=num_steps))


def save_interpolation(path: str, model, params, image_a, image_b, num_steps: int = 10) -> None:
    """`interpolation` as a PNG: a row per pair showing image_a, the num_steps decoded codes,
    then image_b. Takes one pair of (H, W, C) images or (N, H, W, C) batches of pairs."""
    images = interpolation(model, params, image_a, image_b, num_steps)
    a, b = np.asarray(_as_float_images(image_a)), np.asarray(_as_float_images(image_b))
    if images.ndim == 4:
        images, a, b = images[None], a[None], b[None]
    rows = np.concatenate([a[:, None], images, b[:, None]], axis=1)
    grid = drawing.image_grid(rows.reshape((-1, *rows.shape[2:])), columns=num_steps + 2)
    drawing.save_png(path, grid)


def save_manifold(path: str, model, params, side: int = 20) -> None:
    """`manifold_grid` as a PNG of side x side tiles."""
    images = manifold_grid(model, params, side)
    drawing.save_png(path, drawing.image_grid(images, columns=side))


# ---------------------------------------------------------------------------------------------
# Training curves, drawn with PIL.

_TRAIN_COLOUR = drawing.PALETTE[0]  # blue
_EVAL_COLOUR = drawing.PALETTE[1]  # orange
_AXIS_COLOUR = (0, 0, 0)
_GRID_COLOUR = (225, 225, 225)
_TEXT_COLOUR = (30, 30, 30)
_OUTLIER_FENCE = 3.0  # interquartile ranges beyond the quartiles
_Y_MARGIN = 0.08  # of the y span, above and below
_CLAMP = 1000  # plot heights: how far off the plot a clipped point is drawn


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _number(value) -> float | None:
    """A record's value as a float (NaN for NaN or infinite), or None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else math.nan


def _curve_series(records: list[dict], split: str) -> tuple[str, list[tuple]]:
    """The quantity to plot ('elbo', else 'recon') and its series (name, (n,) values, (n,)
    present): a value not a finite number is NaN; one missing (or not a number) is not
    `present`."""
    for quantity in ("elbo", "recon"):
        series = []
        for name in ("train", split):
            numbers = [_number(r.get(f"{name}_{quantity}")) for r in records]
            values = np.array(numbers, dtype=float)  # None: NaN
            present = np.array([number is not None for number in numbers])
            if np.isfinite(values).any():
                series.append((name, values, present))
        if series:
            return quantity, series
    raise ValueError(
        f"the records have no finite train_elbo, {split}_elbo, train_recon or {split}_recon to plot"
    )


def _epochs(records: list[dict]) -> np.ndarray:
    epochs = np.array([_number(r.get("epoch")) for r in records], dtype=float)  # None: NaN
    return np.where(np.isfinite(epochs), epochs, np.arange(1, len(records) + 1))


def curve_y_range(values: np.ndarray, keep: np.ndarray | None = None) -> tuple[float, float]:
    """The y range of the training curves: the data's, without its outliers, plus a margin.

    A value more than 3 interquartile ranges below the lower quartile or above the upper
    quartile of all the (finite) `values` is an outlier, typically the first epoch or two, far
    below (ELBO) or above (reconstruction loss) the rest: it is left off the plot, and its line
    runs off the edge, so that it does not squash the rest of the curves into a few pixels. The
    `keep` values (the last epoch's) are always inside. The range is then widened by 8% of its
    span on each side, and to at least a small span around a constant series.
    """
    finite = values[np.isfinite(values)]
    lower_quartile, upper_quartile = np.percentile(finite, [25, 75])
    fence = _OUTLIER_FENCE * (upper_quartile - lower_quartile)
    inside = finite[(finite >= lower_quartile - fence) & (finite <= upper_quartile + fence)]
    low, high = float(inside.min()), float(inside.max())
    if keep is not None and np.isfinite(keep).any():
        low = min(low, float(np.nanmin(keep)))
        high = max(high, float(np.nanmax(keep)))
    span = high - low
    if span <= 1e-9 * max(1.0, abs(high)):
        span = max(abs(high) * 0.02, 1e-3)
        return low - span, high + span
    return low - _Y_MARGIN * span, high + _Y_MARGIN * span


def _nice_ticks(low: float, high: float, count: int, integer: bool = False):
    """About `count` round tick values (1, 2, 2.5 or 5 times a power of ten apart) inside
    [low, high], and their labels."""
    raw = (high - low) / max(count, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    multiple = next(m for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw * (1 - 1e-9))
    step = multiple * magnitude
    if integer:
        step = max(1.0, float(round(step)))
    decimals = 0 if integer else max(0, -math.floor(math.log10(step) + 1e-9))
    if multiple == 2.5 and not integer and step < 10:
        decimals += 1
    first = math.ceil(low / step - 1e-9)
    last = math.floor(high / step + 1e-9)
    ticks = [i * step for i in range(first, last + 1)]
    labels = [f"{t:.{decimals}f}" for t in ticks]
    labels = ["0" if float(label) == 0 else label for label in labels]
    return ticks, labels


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _text(draw: ImageDraw.ImageDraw, xy, text: str, font, anchor: str = "lt") -> None:
    """Draws `text` with its bounding box's left/middle/right ('l', 'm', 'r') and top/middle
    ('t', 'm') at `xy`. Placed by measuring, which works for bitmap fonts too (PIL's own anchors
    need FreeType)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = xy[0] - {"l": left, "m": (left + right) / 2, "r": right}[anchor[0]]
    y = xy[1] - {"t": top, "m": (top + bottom) / 2}[anchor[1]]
    draw.text((x, y), text, fill=_TEXT_COLOUR, font=font)


def training_curves(
    records: list[dict],
    split: str = "test",
    size: tuple[int, int] = (640, 400),
    title: str | None = None,
) -> np.ndarray:
    """A line chart of the training curves: per epoch, the training split's and `split`'s ELBO.

    Runs without an ELBO (the autoencoders) plot the reconstruction loss -log p(x|z) instead.
    Both are in nats per example. The x axis is the epoch; the y range is the data's with its
    outliers left off (see `curve_y_range`), so a first epoch far from the rest runs off the
    plot. A series missing from the records (no `split` evaluation) is left out; an epoch
    without a value is skipped, its neighbours joined (evaluation every few epochs), while a NaN
    value breaks the line. Points are marked when there are few (a single record is a dot per
    series). The legend shows each series' last finite value, in the corner of the plot that
    covers the fewest points.

    Args:
      records: the lines of `metrics.jsonl`, in order (`workdir.MetricsLog(path).read()`).
      split: the evaluation split's name in the records: 'test' or 'valid'.
      size: (width, height) in pixels, at least (200, 150).
      title: the chart's title; None for one naming the quantity.

    Returns:
      (height, width, 3) uint8 RGB.
    """
    width, height = (int(s) for s in size)
    if width < 200 or height < 150:
        raise ValueError(f"size must be at least (200, 150) pixels; got {tuple(size)}")
    if not records:
        raise ValueError("no records to plot")
    quantity, series = _curve_series(records, split)
    name = "ELBO" if quantity == "elbo" else "reconstruction loss"
    colours = {"train": _TRAIN_COLOUR, split: _EVAL_COLOUR}
    epochs = _epochs(records)
    all_values = np.concatenate([values for _, values, _ in series])
    last_values = np.array([values[np.isfinite(values)][-1] for _, values, _ in series])
    y_low, y_high = curve_y_range(all_values, last_values)
    x_low, x_high = float(epochs.min()), float(epochs.max())
    if x_high - x_low < 1:
        x_low, x_high = x_low - 1, x_high + 1

    scale = min(width / 640, height / 400)
    text_font = _font(max(10, round(12 * scale)))
    title_font = _font(max(12, round(15 * scale)))
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    line_height = _text_size(draw, "0123456789-.Hg", text_font)[1]
    pad = max(4, round(6 * scale))
    tick = max(3, round(4 * scale))

    # Layout: the title on top; y-axis label, tick labels and ticks on the left; ticks, tick
    # labels and the x-axis label below.
    title = f"{name} per epoch" if title is None else title
    title_height = _text_size(draw, title, title_font)[1]
    top = pad + title_height + 2 * pad
    bottom = height - (tick + pad + line_height + pad + line_height + pad)
    y_ticks, y_labels = _nice_ticks(y_low, y_high, max(2, (bottom - top) // 50))
    label_width = max(_text_size(draw, label, text_font)[0] for label in y_labels + ["0"])
    y_label = "nats per example"  # drawn sideways, left of the tick labels
    y_label_width, _ = _text_size(draw, y_label, text_font)
    label_image = Image.new("RGB", (y_label_width + 4, line_height + 6), (255, 255, 255))
    _text(ImageDraw.Draw(label_image), (2, 3), y_label, text_font)
    label_image = label_image.rotate(90, expand=True)
    left = pad + label_image.width + pad + label_width + tick + pad // 2
    right = width - 2 * pad
    x_ticks, x_labels = _nice_ticks(x_low, x_high, max(2, (right - left) // 80), integer=True)
    plot_width, plot_height = right - left, bottom - top
    inset = max(4, round(8 * scale))  # keeps the end points off the frame

    def to_x(epoch):
        return inset + (np.asarray(epoch) - x_low) / (x_high - x_low) * (plot_width - 2 * inset)

    def to_y(value):
        y = (y_high - np.asarray(value)) / (y_high - y_low) * plot_height
        return np.clip(y, -_CLAMP * plot_height, (_CLAMP + 1) * plot_height)

    # The plot area is drawn on its own image, which clips the lines at its edges.
    plot = Image.new("RGB", (plot_width, plot_height), (255, 255, 255))
    plot_draw = ImageDraw.Draw(plot)
    for value in y_ticks:
        y = float(to_y(value))
        plot_draw.line([(0, y), (plot_width, y)], fill=_GRID_COLOUR)
    for epoch in x_ticks:
        x = float(to_x(epoch))
        plot_draw.line([(x, 0), (x, plot_height)], fill=_GRID_COLOUR)
    line_width = max(1, round(2 * scale))
    radius = max(2, round(3 * scale))
    mark_points = len(records) <= plot_width / 12
    pixel_points = []
    for series_name, values, present in series:
        # Epochs without the value are skipped (the line joins its neighbours); a NaN value
        # breaks the line: each run of finite values is one polyline.
        xs, ys, values = to_x(epochs[present]), to_y(values[present]), values[present]
        finite = np.isfinite(values)
        pixel_points.append(np.stack([xs[finite], ys[finite]], axis=1))
        edges = np.flatnonzero(np.diff(np.concatenate([[0], finite.astype(np.int8), [0]])))
        for start, stop in zip(edges[::2], edges[1::2]):
            points = [(float(x), float(y)) for x, y in zip(xs[start:stop], ys[start:stop])]
            if len(points) > 1:
                plot_draw.line(points, fill=colours[series_name], width=line_width, joint="curve")
            if mark_points or len(points) == 1:
                for x, y in points:
                    plot_draw.ellipse(
                        [x - radius, y - radius, x + radius, y + radius],
                        fill=colours[series_name],
                    )
    canvas.paste(plot, (left, top))

    # Frame, ticks and their labels.
    draw.rectangle([left - 1, top - 1, right, bottom], outline=_AXIS_COLOUR)
    for value, label in zip(y_ticks, y_labels):
        y = top + float(to_y(value))
        draw.line([(left - 1 - tick, y), (left - 1, y)], fill=_AXIS_COLOUR)
        _text(draw, (left - 1 - tick - pad // 2, y), label, text_font, "rm")
    for epoch, label in zip(x_ticks, x_labels):
        x = left + float(to_x(epoch))
        draw.line([(x, bottom), (x, bottom + tick)], fill=_AXIS_COLOUR)
        _text(draw, (x, bottom + tick + pad), label, text_font, "mt")

    # Axis labels and title.
    x_label_top = bottom + tick + pad + line_height + pad
    _text(draw, ((left + right) / 2, x_label_top), "epoch", text_font, "mt")
    canvas.paste(label_image, (pad, round((top + bottom - label_image.height) / 2)))
    _text(draw, ((left + right) / 2, pad), title, title_font, "mt")

    # Legend: a swatch and "<split> <quantity>  <last value>" per series.
    short_name = "ELBO" if quantity == "elbo" else "recon"
    entries = [
        (f"{series_name} {short_name}  {last:.2f}", colours[series_name])
        for (series_name, _, _), last in zip(series, last_values)
    ]
    swatch = max(14, round(20 * scale))
    entry_height = line_height + pad
    box_width = pad + swatch + pad + max(_text_size(draw, t, text_font)[0] for t, _ in entries)
    box_width += pad
    box_height = pad + len(entries) * entry_height
    corners = [
        (plot_width - inset - box_width, inset),
        (plot_width - inset - box_width, plot_height - inset - box_height),
        (inset, inset),
        (inset, plot_height - inset - box_height),
    ]
    points = np.concatenate(pixel_points)

    def covered(corner):
        x, y = corner
        inside_x = (points[:, 0] >= x) & (points[:, 0] <= x + box_width)
        return int(np.sum(inside_x & (points[:, 1] >= y) & (points[:, 1] <= y + box_height)))

    box_x, box_y = min(corners, key=covered)  # the first corner among the least covered
    box_x, box_y = left + box_x, top + box_y
    draw.rectangle(
        [box_x, box_y, box_x + box_width, box_y + box_height],
        fill=(255, 255, 255),
        outline=(160, 160, 160),
    )
    for index, (text, colour) in enumerate(entries):
        middle = box_y + pad + index * entry_height + line_height / 2
        draw.line(
            [(box_x + pad, middle), (box_x + pad + swatch, middle)],
            fill=colour,
            width=max(3, line_width + 1),
        )
        _text(draw, (box_x + 2 * pad + swatch, middle), text, text_font, "lm")
    return np.asarray(canvas)


def save_training_curves(
    path: str, records: list[dict], split: str = "test", size: tuple[int, int] = (640, 400)
) -> None:
    """`training_curves` as a PNG."""
    drawing.save_png(path, training_curves(records, split, size))
