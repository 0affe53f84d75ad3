"""The evidence lower bound and its parts, as pure functions. Knows nothing of optimizers.

Every quantity is in nats per example: log-densities are summed over pixels (never averaged), so
the weight `beta` on the KL term means what it means in the papers.

Each objective is built by a `make_*_loss(model, ...)` function and has the signature
`loss_fn(params, x, key, step) -> (loss, metrics)`: x is a float batch (B, H, W, C), key a typed
PRNG key for every draw of this step, step the training step (for schedules); loss is the scalar
to minimise (the batch mean) and metrics a dict of scalar batch means.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

_LOG_2PI = math.log(2.0 * math.pi)


def _sum_per_example(values: jax.Array) -> jax.Array:
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
    return _sum_per_example(x * logits - jax.nn.softplus(logits))


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
    return _sum_per_example(-0.5 * _LOG_2PI - log_scale - 0.5 * standardized**2)


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


def elbo_terms(model, params, x: jax.Array, noise_key: jax.Array, dropout_key=None) -> dict:
    r"""Single-sample estimates of the ELBO's two terms, per example.

    .. math::
        \mathrm{ELBO}(x) = \mathbb{E}_{q(z|x)}[\log p(x|z)] - \mathrm{KL}(q(z|x) \| p(z))

    with the expectation estimated by one reparameterized sample and the KL in closed form.

    Args:
      model: a `models.VAE`.
      params: its variables, as returned by `model.init`.
      x: (B, H, W, C) float batch.
      noise_key: typed PRNG key (or (B,) keys) for the reparameterization noise.
      dropout_key: typed PRNG key for dropout; None evaluates deterministically.

    Returns:
      dict of (B,) arrays: `recon` = -log p(x|z) (the reconstruction loss, >= 0 for binary data),
      `kl`, and `elbo` = -(recon + kl).
    """
    train = dropout_key is not None
    rngs = {"dropout": dropout_key} if train else None
    mean, log_variance = model.apply(params, x, train, method="encode", rngs=rngs)
    z = reparameterize(noise_key, mean, log_variance)
    location, log_scale = model.apply(params, z, train, method="decode", rngs=rngs)
    recon = -log_likelihood(x, location, log_scale)
    kl = gaussian_kl_to_standard_normal(mean, log_variance)
    return {"recon": recon, "kl": kl, "elbo": -(recon + kl)}


def make_elbo_loss(model, beta: float = 1.0) -> Callable:
    r"""The (β-)VAE objective: minimise E_q[-log p(x|z)] + β KL(q(z|x) || p(z)).

    β = 1 is the VAE's negative ELBO; β > 1 is the β-VAE of Higgins et al. (2017). The reported
    `elbo` metric is always the β = 1 bound, so runs with different β compare on one scale.
    """

    def loss_fn(params, x, key, step):
        del step  # a constant β has no schedule
        noise_key, dropout_key = jax.random.split(key)
        terms = elbo_terms(model, params, x, noise_key, dropout_key)
        loss = jnp.mean(terms["recon"] + beta * terms["kl"])
        metrics = {name: jnp.mean(value) for name, value in terms.items()}
        return loss, {"loss": loss, **metrics}

    return loss_fn


def _gaussian_log_density(z: jax.Array, mean: jax.Array, log_variance: jax.Array) -> jax.Array:
    """log N(z | mean, diag(exp(log_variance))), summed over the last axis."""
    return -0.5 * jnp.sum(
        _LOG_2PI + log_variance + (z - mean) ** 2 * jnp.exp(-log_variance), axis=-1
    )


def importance_weighted_bound(
    model, params, x: jax.Array, key: jax.Array, num_samples: int, chunk_size: int = 64
) -> jax.Array:
    r"""The k-sample importance-weighted bound of Burda et al. (2015), per example, in nats.

    .. math::
        \mathcal{L}_k(x) = \mathbb{E}_{z_{1..k} \sim q(z|x)}
            \left[\log \frac{1}{k} \sum_{i=1}^{k} \frac{p(x|z_i)\, p(z_i)}{q(z_i|x)}\right]
        \le \log p(x)

    estimated with one draw of the k samples. k = 1 is the ELBO with a sampled (not closed-form)
    KL; the bound tightens towards log p(x) as k grows, so k = 5000 is the usual test
    log-likelihood estimate. Samples are drawn `chunk_size` at a time and folded into a running
    log-sum-exp, so memory stays at `chunk_size` decodes of the batch whatever k is.

    Args:
      model: a `models.VAE`.
      params: its variables.
      x: (B, H, W, C) float batch.
      key: typed PRNG key for the k samples.
      num_samples: k >= 1.
      chunk_size: samples decoded at once; k is padded up to a multiple of it and the padding
        masked out.

    Returns:
      (B,) bounds.
    """
    chunk_size = min(chunk_size, num_samples)
    num_chunks = -(-num_samples // chunk_size)
    mean, log_variance = model.apply(params, x, method="encode")
    batch = x.shape[0]

    def chunk_log_weights(chunk_index):
        eps = jax.random.normal(
            jax.random.fold_in(key, chunk_index), (chunk_size, *mean.shape), mean.dtype
        )
        z = mean + jnp.exp(0.5 * log_variance) * eps  # (S, B, D)
        flat_z = z.reshape((chunk_size * batch, -1))
        location, log_scale = model.apply(params, flat_z, method="decode")
        repeated_x = jnp.broadcast_to(x, (chunk_size, *x.shape)).reshape(location.shape)
        log_px = log_likelihood(repeated_x, location, log_scale).reshape((chunk_size, batch))
        log_pz = _gaussian_log_density(z, 0.0, jnp.zeros_like(z))
        log_qz = _gaussian_log_density(z, mean, log_variance)
        sample_index = chunk_index * chunk_size + jnp.arange(chunk_size)[:, None]
        return jnp.where(sample_index < num_samples, log_px + log_pz - log_qz, -jnp.inf)

    def accumulate(carry, chunk_index):
        running_max, running_sum = carry
        log_weights = chunk_log_weights(chunk_index)
        new_max = jnp.maximum(running_max, jnp.max(log_weights, axis=0))
        running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(
            jnp.exp(log_weights - new_max), axis=0
        )
        return (new_max, running_sum), None

    start = (jnp.full((batch,), -jnp.inf, mean.dtype), jnp.zeros((batch,), mean.dtype))
    (log_max, total), _ = jax.lax.scan(accumulate, start, jnp.arange(num_chunks))
    return log_max + jnp.log(total) - jnp.log(float(num_samples))
