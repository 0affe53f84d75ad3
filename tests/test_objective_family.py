"""The β-VAE family and the autoencoder baselines: each objective's mathematics, checked against
hand computations and closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import small_config, straight_and_resumed
from test_objectives import _linear_gaussian_model, _tiny_model_and_params

from vae_jax import objectives, train
from vae_jax.rng import TRAIN_STREAM, stream_key
from vae_jax.step import create_train_state, make_train_step

X = jnp.array([[[[1.0], [0.0]]], [[[0.0], [1.0]]], [[[1.0], [1.0]]]])  # (3, 1, 2, 1)


def _objective(model, **overrides):
    return objectives.make_objective(small_config(latents=1, **overrides), model)


def test_beta_vae_with_beta_one_is_the_vae():
    model, params, _ = _tiny_model_and_params()
    key, step = jax.random.key(5), jnp.asarray(3)
    vae = _objective(model, objective="vae").loss
    beta_vae = _objective(model, objective="beta_vae", beta=1.0).loss
    (loss_a, _), grads_a = jax.value_and_grad(vae, has_aux=True)(params, X, key, step)
    (loss_b, _), grads_b = jax.value_and_grad(beta_vae, has_aux=True)(params, X, key, step)
    assert float(loss_a) == float(loss_b)
    jax.tree.map(np.testing.assert_array_equal, grads_a, grads_b)
    # and beta = 4 is a different objective on the same draws
    beta4 = _objective(model, objective="beta_vae", beta=4.0).loss
    assert float(beta4(params, X, key, step)[0]) > float(loss_a)


@pytest.mark.parametrize("step", [0, 5, 10, 30])
def test_kl_warmup_raises_the_kl_weight_linearly_to_beta(step):
    model, params, _ = _tiny_model_and_params()
    key = jax.random.key(2)
    loss_fn = _objective(model, objective="beta_vae", beta=3.0, kl_warmup_steps=10).loss
    loss, metrics = loss_fn(params, X, key, jnp.asarray(step))
    weight = 3.0 * min(1.0, step / 10)
    np.testing.assert_allclose(loss, metrics["recon"] + weight * metrics["kl"], rtol=1e-6)
    # The reported ELBO is the full bound whatever the weight.
    np.testing.assert_allclose(metrics["elbo"], -(metrics["recon"] + metrics["kl"]), rtol=1e-6)


def test_capacity_rises_linearly_to_its_maximum_and_stays():
    steps = jnp.asarray([0, 25_000, 50_000, 100_000, 250_000])
    np.testing.assert_allclose(
        objectives.capacity(steps, 25.0, 100_000), [0.0, 6.25, 12.5, 25.0, 25.0], rtol=1e-6
    )


def test_annealed_loss_is_recon_plus_gamma_times_distance_to_capacity():
    model, params, _ = _tiny_model_and_params()
    key = jax.random.key(4)
    loss_fn = objectives.make_annealed_loss(model, 1000.0, 25.0, 100)
    for step in (0, 40, 100):
        loss, metrics = loss_fn(params, X, key, jnp.asarray(step))
        target = 25.0 * min(1.0, step / 100)
        assert float(metrics["capacity"]) == pytest.approx(target)
        expected = metrics["recon"] + 1000.0 * abs(float(metrics["kl"]) - target)
        np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_annealed_capacity_follows_the_training_step_only(tmp_path):
    # 8 steps per epoch, C reaches 25 at step 10. Epoch 1 trains at steps 0..7 and epoch 2 at
    # 8..15; the evaluation between them must not advance the schedule.
    config = small_config(objective="annealed_vae", capacity_steps=10, num_image_examples=0)
    records = train.train_and_evaluate(config, str(tmp_path))
    capacities = [25.0 * min(1.0, s / 10) for s in range(16)]
    assert records[0]["train_capacity"] == pytest.approx(np.mean(capacities[:8]), rel=1e-6)
    assert records[1]["train_capacity"] == pytest.approx(np.mean(capacities[8:]), rel=1e-6)


def _correlated_posteriors(key, rho, batch=2048, dims=3, posterior_variance=0.1):
    """A batch of posteriors q(z|x_j) = N(mean_j, 0.1 I) whose aggregate q(z) is N(0, R) with
    correlation rho between every pair: TC = -1/2 log det R."""
    correlation = np.full((dims, dims), rho) + (1 - rho) * np.eye(dims)
    mean_key, noise_key = jax.random.split(key)
    mean = jax.random.multivariate_normal(
        mean_key,
        jnp.zeros(dims),
        jnp.asarray(correlation - posterior_variance * np.eye(dims)),
        (batch,),
    )
    log_variance = jnp.full((batch, dims), math.log(posterior_variance))
    z = mean + math.sqrt(posterior_variance) * jax.random.normal(noise_key, (batch, dims))
    return (z, mean, log_variance), -0.5 * np.linalg.slogdet(correlation)[1]


@pytest.mark.parametrize("rho", [0.0, 0.6])
def test_total_correlation_estimate_of_gaussians(rho):
    estimates = []
    for seed in range(3):
        args, analytic = _correlated_posteriors(jax.random.key(seed), rho)
        estimates.append(float(objectives.total_correlation(*args)))
    if rho == 0.0:
        assert analytic == pytest.approx(0.0, abs=1e-12)
        assert abs(np.mean(estimates)) < 0.06, estimates  # factorised: no total correlation
    else:
        assert analytic == pytest.approx(0.522, abs=1e-3)
        assert abs(np.mean(estimates) - analytic) < 0.05, (estimates, analytic)


def test_beta_tcvae_adds_beta_minus_one_times_the_tc_to_the_vae_loss():
    model, params, _ = _tiny_model_and_params()
    key, step = jax.random.key(8), jnp.asarray(0)
    vae_loss, _ = objectives.make_elbo_loss(model, 1.0)(params, X, key, step)
    tc1_loss, tc1 = objectives.make_beta_tcvae_loss(model, 1.0)(params, X, key, step)
    tc6_loss, tc6 = objectives.make_beta_tcvae_loss(model, 6.0)(params, X, key, step)
    np.testing.assert_allclose(tc1_loss, vae_loss, rtol=1e-6)  # beta = 1 is the VAE
    np.testing.assert_allclose(tc6_loss, vae_loss + 5.0 * tc6["tc"], rtol=1e-6)
    assert float(tc1["tc"]) == float(tc6["tc"])


def test_iwae_loss_is_the_negated_k_sample_bound_and_k_one_is_the_sampled_elbo():
    model, params, x, _ = _linear_gaussian_model()
    key, step = jax.random.key(3), jnp.asarray(0)
    bound_key, _, _ = jax.random.split(key, 3)
    for k in (1, 50):
        loss, metrics = objectives.make_iwae_loss(model, k)(params, x, key, step)
        bound = objectives.importance_weighted_bound(model, params, x, bound_key, k, k)
        np.testing.assert_allclose(loss, -jnp.mean(bound), rtol=1e-6)
        np.testing.assert_allclose(metrics["iwae_bound"], -loss, rtol=1e-6)
    grads = jax.grad(lambda p: objectives.make_iwae_loss(model, 50)(p, x, key, step)[0])(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_iwae_warmup_scales_the_prior_over_posterior_part_of_the_weights():
    model, params, x, _ = _linear_gaussian_model()
    key = jax.random.key(1)
    # With warm-up weight 0 at step 0 and k = 1, the loss is -log p(x|z) alone.
    loss, _ = objectives.make_iwae_loss(model, 1, kl_warmup_steps=100)(params, x, key, 0)
    bound_key = jax.random.split(key, 3)[0]
    mean, log_variance = model.apply(params, x, method="encode")
    eps = jax.random.normal(jax.random.fold_in(bound_key, 0), (1, *mean.shape))[0]
    location, log_scale = model.apply(
        params, mean + jnp.exp(0.5 * log_variance) * eps, method="decode"
    )
    expected = -jnp.mean(objectives.log_likelihood(x, location, log_scale))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_dae_scores_the_reconstruction_of_the_corrupted_input_against_the_clean_input():
    model, params, _ = _tiny_model_and_params()
    x = jnp.ones((64, 1, 2, 1))
    key = jax.random.key(6)
    loss, _ = objectives.make_autoencoder_loss(model, "masking", 0.5)(params, x, key, 0)
    corrupted = objectives.corrupt(jax.random.split(key)[0], x, "masking", 0.5)
    assert 0 < float(jnp.mean(corrupted)) < 1  # some pixels were masked

    def score(inputs, target):
        mean, _ = model.apply(params, inputs, method="encode")
        return -jnp.mean(
            objectives.log_likelihood(target, *model.apply(params, mean, method="decode"))
        )

    np.testing.assert_allclose(loss, score(corrupted, x), rtol=1e-6)  # the clean target
    assert abs(float(score(corrupted, corrupted)) - float(loss)) > 1e-3  # not the corrupted one
    # the plain autoencoder reconstructs its own input
    ae_loss, _ = objectives.make_autoencoder_loss(model)(params, x, key, 0)
    np.testing.assert_allclose(ae_loss, score(x, x), rtol=1e-6)


@pytest.mark.parametrize("corruption,level", [("masking", 0.25), ("gaussian", 0.1)])
def test_corruption_has_the_configured_strength(corruption, level):
    x = jnp.full((200_000,), 0.5)
    corrupted = objectives.corrupt(jax.random.key(0), x, corruption, level)
    if corruption == "masking":
        assert float(jnp.mean(corrupted == 0.0)) == pytest.approx(level, abs=0.005)
    else:
        # 0.5 +- 5 sigma: clipping is negligible
        assert float(jnp.std(corrupted - x)) == pytest.approx(level, rel=0.03)
        assert float(jnp.min(corrupted)) >= 0.0 and float(jnp.max(corrupted)) <= 1.0


def test_permuting_dimensions_keeps_marginals_and_breaks_correlation():
    z = jax.random.normal(jax.random.key(0), (4096, 1)) * jnp.ones((1, 3))  # fully correlated
    permuted = objectives.permute_dimensions(jax.random.key(1), z)
    np.testing.assert_array_equal(np.sort(permuted, axis=0), np.sort(z, axis=0))
    correlation = np.corrcoef(np.asarray(permuted).T)
    assert np.max(np.abs(correlation - np.eye(3))) < 0.06


def test_factor_vae_step_updates_the_discriminator_with_its_own_optimizer():
    model, params, _ = _tiny_model_and_params()
    config = small_config(objective="factor_vae", latents=1, discriminator_hidden=(8,))
    objective = objectives.make_objective(config, model)
    optimizer = optax.adam(1e-3)
    state = create_train_state(
        model, optimizer, (1, 2, 1), 1, seed=0, critic=objective.critic
    ).replace(params=params, opt_state=optimizer.init(params))
    images = (np.asarray(X) * 255).astype(np.uint8)
    new_state, metrics = jax.jit(make_train_step(objective, optimizer))(state, images)

    # By hand: the same keys, the model's latents, one Adam(1e-4, 0.5, 0.9) step of the critic.
    step_key = jax.random.fold_in(stream_key(state.key, TRAIN_STREAM), 0)
    loss_key, _, critic_key = jax.random.split(step_key, 3)
    _, aux = objective.loss(params, X, loss_key, state.step, state.critic["params"])
    critic_grads, _ = jax.grad(objective.critic.loss, has_aux=True)(
        state.critic["params"], aux["latents"], critic_key
    )
    updates, _ = objective.critic.optimizer.update(critic_grads, state.critic["opt_state"])
    expected = optax.apply_updates(state.critic["params"], updates)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        new_state.critic["params"],
        expected,
    )
    assert "latents" not in metrics and 0.0 <= float(metrics["discriminator_accuracy"]) <= 1.0


def test_factor_vae_loss_adds_gamma_times_the_discriminator_estimate():
    model, params, _ = _tiny_model_and_params()
    key, step = jax.random.key(3), jnp.asarray(0)
    losses = {}
    for gamma in (0.0, 35.0):
        config = small_config(
            objective="factor_vae", latents=1, factor_gamma=gamma, discriminator_hidden=(8,)
        )
        objective = objectives.make_objective(config, model)
        critic_params = objective.critic.init(jax.random.key(0))
        losses[gamma] = objective.loss(params, X, key, step, critic_params)
    (loss0, m0), (loss35, m35) = losses[0.0], losses[35.0]
    np.testing.assert_allclose(loss0, m0["recon"] + m0["kl"], rtol=1e-6)
    np.testing.assert_allclose(loss35, loss0 + 35.0 * m35["tc"], rtol=1e-5)


def test_factor_vae_resumes_exactly_with_its_discriminator(tmp_path):
    config = small_config(objective="factor_vae", discriminator_hidden=(16, 16), num_epochs=2)
    straight, resumed = straight_and_resumed(config, tmp_path)
    assert resumed == straight
