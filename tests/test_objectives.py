"""The ELBO's mathematics against closed forms, Monte-Carlo estimates and a hand computation."""

import itertools
import math

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import models, objectives
from vae_jax.errors import ConfigError


def test_kl_matches_monte_carlo_estimate():
    mean = jnp.array([[0.0, 0.0, 0.0], [1.5, -0.7, 0.3], [-2.0, 0.1, 0.9]])
    log_variance = jnp.array([[0.0, 0.0, 0.0], [-1.0, 0.5, -2.5], [1.2, -0.3, 0.0]])
    analytic = objectives.gaussian_kl_to_standard_normal(mean, log_variance)

    num_samples = 400_000
    eps = jax.random.normal(jax.random.key(1), (num_samples, *mean.shape))
    z = mean + jnp.exp(0.5 * log_variance) * eps
    log_q = -0.5 * (math.log(2 * math.pi) + log_variance + eps**2)
    log_p = -0.5 * (math.log(2 * math.pi) + z**2)
    log_ratio = (log_q - log_p).sum(-1)  # (S, B): unbiased single-sample KL estimates
    estimate = log_ratio.mean(0)
    standard_error = log_ratio.std(0) / math.sqrt(num_samples)

    assert float(analytic[0]) == 0.0  # q = p
    np.testing.assert_array_less(np.abs(estimate - analytic), 5 * standard_error + 1e-6)
    assert float(analytic[1]) > 1.0 and float(analytic[2]) > 1.0


def test_bernoulli_log_likelihood_by_hand():
    x = jnp.array([[[[1.0], [0.0]], [[1.0], [1.0]]]])  # (1, 2, 2, 1)
    logits = jnp.array([[[[2.0], [-1.0]], [[0.0], [-3.0]]]])
    p = 1 / (1 + np.exp(-np.asarray(logits)))
    expected = np.sum(np.asarray(x) * np.log(p) + (1 - np.asarray(x)) * np.log(1 - p))
    got = objectives.bernoulli_log_likelihood(x, logits)
    assert got.shape == (1,)
    np.testing.assert_allclose(got[0], expected, rtol=1e-6)


def test_bernoulli_log_likelihood_is_finite_for_extreme_logits():
    x = jnp.array([[1.0, 0.0, 1.0, 0.0]])
    logits = jnp.array([[200.0, -200.0, -200.0, 200.0]])
    got = objectives.bernoulli_log_likelihood(x, logits)
    np.testing.assert_allclose(got, [-400.0], rtol=1e-6)


def test_gaussian_log_likelihood_by_hand():
    x = jnp.array([[0.2, 0.9, 0.5]])
    mean = jnp.array([[0.0, 1.0, 0.5]])
    log_scale = jnp.log(jnp.array([0.5, 2.0, 1.0]))
    sigma = np.exp(np.asarray(log_scale))
    expected = np.sum(
        -0.5 * np.log(2 * np.pi * sigma**2)
        - (np.asarray(x) - np.asarray(mean)) ** 2 / (2 * sigma**2)
    )
    np.testing.assert_allclose(
        objectives.gaussian_log_likelihood(x, mean, log_scale)[0], expected, rtol=1e-6
    )
    # A scalar (fixed) scale broadcasts over pixels.
    fixed = objectives.gaussian_log_likelihood(x, mean, jnp.log(0.5))
    expected_fixed = np.sum(
        -0.5 * np.log(2 * np.pi * 0.25) - (np.asarray(x) - np.asarray(mean)) ** 2 / 0.5
    )
    np.testing.assert_allclose(fixed[0], expected_fixed, rtol=1e-6)


def test_reparameterization_gradients():
    key = jax.random.key(3)
    mean = jnp.array([[0.5, -1.0]])
    log_variance = jnp.array([[0.2, -0.4]])
    eps = jax.random.normal(key, mean.shape)
    d_mean = jax.grad(lambda m: objectives.reparameterize(key, m, log_variance).sum())(mean)
    d_log_variance = jax.grad(lambda v: objectives.reparameterize(key, mean, v).sum())(log_variance)
    np.testing.assert_allclose(d_mean, jnp.ones_like(mean))
    np.testing.assert_allclose(d_log_variance, 0.5 * jnp.exp(0.5 * log_variance) * eps, rtol=1e-6)


def test_per_example_keys_make_draws_independent_of_batching():
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(0), jnp.arange(6))
    mean, log_variance = jnp.zeros((6, 3)), jnp.zeros((6, 3))
    whole = objectives.reparameterize(keys, mean, log_variance)
    halves = jnp.concatenate(
        [
            objectives.reparameterize(keys[:3], mean[:3], log_variance[:3]),
            objectives.reparameterize(keys[3:], mean[3:], log_variance[3:]),
        ]
    )
    np.testing.assert_array_equal(whole, halves)


