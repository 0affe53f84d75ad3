"""DIP-VAE-I (Kumar et al. 2018) on dSprites: λ_od = 10 and λ_d = 10 λ_od, on the β-VAE experiment's
convolutional encoder and decoder, batch and optimizer (experiments/beta_vae_dsprites.py), so
the two compare on the disentanglement metrics. Score them with

    python -m vae_jax.evaluate --workdir runs/dip_vae_i_dsprites
"""

from vae_jax.experiments.beta_vae_dsprites import get_config as beta_vae_config


def get_config():
    config = beta_vae_config()
    config.objective = "dip_vae_i"
    config.beta = 1.0
    config.dip_i_lambda_od = 10.0
    config.dip_i_lambda_d_factor = 10.0
    return config
