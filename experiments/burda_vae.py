"""Burda, Grosse & Salakhutdinov (2015), "Importance Weighted Autoencoders", Appendix D: the VAE
with one stochastic layer on statically binarized MNIST.

Encoder 784-200-200-50 and decoder 50-200-200-784, tanh hidden units, Bernoulli pixels; Adam
(b1 = 0.9, b2 = 0.999, eps = 1e-4), batch 20, 3^i passes at learning rate 1e-3 * 10^(-i/7) for
i = 0..7 (3280 epochs). Published 5000-sample test NLL: 88.71 nats (VAE, k = 1).

Run, then score with the 5000-sample bound:

    python -m vae_jax.main --workdir runs/burda_vae --config=experiments/burda_vae.py
    python -m vae_jax.evaluate --workdir runs/burda_vae --iwae_samples=5000

A run can be stopped (Ctrl-C, SIGTERM) and resumed with the same command.
"""

from vae_jax.config import get_config as default_config


def get_config():
    config = default_config()
    config.hidden_sizes = (200, 200)
    config.activation = "tanh"
    config.latents = 50
    config.batch_size = 20
    config.learning_rate = 1e-3
    config.lr_schedule = "burda"
    config.adam_eps = 1e-4
    config.num_epochs = 3280  # sum of 3^i for i = 0..7
    config.checkpoint_every_epochs = 5
    config.images_every_epochs = 100
    config.max_to_keep = 2
    config.steps_per_call = 0  # a whole epoch (2500 steps) per compiled call
    config.progress_bar = False
    return config