def _tiny_model_and_params():
    """A 2-pixel image, one hidden unit of width 2 and one latent, with hand-set weights."""
    model = models.VAE(
        models.MLPEncoder(hidden_sizes=(2,), latents=1),
        models.MLPDecoder(hidden_sizes=(2,), image_shape=(1, 2, 1)),
    )
    params = model.init(jax.random.key(0), jnp.zeros((1, 1, 2, 1)), jnp.zeros((1, 1)))
    weights = {
        "encoder": {
            "Dense_0": {"kernel": [[1.0, -1.0], [0.5, 2.0]], "bias": [0.1, 0.0]},
            "mean": {"kernel": [[0.3], [-0.2]], "bias": [0.05]},
            "log_variance": {"kernel": [[-0.5], [0.4]], "bias": [-0.1]},
        },
        "decoder": {
            "Dense_0": {"kernel": [[1.5, -0.5]], "bias": [0.2, 0.3]},
            "Dense_1": {"kernel": [[1.0, -2.0], [0.7, 0.4]], "bias": [-0.1, 0.2]},
        },
    }
    hand = jax.tree.map(
        lambda v: jnp.asarray(v, jnp.float32),
        {"params": weights},
        is_leaf=lambda v: isinstance(v, list),
    )
    assert jax.tree.structure(hand) == jax.tree.structure(params)
    return model, hand, weights


def test_elbo_of_hand_set_model_matches_hand_computation():
    model, params, w = _tiny_model_and_params()
    x = jnp.array([[[[1.0], [0.0]]], [[[0.0], [1.0]]], [[[1.0], [1.0]]]])  # (3, 1, 2, 1)
    key = jax.random.key(7)
    terms = objectives.elbo_terms(model, params, x, key)

    def dense(h, layer):
        return h @ np.array(layer["kernel"]) + np.array(layer["bias"])

    xs = np.asarray(x).reshape(3, 2)
    h = np.maximum(dense(xs, w["encoder"]["Dense_0"]), 0)
    mean = dense(h, w["encoder"]["mean"])
    log_variance = dense(h, w["encoder"]["log_variance"])
    eps = np.asarray(jax.random.normal(key, (3, 1)))
    z = mean + np.exp(0.5 * log_variance) * eps
    logits = dense(np.maximum(dense(z, w["decoder"]["Dense_0"]), 0), w["decoder"]["Dense_1"])
    log_px = np.sum(xs * logits - np.log1p(np.exp(logits)), axis=1)
    kl = 0.5 * np.sum(np.exp(log_variance) + mean**2 - 1 - log_variance, axis=1)

    np.testing.assert_allclose(terms["recon"], -log_px, rtol=1e-5)
    np.testing.assert_allclose(terms["kl"], kl, rtol=1e-5)
    np.testing.assert_allclose(terms["elbo"], log_px - kl, rtol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 1.0, 4.0])
def test_beta_weights_only_the_kl(beta):
    model, params, _ = _tiny_model_and_params()
    x = jnp.array([[[[1.0], [0.0]]], [[[0.0], [1.0]]]])
    key = jax.random.key(2)
    loss, metrics = objectives.make_elbo_loss(model, beta)(params, x, key, 0)
    noise_key, dropout_key = jax.random.split(key)
    terms = objectives.elbo_terms(model, params, x, noise_key, dropout_key)
    np.testing.assert_allclose(loss, jnp.mean(terms["recon"] + beta * terms["kl"]), rtol=1e-6)
    # The reported ELBO is the beta = 1 bound whatever beta is trained with.
    np.testing.assert_allclose(metrics["elbo"], jnp.mean(terms["elbo"]), rtol=1e-6)


def test_gradients_reach_the_encoder_through_the_sample():
    model, params, _ = _tiny_model_and_params()
    x = jnp.array([[[[1.0], [0.0]]], [[[0.0], [1.0]]]])
    loss_fn = objectives.make_elbo_loss(model)

    def recon_only(p):
        noise_key, _ = jax.random.split(jax.random.key(5))
        return objectives.elbo_terms(model, p, x, noise_key)["recon"].mean()

    # The reconstruction term depends on the encoder only through z = mean + sigma * eps.
    encoder_grads = jax.grad(recon_only)(params)["params"]["encoder"]
    for layer in ("mean", "log_variance"):
        grad = np.asarray(encoder_grads[layer]["kernel"])
        assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 1e-4, layer
    grads, _ = jax.grad(loss_fn, has_aux=True)(params, x, jax.random.key(5), 0)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("likelihood", ["gaussian", "gaussian_learned"])
