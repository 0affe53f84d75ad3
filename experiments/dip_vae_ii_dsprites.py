"""DIP-VAE-II (Kumar et al. 2018) on dSprites: λ_od = 10 and λ_d = λ_od, on the β-VAE experiment's
convolutional encoder and decoder, batch and optimizer (experiments/beta_vae_dsprites.py), so
the two compare on the disentanglement metrics. Score them with

    python -m vae_jax.evaluate --workdir runs/dip_vae_ii_dsprites
"""

from vae_jax.experiments.beta_vae_dsprites import get_config as beta_vae_config


def get_config():
    config = beta_vae_config()
    config.objective = "dip_vae_ii"
    config.beta = 1.0
    config.dip_ii_lambda_od = 10.0
    config.dip_ii_lambda_d_factor = 1.0
    return config
