"""Shapes of both architectures, and the checks `build_model` makes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import models
from vae_jax.config import get_config
from vae_jax.errors import ConfigError


@pytest.mark.parametrize(
    "model_name, image_shape, latents, conv_features",
    [
        ("mlp", (28, 28, 1), 20, (32, 64)),
        ("mlp", (28, 28, 1), 2, (32, 64)),
        ("conv", (28, 28, 1), 2, (32, 64)),
        ("conv", (28, 28, 3), 10, (32, 64)),
        ("conv", (64, 64, 1), 10, (32, 32, 64, 64)),
        ("conv", (64, 64, 3), 32, (32, 32, 64, 64)),
    ],
)
def test_encoder_and_decoder_shapes(model_name, image_shape, latents, conv_features):
    config = get_config()
    config.model, config.latents, config.conv_features = model_name, latents, conv_features
    model = models.build_model(config, image_shape)
    x = jnp.zeros((5, *image_shape))
    params = model.init(jax.random.key(0), x, jnp.zeros((5, latents)))
    mean, log_variance = model.apply(params, x, method="encode")
    assert mean.shape == log_variance.shape == (5, latents)
    location, log_scale = model.apply(params, mean, method="decode")
    assert location.shape == (5, *image_shape)
    assert log_scale is None  # Bernoulli


def test_default_mlp_matches_the_flax_example():
    model = models.build_model(get_config(), (28, 28, 1))
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), jnp.zeros((1, 20)))
    shapes = jax.tree.map(lambda p: p.shape, params["params"])
    assert shapes["encoder"]["Dense_0"]["kernel"] == (784, 500)
    assert shapes["encoder"]["mean"]["kernel"] == (500, 20)
    assert shapes["decoder"]["Dense_0"]["kernel"] == (20, 500)
    assert shapes["decoder"]["Dense_1"]["kernel"] == (500, 784)


def test_conv_dropout_is_random_in_training_only():
    config = get_config()
    config.model, config.dropout_rate = "conv", 0.5
    model = models.build_model(config, (28, 28, 1))
    x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
    params = model.init(jax.random.key(1), x, jnp.zeros((4, 20)))
    evaluation = [model.apply(params, x, method="encode")[0] for _ in range(2)]
    np.testing.assert_array_equal(*evaluation)
    training = [
        model.apply(params, x, True, method="encode", rngs={"dropout": jax.random.key(k)})[0]
        for k in range(2)
    ]
    assert not np.allclose(*training)


def test_conv_rejects_image_sides_it_cannot_halve():
    config = get_config()
    config.model, config.conv_features = "conv", (32, 64, 64)
    with pytest.raises(ConfigError, match="divisible by 8.*28x28"):
        models.build_model(config, (28, 28, 1))
