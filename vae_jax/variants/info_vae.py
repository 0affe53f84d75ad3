r"""InfoVAE (Zhao, Song and Ermon 2017) with the MMD divergence (the "MMD-VAE"), built only from
the public building blocks a user's plugin has.

It minimises

.. math::
    \mathbb{E}_q[-\log p(x|z)] + (1 - \alpha)\,\mathrm{KL}(q(z|x) \| p(z))
    + (\alpha + \lambda - 1)\,\mathrm{MMD}_k(q(z), p(z)),

where q(z) is the aggregate posterior, represented by the batch's samples :math:`z_i \sim
q(z|x_i)`, and p(z) = N(0, I) by as many draws :math:`z'_j`. The MMD is the unbiased
U-statistic

.. math::
    \frac{1}{B(B-1)} \sum_{i \ne j} [k(z_i, z_j) + k(z'_i, z'_j)] - \frac{2}{B^2} \sum_{i,j}
    k(z_i, z'_j),

with the inverse multiquadric kernel :math:`k(a, b) = C / (C + \|a - b\|^2)` or the RBF kernel
:math:`k(a, b) = \exp(-\|a - b\|^2 / C)`, :math:`C = 2 D \sigma^2` (D latents, σ the bandwidth;
the choice of Tolstikhin et al.'s WAE that Pythae uses too). α = 1 drops the KL term (the
MMD-VAE); the reported `elbo` is the β = 1 bound whatever α is.

The registrations (fields, checks, sweeps) are in `vae_jax.variants`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vae_jax import objectives

__all__ = ["KERNELS", "kernel_matrix", "mmd", "make_info_vae_loss", "build_info_vae"]

KERNELS = ("imq", "rbf")


def kernel_matrix(a, b, kernel: str, bandwidth):
    """k(a_i, b_j) for (N, D) and (M, D) points: an (N, M) matrix."""
    scale = 2.0 * a.shape[-1] * bandwidth**2
    squared = jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
    if kernel == "imq":
        return scale / (scale + squared)
    if kernel == "rbf":
        return jnp.exp(-squared / scale)
    raise ValueError(f"kernel={kernel!r}; allowed: {', '.join(KERNELS)}")


def mmd(z, prior_z, kernel: str, bandwidth):
    """The unbiased MMD² estimate of the module docstring between two (B, D) samples."""
    n = z.shape[0]

    def within(points):
        matrix = kernel_matrix(points, points, kernel, bandwidth)
        return (jnp.sum(matrix) - jnp.trace(matrix)) / (n * (n - 1))

    across = jnp.mean(kernel_matrix(z, prior_z, kernel, bandwidth))
    return within(z) + within(prior_z) - 2.0 * across


def make_info_vae_loss(model, alpha, lambda_, kernel="imq", bandwidth=1.0, kl_warmup_steps=0):
    """The InfoVAE-MMD loss; `lambda_` may be traced (populations sweep it)."""

    def regularizer(terms, step, key):
        del step
        prior_z = jax.random.normal(key, terms.z.shape, terms.z.dtype)
        divergence = mmd(terms.z, prior_z, kernel, bandwidth)
        return (alpha + lambda_ - 1.0) * divergence, {"mmd": divergence}

    return objectives.make_regularized_loss(
        model,
        regularizer,
        kl_weight=1.0 - alpha,
        kl_warmup_steps=kl_warmup_steps,
        needs_key=True,
    )


def build_info_vae(config, model):
    """'info_vae': fields infovae_alpha, infovae_lambda, infovae_kernel, infovae_bandwidth."""
    return make_info_vae_loss(
        model,
        config.infovae_alpha,
        config.infovae_lambda,
        config.infovae_kernel,
        config.infovae_bandwidth,
        config.kl_warmup_steps,
    )
