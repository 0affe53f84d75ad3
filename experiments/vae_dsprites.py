"""The plain VAE (β = 1) with the same architecture and training as `beta_vae_dsprites.py`: the
baseline the β-VAE is compared with on the disentanglement metrics."""

from vae_jax.experiments.beta_vae_dsprites import get_config as beta_vae_config


def get_config():
    config = beta_vae_config()
    config.objective = "vae"
    config.beta = 1.0
    return config
