"""Burda et al. (2015), Appendix D: the IWAE with k = 50 and one stochastic layer on statically
binarized MNIST, with the same architecture and schedule as `burda_vae.py`. Published 5000-sample
test NLL: 87.10 nats.

    python -m vae_jax.main --workdir runs/burda_iwae_k50 --config=experiments/burda_iwae_k50.py
    python -m vae_jax.evaluate --workdir runs/burda_iwae_k50 --iwae_samples=5000
"""

from vae_jax.experiments.burda_vae import get_config as burda_vae_config


def get_config():
    config = burda_vae_config()
    config.objective = "iwae"
    config.iwae_samples = 50
    return config