def test_gaussian_likelihoods_in_the_model(likelihood):
    model = models.VAE(
        models.MLPEncoder((8,), 2), models.MLPDecoder((8,), (2, 2, 1)), likelihood, 0.5
    )
    x = jax.random.uniform(jax.random.key(0), (3, 2, 2, 1))
    params = model.init(jax.random.key(1), x, jnp.zeros((3, 2)))
    _, log_scale = model.apply(params, jnp.ones((3, 2)), method="decode")
    if likelihood == "gaussian":
        assert "pixel_log_scale" not in params["params"]
        np.testing.assert_allclose(log_scale, math.log(0.5), rtol=1e-6)
    else:
        assert params["params"]["pixel_log_scale"].shape == (2, 2, 1)
        np.testing.assert_array_equal(log_scale, jnp.zeros((2, 2, 1)))
    terms = objectives.elbo_terms(model, params, x, jax.random.key(2))
    expected = -objectives.gaussian_log_likelihood(x, _decode_sample(model, params, x), log_scale)
    np.testing.assert_allclose(terms["recon"], expected, rtol=1e-5)


def _decode_sample(model, params, x):
    mean, log_variance = model.apply(params, x, method="encode")
    z = objectives.reparameterize(jax.random.key(2), mean, log_variance)
    return model.apply(params, z, method="decode")[0]


class _LinearDecoder(flax.linen.Module):
    """p(x|z) = N(W z + b, sigma^2 I): with p(z) = N(0, I), log p(x) is known in closed form."""

    image_shape: tuple = (1, 3, 1)

    @flax.linen.compact
    def __call__(self, z, train: bool = False):
        return flax.linen.Dense(3)(z).reshape((z.shape[0], *self.image_shape))


def _linear_gaussian_model():
    model = models.VAE(models.MLPEncoder((8,), 2), _LinearDecoder(), "gaussian", 0.5)
    x = jnp.array([[[[0.3], [-1.2], [0.8]]], [[[2.0], [0.1], [-0.5]]]])  # (2, 1, 3, 1)
    params = model.init(jax.random.key(4), x, jnp.zeros((2, 2)))
    decoder = params["params"]["decoder"]["Dense_0"]
    weight, bias = np.asarray(decoder["kernel"]), np.asarray(decoder["bias"])  # (2, 3), (3,)
    covariance = weight.T @ weight + 0.25 * np.eye(3)
    flat = np.asarray(x).reshape(2, 3) - bias
    _, log_det = np.linalg.slogdet(covariance)
    solved = np.linalg.solve(covariance, flat.T).T
    log_px = -0.5 * (3 * np.log(2 * np.pi) + log_det + np.sum(flat * solved, axis=1))
    return model, params, x, log_px


def test_importance_weighted_bound_with_one_sample_is_the_sampled_elbo():
    model, params, x, _ = _linear_gaussian_model()
    key = jax.random.key(0)
    bound = objectives.importance_weighted_bound(model, params, x, key, num_samples=1)
    # By hand, with the same noise: log p(x|z) + log p(z) - log q(z|x) at z = mean + sigma * eps.
    mean, log_variance = (np.asarray(a) for a in model.apply(params, x, method="encode"))
    eps = np.asarray(jax.random.normal(jax.random.fold_in(key, 0), (1, *mean.shape)))[0]
    z = mean + np.exp(0.5 * log_variance) * eps
    location, log_scale = model.apply(params, jnp.asarray(z), method="decode")
    log_px = np.asarray(objectives.log_likelihood(x, location, log_scale))
    log_pz = -0.5 * np.sum(np.log(2 * np.pi) + z**2, axis=1)
    log_qz = -0.5 * np.sum(np.log(2 * np.pi) + log_variance + eps**2, axis=1)
    np.testing.assert_allclose(bound, log_px + log_pz - log_qz, rtol=1e-5)


def test_importance_weighted_bound_tightens_towards_the_true_log_likelihood():
    model, params, x, log_px = _linear_gaussian_model()

    def average_bound(k, draws=40):
        keys = jax.random.split(jax.random.key(k), draws)
        fn = jax.jit(
            lambda key: objectives.importance_weighted_bound(
                model, params, x, key, num_samples=k, chunk_size=64
            )
        )
        return np.mean([np.asarray(fn(key)) for key in keys], axis=0)

    bounds = {k: average_bound(k) for k in (1, 10, 100, 1000)}
    for example in range(2):
        sequence = [bounds[k][example] for k in (1, 10, 100, 1000)]
        assert all(a < b for a, b in itertools.pairwise(sequence)), sequence
        assert sequence[-1] <= log_px[example] + 0.01  # a lower bound, up to Monte-Carlo noise
        assert log_px[example] - sequence[-1] < 0.1 * (log_px[example] - sequence[0])


