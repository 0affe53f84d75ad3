"""DIP-VAE-I/II and InfoVAE-MMD (vae_jax.variants) against hand computations, and their settings."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import models, objectives
from vae_jax.config import get_config, validate_config
from vae_jax.errors import ConfigError
from vae_jax.variants import dip_vae, info_vae

MEANS = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -1.0], [-0.5, 2.0, 0.0], [0.0, 1.0, 1.0]])
LOG_VARIANCES = np.array([[0.0, -1.0, 0.5], [0.2, 0.3, -0.4], [-2.0, 0.0, 0.1], [0.0, 0.0, 0.0]])


def hand_covariance(mean):
    """E[mu mu^T] - E[mu] E[mu]^T by explicit sums."""
    b, d = mean.shape
    expected = mean.sum(0) / b
    return np.array(
        [
            [
                sum(mean[n, i] * mean[n, j] for n in range(b)) / b - expected[i] * expected[j]
                for j in range(d)
            ]
            for i in range(d)
        ]
    )


def hand_dip_penalty(c, lambda_od, lambda_d):
    d = c.shape[0]
    off = sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
    on = sum((c[i, i] - 1.0) ** 2 for i in range(d))
    return lambda_od * off + lambda_d * on


def test_covariance_of_means_is_the_biased_batch_covariance():
    got = dip_vae.covariance_of_means(jnp.asarray(MEANS, jnp.float32))
    np.testing.assert_allclose(got, hand_covariance(MEANS), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, np.cov(MEANS.T, bias=True), rtol=1e-5, atol=1e-6)


def test_dip_penalty_by_hand_and_zero_at_the_identity():
    c = hand_covariance(MEANS)
    penalty, off, on = dip_vae.dip_penalty(jnp.asarray(c, jnp.float32), 2.0, 20.0)
    np.testing.assert_allclose(penalty, hand_dip_penalty(c, 2.0, 20.0), rtol=1e-5)
    np.testing.assert_allclose(off, hand_dip_penalty(c, 1.0, 0.0), rtol=1e-5)
    np.testing.assert_allclose(on, hand_dip_penalty(c, 0.0, 1.0), rtol=1e-5)
    # ±e_i codes have identity covariance: nothing to penalise.
    codes = jnp.concatenate([jnp.eye(3), -jnp.eye(3)]) * jnp.sqrt(3.0)
    zero, _, _ = dip_vae.dip_penalty(dip_vae.covariance_of_means(codes), 10.0, 100.0)
    assert abs(float(zero)) < 1e-5


def tiny_model():
    model = models.VAE(
        models.MLPEncoder(hidden_sizes=(4,), latents=3),
        models.MLPDecoder(hidden_sizes=(4,), image_shape=(2, 2, 1)),
    )
    x = jax.random.uniform(jax.random.key(5), (6, 2, 2, 1))
    params = model.init(jax.random.key(0), x, jnp.zeros((6, 3)))
    return model, params, x


@pytest.mark.parametrize("dip_type", ["i", "ii"])
def test_dip_vae_loss_is_the_elbo_plus_the_hand_penalty(dip_type):
    model, params, x = tiny_model()
    key = jax.random.key(7)
    loss, metrics = dip_vae.make_dip_vae_loss(model, dip_type, 3.0, 10.0)(params, x, key, 0)
    noise_key, dropout_key = jax.random.split(key)
    terms = objectives.posterior_terms(model, params, x, noise_key, dropout_key)
    c = hand_covariance(np.asarray(terms.mean, np.float64))
    if dip_type == "ii":
        c = c + np.diag(np.exp(np.asarray(terms.log_variance, np.float64)).mean(0))
    penalty = hand_dip_penalty(c, 3.0, 30.0)
    np.testing.assert_allclose(metrics["dip_penalty"], penalty, rtol=1e-4)
    expected = np.mean(terms.recon) + np.mean(terms.kl) + penalty
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["elbo"], -np.mean(terms.recon + terms.kl), rtol=1e-6)


def hand_mmd(a, b, kernel, bandwidth):
    scale = 2 * a.shape[1] * bandwidth**2

    def k(u, v):
        squared = float(np.sum((u - v) ** 2))
        return scale / (scale + squared) if kernel == "imq" else np.exp(-squared / scale)

    n = len(a)
    within_a = sum(k(a[i], a[j]) for i, j in itertools.permutations(range(n), 2))
    within_b = sum(k(b[i], b[j]) for i, j in itertools.permutations(range(n), 2))
    across = sum(k(a[i], b[j]) for i in range(n) for j in range(n))
    return (within_a + within_b) / (n * (n - 1)) - 2 * across / n**2


@pytest.mark.parametrize("kernel", info_vae.KERNELS)
def test_mmd_is_the_unbiased_u_statistic_by_hand(kernel):
    a, b = MEANS, LOG_VARIANCES * 2.0
    got = info_vae.mmd(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), kernel, 0.7)
    np.testing.assert_allclose(got, hand_mmd(a, b, kernel, 0.7), rtol=1e-4, atol=1e-6)


def test_mmd_tells_a_shifted_sample_from_the_prior():
    keys = jax.random.split(jax.random.key(1), 3)
    prior = [jax.random.normal(k, (400, 4)) for k in keys]
    same = float(info_vae.mmd(prior[0], prior[1], "imq", 1.0))
    shifted = float(info_vae.mmd(prior[0] + 1.0, prior[2], "imq", 1.0))
    assert abs(same) < 0.01 < shifted


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_info_vae_loss_weights_kl_and_mmd_as_zhao_et_al(alpha):
    model, params, x = tiny_model()
    key = jax.random.key(9)
    loss_fn = info_vae.make_info_vae_loss(model, alpha, 50.0, "rbf", 1.0)
    loss, metrics = loss_fn(params, x, key, 0)
    noise_key, dropout_key, prior_key = jax.random.split(key, 3)
    terms = objectives.posterior_terms(model, params, x, noise_key, dropout_key)
    prior_z = np.asarray(jax.random.normal(prior_key, terms.z.shape))
    divergence = hand_mmd(np.asarray(terms.z, np.float64), prior_z, "rbf", 1.0)
    np.testing.assert_allclose(metrics["mmd"], divergence, rtol=1e-4, atol=1e-6)
    expected = np.mean(terms.recon) + (1 - alpha) * np.mean(terms.kl) + (alpha + 49.0) * divergence
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["kl"], np.mean(terms.kl), rtol=1e-6)  # still reported


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"objective": "dip_vae_i", "dip_i_lambda_od": -1.0}, r"dip_i_lambda_od=-1.0 must be"),
        ({"objective": "dip_vae_ii", "batch_size": 1}, r"batch_size=1 with objective='dip_vae_ii'"),
        ({"objective": "info_vae", "infovae_alpha": 1.5}, r"infovae_alpha=1.5 must be in \[0, 1\]"),
        ({"objective": "info_vae", "infovae_lambda": 0.5}, r"alpha \+ lambda - 1"),
        ({"objective": "info_vae", "infovae_kernel": "cauchy"}, r"'cauchy' is not known"),
        ({"objective": "info_vae", "infovae_bandwidth": 0.0}, r"infovae_bandwidth=0.0 must be"),
        ({"objective": "vae", "dip_i_lambda_od": 5.0}, r"read by 'dip_vae_i' only"),
        ({"objective": "dip_vae_i", "dip_ii_lambda_od": 5.0}, r"read by 'dip_vae_ii' only"),
        ({"objective": "beta_vae", "infovae_lambda": 5.0}, r"read by 'info_vae' only"),
    ],
)
def test_bad_settings_are_one_sentence(settings, message):
    config = get_config()
    config.update(settings)
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_defaults_are_valid_for_every_variant():
    for objective in ("dip_vae_i", "dip_vae_ii", "info_vae"):
        config = get_config()
        config.objective = objective
        validate_config(config)
