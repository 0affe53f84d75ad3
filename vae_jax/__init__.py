"""vae_jax: fast, functional variational autoencoders in JAX/Flax."""

__version__ = "0.1.0"