def test_importance_weighted_bound_masks_the_padding_of_its_last_chunk():
    model, params, x, _ = _linear_gaussian_model()
    key = jax.random.key(9)
    # k = 50 in one chunk of 64: the bound must be the log-mean-exp of the first 50 weights only.
    padded = objectives.importance_weighted_bound(model, params, x, key, 50, chunk_size=64)
    mean, log_variance = model.apply(params, x, method="encode")
    eps = jax.random.normal(jax.random.fold_in(key, 0), (64, *mean.shape))[:50]
    z = mean + jnp.exp(0.5 * log_variance) * eps  # (50, B, D)
    location, log_scale = model.apply(params, z.reshape(-1, z.shape[-1]), method="decode")
    log_px = objectives.log_likelihood(
        jnp.broadcast_to(x, (50, *x.shape)).reshape(location.shape), location, log_scale
    ).reshape(50, -1)
    log_pz = -0.5 * jnp.sum(jnp.log(2 * jnp.pi) + z**2, axis=-1)
    log_qz = -0.5 * jnp.sum(jnp.log(2 * jnp.pi) + log_variance + eps**2, axis=-1)
    expected = jax.scipy.special.logsumexp(log_px + log_pz - log_qz, axis=0) - jnp.log(50.0)
    np.testing.assert_allclose(padded, expected, rtol=1e-5)


def test_posterior_terms_agree_with_the_elbo_terms_and_the_sample():
    model, params, _ = _tiny_model_and_params()
    x = jnp.array([[[[1.0], [0.0]]], [[[0.0], [1.0]]], [[[1.0], [1.0]]]])
    key = jax.random.key(3)
    terms = objectives.posterior_terms(model, params, x, key)
    elbo = objectives.elbo_terms(model, params, x, key)
    np.testing.assert_array_equal(terms.recon, elbo["recon"])
    np.testing.assert_array_equal(terms.kl, elbo["kl"])
    mean, log_variance = model.apply(params, x, method="encode")
    np.testing.assert_array_equal(terms.mean, mean)
    eps = jax.random.normal(key, mean.shape)
    np.testing.assert_allclose(terms.z, mean + np.exp(0.5 * log_variance) * eps, rtol=1e-6)
    assert terms.mean.shape == terms.z.shape == (3, 1) and terms.kl.shape == (3,)


def test_regularized_loss_adds_the_penalty_to_the_weighted_elbo():
    model, params, _ = _tiny_model_and_params()
    x = jnp.array([[[[1.0], [0.0]]], [[[0.0], [1.0]]]])
    key = jax.random.key(4)

    def regularizer(terms, step):  # a hand-checkable penalty: the batch's mean squared z
        penalty = 3.0 * jnp.mean(terms.z**2)
        return penalty, {"z_square": jnp.mean(terms.z**2)}

    loss_fn = objectives.make_regularized_loss(model, regularizer, kl_weight=2.0)
    loss, metrics = loss_fn(params, x, key, 0)
    noise_key, dropout_key = jax.random.split(key)
    terms = objectives.posterior_terms(model, params, x, noise_key, dropout_key)
    expected = jnp.mean(terms.recon) + 2.0 * jnp.mean(terms.kl) + 3.0 * jnp.mean(terms.z**2)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert set(metrics) == {"loss", "elbo", "recon", "kl", "z_square"}
    np.testing.assert_allclose(metrics["elbo"], -jnp.mean(terms.recon + terms.kl), rtol=1e-6)
    with pytest.raises(ValueError, match=r"\['kl'\] would replace the ELBO's own"):
        objectives.make_regularized_loss(model, lambda t, s: (0.0, {"kl": 0.0}))(params, x, key, 0)


def test_a_loss_without_the_elbo_metrics_is_refused_before_anything_compiles():
    model, _, _ = _tiny_model_and_params()

    def loss_without_elbo(params, x, key, step):
        loss = jnp.mean(objectives.posterior_terms(model, params, x, key).recon)
        return loss, {"loss": loss}

    broken = objectives.Objective(loss_without_elbo)
    with pytest.raises(ConfigError, match=r"lack 'elbo', 'recon', 'kl' \(it returned 'loss'\)"):
        objectives.check_metrics(broken, model, (1, 2, 1), 1, 4, variational=True)
    objectives.check_metrics(broken, model, (1, 2, 1), 1, 4, variational=False)  # an autoencoder
    good = objectives.Objective(objectives.make_elbo_loss(model))
    objectives.check_metrics(good, model, (1, 2, 1), 1, 4, variational=True)
