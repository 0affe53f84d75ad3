r"""DIP-VAE-I and DIP-VAE-II (Kumar, Sattigeri and Balakrishnan 2018), as disentanglement_lib
defines them, built only from the public building blocks a user's plugin has.

Both add to the ELBO a penalty that pushes a covariance of the latents towards the identity:

.. math::
    R = \lambda_{od} \sum_{i \ne j} C_{ij}^2 + \lambda_d \sum_i (C_{ii} - 1)^2,
    \qquad \lambda_d = f \, \lambda_{od},

and minimise :math:`\mathbb{E}_q[-\log p(x|z)] + \mathrm{KL}(q(z|x) \| p(z)) + R`. The
covariance C is estimated on the batch:

- DIP-VAE-I: :math:`C = \mathrm{Cov}_{p(x)}[\mu(x)]`, the (biased, 1/B) covariance of the
  encoder means; disentanglement_lib's f = 10.
- DIP-VAE-II: :math:`C = \mathrm{Cov}_{p(x)}[\mu(x)] + \mathbb{E}_{p(x)}[\mathrm{diag}\,
  \sigma^2(x)]`, the covariance of the aggregate posterior q(z); f = 1.

The registrations (fields, checks, sweeps) are in `vae_jax.variants`.
"""

from __future__ import annotations

import jax.numpy as jnp

from vae_jax import objectives

__all__ = [
    "covariance_of_means",
    "dip_penalty",
    "make_dip_vae_loss",
    "build_dip_vae_i",
    "build_dip_vae_ii",
]


def covariance_of_means(mean):
    r""":math:`\mathbb{E}[\mu \mu^T] - \mathbb{E}[\mu]\mathbb{E}[\mu]^T` over the batch (B, D)."""
    centred = mean - jnp.mean(mean, axis=0)
    return centred.T @ centred / mean.shape[0]


def dip_penalty(covariance, lambda_od, lambda_d):
    """R of the module docstring for one (D, D) covariance; returns (R, off-diagonal sum of
    squares, diagonal sum of squared distances from 1)."""
    diagonal = jnp.diagonal(covariance)
    off_diagonal = jnp.sum(covariance**2) - jnp.sum(diagonal**2)
    on_diagonal = jnp.sum((diagonal - 1.0) ** 2)
    return lambda_od * off_diagonal + lambda_d * on_diagonal, off_diagonal, on_diagonal


def make_dip_vae_loss(model, dip_type: str, lambda_od, lambda_d_factor, kl_warmup_steps=0):
    """The DIP-VAE loss of `dip_type` 'i' or 'ii'; `lambda_od` may be traced (populations)."""
    if dip_type not in ("i", "ii"):
        raise ValueError(f"dip_type={dip_type!r}; allowed: 'i', 'ii'")

    def regularizer(terms, step):
        del step
        covariance = covariance_of_means(terms.mean)
        if dip_type == "ii":
            covariance = covariance + jnp.diag(jnp.mean(jnp.exp(terms.log_variance), axis=0))
        penalty, off, on = dip_penalty(covariance, lambda_od, lambda_d_factor * lambda_od)
        return penalty, {"dip_penalty": penalty, "dip_off_diagonal": off, "dip_diagonal": on}

    return objectives.make_regularized_loss(
        model, regularizer, kl_weight=1.0, kl_warmup_steps=kl_warmup_steps
    )


def build_dip_vae_i(config, model):
    """'dip_vae_i': fields dip_i_lambda_od, dip_i_lambda_d_factor."""
    return make_dip_vae_loss(
        model, "i", config.dip_i_lambda_od, config.dip_i_lambda_d_factor, config.kl_warmup_steps
    )


def build_dip_vae_ii(config, model):
    """'dip_vae_ii': fields dip_ii_lambda_od, dip_ii_lambda_d_factor."""
    return make_dip_vae_loss(
        model, "ii", config.dip_ii_lambda_od, config.dip_ii_lambda_d_factor, config.kl_warmup_steps
    )
