"""β-TCVAE (Chen et al. 2018) on dSprites: the total correlation weighted by β = 6 (the KL's other
two parts by 1), estimated on each batch, with the architecture of `beta_vae_dsprites.py`."""

from vae_jax.experiments.beta_vae_dsprites import get_config as beta_vae_config


def get_config():
    config = beta_vae_config()
    config.objective = "beta_tcvae"
    config.beta = 6.0
    return config
