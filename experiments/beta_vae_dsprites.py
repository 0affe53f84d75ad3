"""β-VAE (Higgins et al. 2017) on dSprites: β = 4, 10 latents, the paper's convolutional encoder
and decoder (four 4x4 stride-2 convolutions of 32, 32, 64, 64 channels, a 256-wide dense layer,
ReLU; mirrored by transposed convolutions), Bernoulli pixels, Adam 1e-4, batch 64, as
disentanglement_lib trains it.

disentanglement_lib trains 300k steps (26 epochs of the 737,280 images); `num_epochs` here is set
for a CPU and can be raised. Score the disentanglement metrics with

    python -m vae_jax.evaluate --workdir runs/beta_vae_dsprites
"""

from vae_jax.config import get_config as default_config


def get_config():
    config = default_config()
    config.dataset = "dsprites"
    config.eval_split = "test"
    config.model = "conv"
    config.conv_features = (32, 32, 64, 64)
    config.conv_hidden = 256
    config.activation = "relu"
    config.latents = 10
    config.objective = "beta_vae"
    config.beta = 4.0
    config.learning_rate = 1e-4
    config.batch_size = 64
    config.num_epochs = 1
    config.steps_per_call = 1000
    config.eval_batch_size = 500
    config.num_image_examples = 16
    return config
