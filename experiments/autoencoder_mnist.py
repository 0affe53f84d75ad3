"""The deterministic autoencoder baseline of the classic tutorials: the default MLP (784-500-20)
trained to reconstruct binarized MNIST, scored by the Bernoulli reconstruction loss in nats."""

from vae_jax.config import get_config as default_config


def get_config():
    config = default_config()
    config.objective = "ae"
    config.num_epochs = 10
    return config
