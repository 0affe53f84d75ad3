"""FactorVAE (Kim & Mnih 2018) on dSprites: γ = 10 times the discriminator's total-correlation
estimate; the discriminator has 6 hidden layers of 1000 leaky-ReLU units and its own
Adam(1e-4, b1 = 0.5, b2 = 0.9), updated in the same jitted step as the VAE (Adam 1e-4)."""

from vae_jax.experiments.beta_vae_dsprites import get_config as beta_vae_config


def get_config():
    config = beta_vae_config()
    config.objective = "factor_vae"
    config.beta = 1.0
    config.factor_gamma = 10.0
    config.discriminator_hidden = (1000,) * 6
    config.discriminator_learning_rate = 1e-4
    return config
