"""A convolutional VAE on statically binarized MNIST: two stride-2 4x4 convolutions (32, 64
channels, leaky ReLU) to a 256-wide dense layer and 20 latents, mirrored by transposed
convolutions."""

from vae_jax.config import get_config as default_config


def get_config():
    config = default_config()
    config.model = "conv"
    config.conv_features = (32, 64)
    config.conv_hidden = 256
    config.activation = "leaky_relu"
    return config
