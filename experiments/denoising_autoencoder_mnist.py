"""A denoising autoencoder (Vincent et al. 2008) on binarized MNIST: a quarter of the input pixels
set to 0, the clean image as the target; the default MLP, 10 epochs."""

from vae_jax.config import get_config as default_config


def get_config():
    config = default_config()
    config.objective = "dae"
    config.dae_corruption = "masking"
    config.dae_noise_level = 0.25
    config.num_epochs = 10
    return config
