"""Reproduction of the Flax VAE example's documented figure: test -ELBO about 104 nats after 10
epochs (MLP 784-500-20, batch 128, Adam 1e-3, statically binarized MNIST)."""

from vae_jax.config import get_config as default_config


def get_config():
    config = default_config()
    config.num_epochs = 10
    return config
