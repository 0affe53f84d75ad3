"""InfoVAE-MMD (Zhao et al. 2017) on dSprites: α = 0, λ = 1000 and the IMQ kernel, on the β-VAE experiment's
convolutional encoder and decoder, batch and optimizer (experiments/beta_vae_dsprites.py), so
the two compare on the disentanglement metrics. Score them with

    python -m vae_jax.evaluate --workdir runs/info_vae_dsprites
"""

from vae_jax.experiments.beta_vae_dsprites import get_config as beta_vae_config


def get_config():
    config = beta_vae_config()
    config.objective = "info_vae"
    config.beta = 1.0
    config.infovae_lambda = 1000.0
    config.infovae_kernel = "imq"
    return config
