"""Burgess et al. (2018), "Understanding disentangling in β-VAE": recon + γ |KL - C| with
γ = 1000 and the capacity C rising linearly from 0 to 25 nats over 100k training steps, on
dSprites with the β-VAE architecture of `beta_vae_dsprites.py`."""

from vae_jax.experiments.beta_vae_dsprites import get_config as beta_vae_config


def get_config():
    config = beta_vae_config()
    config.objective = "annealed_vae"
    config.beta = 1.0
    config.capacity_gamma = 1000.0
    config.capacity_max = 25.0
    config.capacity_steps = 100_000
    return config
