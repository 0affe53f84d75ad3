"""The pictures of a trained model to look at after training: latent traversals,
interpolations, and the 2-D manifold.

Each picture is a pure function that returns an image array, and a `save_*` wrapper writes it as
a PNG through `drawing.save_png` (atomically). The model pictures return (N, H, W, C) float32
arrays of E[x|z] in [0, 1] (`objectives.likelihood_mean` of the decoder's output), in the order
the PNG tiles them row by row; their JAX parts (encoding, building the latent codes, decoding)
run as one compiled call per picture, with the model a static argument, so that drawing the same
picture again for new parameters does not compile again. Every decode is one batched call over
all the latent codes, split into chunks of `chunk_size` codes (scanned with `lax.map`) only when
there are more of them than that.

The training-curves chart, which reads a run's records rather than a model, is in `curves`.

Images given to these functions are (H, W, C) arrays with C = 1 or 3: floats in [0, 1], or
integer pixels 0..255 (divided by 255).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import drawing, objectives

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "decode_means",
    "traversal_latents",
    "interpolation_latents",
    "manifold_latents",
    "latent_kl",
    "dimensions_by_kl",
    "latent_traversals",
    "interpolation",
    "manifold_grid",
    "save_traversals",
    "save_interpolation",
    "save_manifold",
]

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
