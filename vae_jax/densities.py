"""Densities in nats per example: the KL of a diagonal Gaussian to N(0, I), the pixel
likelihoods p(x|z) (summed over pixels, never averaged), their means, and the reparameterized
sample. The parts every objective is made of; `objectives` re-exports them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = [
    "LOG_2PI",
    "sum_per_example",
    "gaussian_kl_to_standard_normal",
    "bernoulli_log_likelihood",
    "gaussian_log_likelihood",
    "log_likelihood",
    "likelihood_mean",
    "reparameterize",
]

LOG_2PI = math.log(2.0 * math.pi)


def sum_per_example(values: jax.Array) -> jax.Array:
    """Sums every axis but the first: (B, ...) -> (B,)."""
    return values.reshape((values.shape[0], -1)).sum(axis=1)


def gaussian_kl_to_standard_normal(mean: jax.Array, log_variance: jax.Array) -> jax.Array:
    r"""KL(N(mean, diag(exp(log_variance))) || N(0, I)), per example, in nats.

    .. math::
        \mathrm{KL} = \tfrac12 \sum_j \left(\sigma_j^2 + \mu_j^2 - 1 - \log \sigma_j^2\right)

    Args:
      mean: (B, D) means of q(z|x).
      log_variance: (B, D) log-variances of q(z|x).

    Returns:
      (B,) KL divergences.
    """
    return 0.5 * jnp.sum(jnp.exp(log_variance) + mean**2 - 1.0 - log_variance, axis=-1)


def bernoulli_log_likelihood(x: jax.Array, logits: jax.Array) -> jax.Array:
    r"""log Bernoulli(x | sigmoid(logits)), summed over pixels, per example.

    .. math::
        \log p(x|z) = \sum_i x_i \ell_i - \log(1 + e^{\ell_i})

    written with `softplus` so that large logits of either sign stay finite. For x in (0, 1)
    (grayscale data without binarization) this is the continuous cross-entropy, which is not a
    normalised likelihood: binarize such data for density comparisons.

    Args:
      x: (B, H, W, C) targets in [0, 1].
      logits: (B, H, W, C) decoder logits.

    Returns:
      (B,) log-likelihoods.
    """
    return sum_per_example(x * logits - jax.nn.softplus(logits))


def gaussian_log_likelihood(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
    r"""log N(x | mean, exp(log_scale)^2), summed over pixels, per example.

    .. math::
        \log p(x|z) = \sum_i -\tfrac12 \log 2\pi - s_i - \tfrac12 (x_i - \mu_i)^2 e^{-2 s_i}

    With a fixed scale sigma this is -(1 / 2 sigma^2) * squared error plus a constant: the "MSE"
    VAE, with the constant kept so that the figure is a true log-density.

    Args:
      x: (B, H, W, C) targets.
      mean: (B, H, W, C) decoder means.
      log_scale: log sigma, broadcastable to x: a scalar (fixed) or (H, W, C) (learned per pixel).

    Returns:
      (B,) log-likelihoods.
    """
    log_scale = jnp.broadcast_to(log_scale, x.shape)
    standardized = (x - mean) * jnp.exp(-log_scale)
    return sum_per_example(-0.5 * LOG_2PI - log_scale - 0.5 * standardized**2)


def log_likelihood(x: jax.Array, location: jax.Array, log_scale: jax.Array | None) -> jax.Array:
    """log p(x|z) per example for the decoder output (location, log_scale) of `VAE.decode`."""
    if log_scale is None:
        return bernoulli_log_likelihood(x, location)
    return gaussian_log_likelihood(x, location, log_scale)


def likelihood_mean(location: jax.Array, log_scale: jax.Array | None) -> jax.Array:
    """E[x|z], for pictures: Bernoulli probabilities, or the Gaussian mean clipped to [0, 1]."""
    if log_scale is None:
        return jax.nn.sigmoid(location)
    return jnp.clip(location, 0.0, 1.0)


def reparameterize(key: jax.Array, mean: jax.Array, log_variance: jax.Array) -> jax.Array:
    r"""A sample z = mean + sigma * eps with eps ~ N(0, I), differentiable in mean and log_variance.

    Args:
      key: one typed PRNG key for the whole batch, or a (B,) array of keys, one per example (so
        that an example's draw does not depend on which batch it is in).
      mean: (B, D).
      log_variance: (B, D).
    """
    if key.ndim == 0:
        eps = jax.random.normal(key, mean.shape, mean.dtype)
    else:
        eps = jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:], mean.dtype))(key)
    return mean + jnp.exp(0.5 * log_variance) * eps
