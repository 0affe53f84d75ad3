"""The evidence lower bound and its parts, as pure functions. Knows nothing of optimizers.

Every quantity is in nats per example: log-densities are summed over pixels (never averaged), so
the weight `beta` on the KL term means what it means in the papers.

Each objective is built by a `make_*_loss(model, ...)` function and has the signature
`loss_fn(params, x, key, step) -> (loss, metrics)`: x is a float batch (B, H, W, C), key a typed
PRNG key for every draw of this step, step the training step (for schedules); loss is the scalar
to minimise (the batch mean) and metrics a dict of scalar batch means. FactorVAE's loss also
takes the discriminator's parameters and comes with a `Critic` that trains the discriminator in
the same step (see `make_objective`).

Every variational objective reports `elbo` (the single-sample β = 1 bound with the analytic KL),
`recon` and `kl`, so runs with different objectives compare on one scale; `loss` is what the
objective minimises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vae_jax import models, registry
from vae_jax.densities import (  # the ELBO's parts, public here too (optax-style façade)
    LOG_2PI,
    bernoulli_log_likelihood,
    gaussian_kl_to_standard_normal,
    gaussian_log_likelihood,
    likelihood_mean,
    log_likelihood,
    reparameterize,
)
from vae_jax.errors import ConfigError

__all__ = [
    "LOG_2PI",
    "bernoulli_log_likelihood",
    "gaussian_kl_to_standard_normal",
    "gaussian_log_likelihood",
    "likelihood_mean",
    "log_likelihood",
    "reparameterize",
    "posterior_terms",
    "elbo_terms",
    "deterministic_terms",
    "linear_warmup",
    "make_elbo_loss",
    "make_regularized_loss",
    "capacity",
    "make_annealed_loss",
    "total_correlation",
    "make_beta_tcvae_loss",
    "permute_dimensions",
    "make_factor_vae_objective",
    "make_iwae_loss",
    "corrupt",
    "make_autoencoder_loss",
    "build_elbo",
    "build_annealed",
    "build_beta_tcvae",
    "build_factor_vae",
    "build_iwae",
    "build_autoencoder",
    "build_denoising_autoencoder",
    "make_objective",
    "check_metrics",
    "is_variational",
    "importance_weighted_bound",
    "PosteriorTerms",
    "Critic",
    "Objective",
    "VARIATIONAL_METRICS",
]


class PosteriorTerms(NamedTuple):
    """One reparameterized pass of a batch through a VAE, per example.

    Attributes:
      mean: (B, D) means of q(z|x).
      log_variance: (B, D) log-variances of q(z|x).
      z: (B, D) one sample of q(z|x), differentiable in mean and log_variance.
      recon: (B,) -log p(x|z) in nats, summed over pixels.
      kl: (B,) KL(q(z|x) || p(z)) in nats, in closed form.
    """

    mean: jax.Array
    log_variance: jax.Array
    z: jax.Array
    recon: jax.Array
    kl: jax.Array


def posterior_terms(model, params, x, noise_key, dropout_key=None) -> PosteriorTerms:
    """Encodes x, draws one z per example and decodes it: the parts every regularized ELBO uses.

    Args:
      model: a `models.VAE`.
      params: its variables.
      x: (B, H, W, C) float batch in [0, 1].
      noise_key: typed PRNG key (or (B,) keys) for the reparameterization noise.
      dropout_key: typed PRNG key for dropout; None evaluates deterministically.
    """
    train = dropout_key is not None
    rngs = {"dropout": dropout_key} if train else None
    mean, log_variance = model.apply(params, x, train, method="encode", rngs=rngs)
    z = reparameterize(noise_key, mean, log_variance)
    location, log_scale = model.apply(params, z, train, method="decode", rngs=rngs)
    recon = -log_likelihood(x, location, log_scale)
    kl = gaussian_kl_to_standard_normal(mean, log_variance)
    return PosteriorTerms(mean=mean, log_variance=log_variance, z=z, recon=recon, kl=kl)


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
    terms = posterior_terms(model, params, x, noise_key, dropout_key)
    return {"recon": terms.recon, "kl": terms.kl, "elbo": -(terms.recon + terms.kl)}


def deterministic_terms(model, params, x: jax.Array, noise_key=None, dropout_key=None) -> dict:
    """An autoencoder's reconstruction loss -log p(x | z = encoder mean), per example.

    `noise_key` is ignored (nothing is sampled); it is there to match `elbo_terms`.
    """
    del noise_key
    train = dropout_key is not None
    rngs = {"dropout": dropout_key} if train else None
    mean, _ = model.apply(params, x, train, method="encode", rngs=rngs)
    location, log_scale = model.apply(params, mean, train, method="decode", rngs=rngs)
    return {"recon": -log_likelihood(x, location, log_scale)}


def linear_warmup(step: jax.Array, warmup_steps: int) -> jax.Array:
    r"""The KL warm-up weight :math:`w_t = \min(1, t / N)`; 1 throughout when N = 0."""
    if warmup_steps == 0:
        return jnp.ones((), jnp.float32)
    return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)


def _batch_means(terms: dict) -> dict:
    return {name: jnp.mean(value) for name, value in terms.items()}


def make_elbo_loss(model, beta: float = 1.0, kl_warmup_steps: int = 0) -> Callable:
    r"""The (β-)VAE objective: minimise E_q[-log p(x|z)] + w_t β KL(q(z|x) || p(z)).

    β = 1 is the VAE's negative ELBO; β > 1 is the β-VAE of Higgins et al. (2017). w_t is the
    KL warm-up weight (`linear_warmup`). The reported `elbo` metric is always the β = 1 bound, so
    runs with different β compare on one scale. `beta` may be traced (populations vmap over it).
    """

    def loss_fn(params, x, key, step):
        noise_key, dropout_key = jax.random.split(key)
        terms = elbo_terms(model, params, x, noise_key, dropout_key)
        weight = beta * linear_warmup(step, kl_warmup_steps)
        loss = jnp.mean(terms["recon"] + weight * terms["kl"])
        return loss, {"loss": loss, **_batch_means(terms)}

    return loss_fn


def make_regularized_loss(
    model,
    regularizer: Callable,
    *,
    kl_weight=1.0,
    kl_warmup_steps: int = 0,
    needs_key: bool = False,
) -> Callable:
    r"""A regularized ELBO: minimise E_q[-log p(x|z)] + w_t κ KL(q(z|x) || p(z)) + R.

    R and its metrics come from `regularizer(terms, step) -> (penalty, metrics)`, with `terms` the
    batch's `PosteriorTerms` and `penalty` a scalar in nats per example (DIP-VAE's moment
    penalties, InfoVAE's MMD, ...). κ is `kl_weight` (it may be traced, so populations sweep it)
    and w_t the KL warm-up weight (`linear_warmup`). A regularizer that draws (InfoVAE's prior
    samples) says `needs_key=True` and is called as `regularizer(terms, step, key)` with a key
    of its own, independent of the posterior's noise.

    The metrics follow the contract of every variational objective: `loss` (what is minimised),
    and the batch means of `recon`, `kl` and `elbo` = -(recon + kl), the β = 1 bound, so runs
    compare on one scale; the regularizer's metrics join them (a name it shares with those is an
    error at trace time).
    """

    def loss_fn(params, x, key, step):
        if needs_key:
            noise_key, dropout_key, own_key = jax.random.split(key, 3)
        else:
            noise_key, dropout_key = jax.random.split(key)
        terms = posterior_terms(model, params, x, noise_key, dropout_key)
        penalty, extra = (
            regularizer(terms, step, own_key) if needs_key else regularizer(terms, step)
        )
        means = _batch_means({"recon": terms.recon, "kl": terms.kl})
        weight = kl_weight * linear_warmup(step, kl_warmup_steps)
        loss = means["recon"] + weight * means["kl"] + penalty
        metrics = {"loss": loss, **means, "elbo": -(means["recon"] + means["kl"])}
        clash = sorted(set(extra) & set(metrics))
        if clash:
            raise ValueError(f"the regularizer's metrics {clash} would replace the ELBO's own")
        return loss, {**metrics, **extra}

    return loss_fn


def capacity(step: jax.Array, capacity_max: float, capacity_steps: int) -> jax.Array:
    r"""Burgess et al. (2018)'s target KL, rising linearly: :math:`C_t = C_{max} \min(1, t/T)`.

    `step` is the training step: evaluation never advances it.
    """
    return capacity_max * jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / capacity_steps)


def make_annealed_loss(
    model, gamma: float, capacity_max: float, capacity_steps: int, kl_warmup_steps: int = 0
) -> Callable:
    r"""Burgess et al. (2018): minimise E_q[-log p(x|z)] + γ |KL(q(z|x) || p(z)) - C_t|.

    The batch-mean KL is held near the capacity C_t (`capacity`), which grows so that the
    latents take on information gradually. Defaults in the paper: γ = 1000, C_max = 25 nats.
    """

    def loss_fn(params, x, key, step):
        noise_key, dropout_key = jax.random.split(key)
        terms = elbo_terms(model, params, x, noise_key, dropout_key)
        target = capacity(step, capacity_max, capacity_steps)
        weight = gamma * linear_warmup(step, kl_warmup_steps)
        means = _batch_means(terms)
        loss = means["recon"] + weight * jnp.abs(means["kl"] - target)
        return loss, {"loss": loss, **means, "capacity": target}

    return loss_fn


def total_correlation(z: jax.Array, mean: jax.Array, log_variance: jax.Array) -> jax.Array:
    r"""Minibatch-weighted-sampling estimate of the total correlation of q(z), in nats.

    .. math::
        \mathrm{TC} = \mathbb{E}_{q(z)}\left[\log q(z) - \textstyle\sum_d \log q(z_d)\right],
        \quad
        \log q(z_i) \approx \log \frac{1}{M} \sum_{j=1}^{M} q(z_i | x_j)

    (and likewise for each q(z_d)), with z_i ~ q(z|x_i) for the M examples of the batch: the
    aggregate posterior is estimated by the batch's mixture of posteriors (Chen et al. 2018,
    section 4.1). Chen et al.'s code normalises by N·M (N the data set size) instead of M, which
    adds the constant (D - 1) log N to the estimate and leaves its gradients unchanged; with M the
    figure is the TC itself, 0 for independent latents.

    Args:
      z: (M, D) samples, z_i from q(z|x_i).
      mean, log_variance: (M, D) parameters of q(z|x_j).

    Returns:
      The scalar estimate (a batch mean).
    """
    # log q(z_i,d | x_j) for every pair: (M, M, D).
    pair_log_density = -0.5 * (
        LOG_2PI
        + log_variance[None, :, :]
        + (z[:, None, :] - mean[None, :, :]) ** 2 * jnp.exp(-log_variance[None, :, :])
    )
    log_batch = jnp.log(float(z.shape[0]))
    log_joint = jax.nn.logsumexp(pair_log_density.sum(axis=2), axis=1) - log_batch
    log_marginals = jax.nn.logsumexp(pair_log_density, axis=1) - log_batch
    return jnp.mean(log_joint - log_marginals.sum(axis=1))


def make_beta_tcvae_loss(model, beta: float, kl_warmup_steps: int = 0) -> Callable:
    r"""β-TCVAE (Chen et al. 2018): minimise E_q[-log p(x|z)] + w_t (KL + (β - 1) TC).

    The KL decomposes into index-code mutual information + TC + dimension-wise KL; this weighs
    the TC by β and the other two by 1 (the paper's α = γ = 1), with the TC estimated by
    `total_correlation` on the batch. β = 1 is the VAE.
    """

    def loss_fn(params, x, key, step):
        noise_key, dropout_key = jax.random.split(key)
        terms = posterior_terms(model, params, x, noise_key, dropout_key)
        tc = total_correlation(terms.z, terms.mean, terms.log_variance)
        weight = linear_warmup(step, kl_warmup_steps)
        means = _batch_means({"recon": terms.recon, "kl": terms.kl})
        loss = means["recon"] + weight * (means["kl"] + (beta - 1.0) * tc)
        elbo = -(means["recon"] + means["kl"])
        return loss, {"loss": loss, **means, "elbo": elbo, "tc": tc}

    return loss_fn


def permute_dimensions(key: jax.Array, z: jax.Array) -> jax.Array:
    """Each latent dimension shuffled across the batch on its own: a sample of prod_d q(z_d)."""
    keys = jax.random.split(key, z.shape[1])
    return jax.vmap(
        lambda k, column: jax.random.permutation(k, column), in_axes=(0, 1), out_axes=1
    )(keys, z)


class Critic(NamedTuple):
    """A second network trained in the same step as the model (FactorVAE's discriminator).

    Attributes:
      init: key -> the critic's parameters.
      optimizer: its optax optimizer.
      loss: (critic_params, latents, key) -> (loss, metrics); `latents` are the model's samples
        of this step, without gradient to the model.
    """

    init: Callable
    optimizer: optax.GradientTransformation
    loss: Callable


class Objective(NamedTuple):
    """What a training step needs: the model's loss and, for FactorVAE, a critic.

    Without a critic, `loss(params, x, key, step)`; with one, `loss(params, x, key, step,
    critic_params)`, whose metrics carry the step's latents under `latents` for the critic.
    """

    loss: Callable
    critic: Critic | None = None


def make_factor_vae_objective(
    model,
    latents: int,
    gamma: float,
    discriminator_hidden,
    discriminator_learning_rate: float,
    kl_warmup_steps: int = 0,
) -> Objective:
    r"""FactorVAE (Kim & Mnih 2018): minimise E_q[-log p(x|z)] + w_t KL + γ TC, where

    .. math::
        \mathrm{TC} \approx \mathbb{E}_{q(z)}\left[\log \frac{D(z)}{1 - D(z)}\right]
        = \mathbb{E}_{q(z)}[\ell_0(z) - \ell_1(z)]

    with a discriminator D (logits ℓ) trained, in the same step, to tell z ~ q(z) from latents
    permuted dimension by dimension (samples of prod_d q(z_d)): cross-entropy, Adam(lr, b1 = 0.5,
    b2 = 0.9) as in the paper. Both see this step's batch (as disentanglement_lib does); the
    discriminator's input carries no gradient to the model.
    """
    discriminator = models.Discriminator(tuple(discriminator_hidden))

    def loss_fn(params, x, key, step, critic_params):
        noise_key, dropout_key = jax.random.split(key)
        terms = posterior_terms(model, params, x, noise_key, dropout_key)
        logits = discriminator.apply(jax.lax.stop_gradient(critic_params), terms.z)
        tc = jnp.mean(logits[:, 0] - logits[:, 1])
        means = _batch_means({"recon": terms.recon, "kl": terms.kl})
        loss = means["recon"] + linear_warmup(step, kl_warmup_steps) * means["kl"] + gamma * tc
        elbo = -(means["recon"] + means["kl"])
        metrics = {"loss": loss, **means, "elbo": elbo, "tc": tc}
        return loss, {**metrics, "latents": jax.lax.stop_gradient(terms.z)}

    def critic_loss(critic_params, z, key):
        permuted = permute_dimensions(key, z)
        logits = discriminator.apply(critic_params, jnp.concatenate([z, permuted]))
        labels = jnp.concatenate(
            [jnp.zeros(z.shape[0], jnp.int32), jnp.ones(z.shape[0], jnp.int32)]
        )
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        accuracy = jnp.mean((jnp.argmax(logits, axis=1) == labels).astype(jnp.float32))
        return loss, {"discriminator_loss": loss, "discriminator_accuracy": accuracy}

    def critic_init(key):
        return discriminator.init(key, jnp.zeros((1, latents), jnp.float32))

    optimizer = optax.adam(discriminator_learning_rate, b1=0.5, b2=0.9)
    return Objective(loss_fn, Critic(critic_init, optimizer, critic_loss))


def make_iwae_loss(model, num_samples: int, kl_warmup_steps: int = 0) -> Callable:
    r"""IWAE (Burda et al. 2015): maximise the k-sample bound `importance_weighted_bound`.

    The k samples are decoded in one chunk (k · B decodes per step). With warm-up, the log
    weights' prior-over-posterior part log p(z) - log q(z|x) is scaled by w_t. Reports the
    bound as `iwae_bound` next to the single-sample `elbo` of the same step.
    """

    def loss_fn(params, x, key, step):
        bound_key, noise_key, dropout_key = jax.random.split(key, 3)
        weight = linear_warmup(step, kl_warmup_steps)
        bound = importance_weighted_bound(
            model, params, x, bound_key, num_samples, num_samples, dropout_key, weight
        )
        terms = elbo_terms(model, params, x, noise_key, dropout_key)
        loss = -jnp.mean(bound)
        means = jax.lax.stop_gradient(_batch_means(terms))
        return loss, {"loss": loss, **means, "iwae_bound": -loss}

    return loss_fn


def corrupt(key: jax.Array, x: jax.Array, corruption: str, level: float) -> jax.Array:
    """The denoising autoencoder's input: pixels zeroed with probability `level` ('masking', as
    Vincent et al. 2008), or Gaussian noise of sigma `level` added and clipped to [0, 1]."""
    if corruption == "masking":
        return jnp.where(jax.random.bernoulli(key, level, x.shape), 0.0, x)
    return jnp.clip(x + level * jax.random.normal(key, x.shape, x.dtype), 0.0, 1.0)


def make_autoencoder_loss(model, corruption: str | None = None, level: float = 0.0) -> Callable:
    r"""A deterministic autoencoder: minimise -log p(x | z = encoder mean of x̃).

    x̃ = x for the plain autoencoder ('ae'); for the denoising one ('dae') x̃ = `corrupt`(x) and
    the clean x is the target. No KL and no sampling: the figure is a reconstruction loss, not a
    likelihood bound.
    """

    def loss_fn(params, x, key, step):
        del step
        corrupt_key, dropout_key = jax.random.split(key)
        inputs = x if corruption is None else corrupt(corrupt_key, x, corruption, level)
        rngs = {"dropout": dropout_key}
        mean, _ = model.apply(params, inputs, True, method="encode", rngs=rngs)
        location, log_scale = model.apply(params, mean, True, method="decode", rngs=rngs)
        loss = -jnp.mean(log_likelihood(x, location, log_scale))
        return loss, {"loss": loss, "recon": loss}

    return loss_fn


def build_elbo(config, model) -> Callable:
    """'vae' and 'beta_vae' (`make_elbo_loss`)."""
    return make_elbo_loss(model, config.beta, config.kl_warmup_steps)


def build_annealed(config, model) -> Callable:
    """'annealed_vae' (`make_annealed_loss`)."""
    return make_annealed_loss(
        model,
        config.capacity_gamma,
        config.capacity_max,
        config.capacity_steps,
        config.kl_warmup_steps,
    )


def build_beta_tcvae(config, model) -> Callable:
    """'beta_tcvae' (`make_beta_tcvae_loss`)."""
    return make_beta_tcvae_loss(model, config.beta, config.kl_warmup_steps)


def build_factor_vae(config, model) -> Objective:
    """'factor_vae' (`make_factor_vae_objective`)."""
    return make_factor_vae_objective(
        model,
        config.latents,
        config.factor_gamma,
        config.discriminator_hidden,
        config.discriminator_learning_rate,
        config.kl_warmup_steps,
    )


def build_iwae(config, model) -> Callable:
    """'iwae' (`make_iwae_loss`)."""
    return make_iwae_loss(model, config.iwae_samples, config.kl_warmup_steps)


def build_autoencoder(config, model) -> Callable:
    """'ae' (`make_autoencoder_loss` without corruption)."""
    del config
    return make_autoencoder_loss(model)


def build_denoising_autoencoder(config, model) -> Callable:
    """'dae' (`make_autoencoder_loss` of a corrupted input)."""
    return make_autoencoder_loss(model, config.dae_corruption, config.dae_noise_level)


def make_objective(
    config: ml_collections.ConfigDict, model, traced: Mapping | None = None
) -> Objective:
    """The objective `config.objective` names (`registry`), with its settings from `config`.

    Args:
      config: a validated config.
      model: the `models.VAE` it trains.
      traced: values that replace config fields, possibly traced (a population passes each
        member's sweepable fields this way): one compiled program then serves any values of the
        sweep.
    """
    spec = registry.objective_spec(config.objective)
    built = spec.builder()(registry.ConfigView(config, traced), model)
    return built if isinstance(built, Objective) else Objective(built)


# Every objective's metrics hold `loss`; a variational one's also these batch means, so that
# every run reports the same figures (train_elbo, ...) on one scale.
VARIATIONAL_METRICS = ("elbo", "recon", "kl")


def check_metrics(
    objective: Objective, model, image_shape, latents: int, batch_size: int, *, variational: bool
) -> None:
    """Refuses, before anything is compiled, an objective whose metrics break the contract.

    Traces the loss once on abstract inputs (`jax.eval_shape`: no computation) and names the
    missing keys, instead of a KeyError after an epoch has trained.

    Raises:
      ConfigError: `loss` is missing, or for a variational objective one of VARIATIONAL_METRICS.
    """
    key = jax.random.key(0)
    x = jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32)
    z = jax.ShapeDtypeStruct((batch_size, latents), jnp.float32)
    params = jax.eval_shape(lambda x, z: model.init(key, x, z), x, z)
    extra = () if objective.critic is None else (jax.eval_shape(objective.critic.init, key),)
    _, metrics = jax.eval_shape(
        lambda p, x, *e: objective.loss(p, x, key, jnp.zeros((), jnp.int32), *e), params, x, *extra
    )
    required = ("loss", *VARIATIONAL_METRICS) if variational else ("loss",)
    missing = [name for name in required if name not in metrics]
    if missing:
        raise ConfigError(
            f"the objective's metrics lack {', '.join(repr(m) for m in missing)} (it returned "
            f"{', '.join(repr(m) for m in sorted(metrics)) or 'none'}): every objective reports "
            "'loss', and a variational one the batch means 'elbo', 'recon' and 'kl' in nats per "
            "example (objectives.make_regularized_loss adds them)."
        )


def is_variational(objective: str) -> bool:
    """Whether the objective has a posterior q(z|x) and a KL: an ELBO to report."""
    return registry.objective_spec(objective).variational


def _gaussian_log_density(z: jax.Array, mean: jax.Array, log_variance: jax.Array) -> jax.Array:
    """log N(z | mean, diag(exp(log_variance))), summed over the last axis."""
    return -0.5 * jnp.sum(
        LOG_2PI + log_variance + (z - mean) ** 2 * jnp.exp(-log_variance), axis=-1
    )


def importance_weighted_bound(
    model,
    params,
    x: jax.Array,
    key: jax.Array,
    num_samples: int,
    chunk_size: int = 64,
    dropout_key: jax.Array | None = None,
    prior_weight: jax.Array | float = 1.0,
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
      dropout_key: for training with dropout; None evaluates deterministically.
      prior_weight: scales log p(z) - log q(z|x) in the log weights (KL warm-up in training); 1
        is the bound.

    Returns:
      (B,) bounds.
    """
    chunk_size = min(chunk_size, num_samples)
    num_chunks = -(-num_samples // chunk_size)
    train = dropout_key is not None
    rngs = {"dropout": dropout_key} if train else None
    mean, log_variance = model.apply(params, x, train, method="encode", rngs=rngs)
    batch = x.shape[0]

    def chunk_log_weights(chunk_index):
        eps = jax.random.normal(
            jax.random.fold_in(key, chunk_index), (chunk_size, *mean.shape), mean.dtype
        )
        z = mean + jnp.exp(0.5 * log_variance) * eps  # (S, B, D)
        flat_z = z.reshape((chunk_size * batch, -1))
        location, log_scale = model.apply(params, flat_z, train, method="decode", rngs=rngs)
        repeated_x = jnp.broadcast_to(x, (chunk_size, *x.shape)).reshape(location.shape)
        log_px = log_likelihood(repeated_x, location, log_scale).reshape((chunk_size, batch))
        log_pz = _gaussian_log_density(z, 0.0, jnp.zeros_like(z))
        log_qz = _gaussian_log_density(z, mean, log_variance)
        sample_index = chunk_index * chunk_size + jnp.arange(chunk_size)[:, None]
        log_weights = log_px + prior_weight * (log_pz - log_qz)
        return jnp.where(sample_index < num_samples, log_weights, -jnp.inf)

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
