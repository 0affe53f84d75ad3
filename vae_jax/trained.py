"""`load(workdir)`: a trained model, ready to encode, decode, sample and reconstruct.

Restores the parameters alone (no optimizer, no objective) from the newest readable checkpoint,
with the config the workdir was trained with and the image shape it recorded in run.json
(older workdirs: the data set's shape). Every method is jitted once per input shape.

Units: images go in as the data set stores them, uint8 0..255 with shape (B, H, W, C), or as
floats in [0, 1]; pixels come out as the likelihood's means E[x|z] in [0, 1] (Bernoulli
probabilities, or Gaussian means).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vae_jax import checkpoint, data, models, objectives
from vae_jax import workdir as workdir_lib
from vae_jax.config import member_config
from vae_jax.errors import ConfigError, DataError

__all__ = ["TrainedModel", "load", "as_float_images"]


def as_float_images(x, image_shape) -> jax.Array:
    """uint8 0..255 or float [0, 1] images (B, H, W, C) -> float32 in [0, 1].

    Raises:
      DataError: another shape, dtype, or floats outside [0, 1] (such as 0..255 as floats, which
        would otherwise be read as nearly white).
    """
    x = jnp.asarray(x)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(image_shape):
        raise DataError(
            f"images of shape {tuple(x.shape)} given; this model takes (B, "
            f"{', '.join(str(n) for n in image_shape)}) (batch, height, width, channels)."
        )
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) * (1.0 / 255.0)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise DataError(f"images of dtype {x.dtype} given; give uint8 0..255 or floats in [0, 1].")
    low, high = (float(v) for v in jax.device_get((jnp.min(x), jnp.max(x))))  # one round trip
    if low < 0.0 or high > 1.0:
        raise DataError(
            f"float images must lie in [0, 1]; these span [{low:g}, {high:g}] (divide 0..255 "
            "pixels by 255, or pass them as uint8)."
        )
    return x.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A trained VAE's parameters with the programs that use them.

    Attributes:
      config: the config it was trained with (a member's, for a population member).
      params: the model's variables.
      image_shape: (H, W, C) of its images.
      step: the training step of the checkpoint the parameters come from.
      model: the `models.VAE` module.
    """

    config: ml_collections.ConfigDict
    params: Any
    image_shape: tuple[int, int, int]
    step: int
    model: models.VAE

    def __post_init__(self):
        model = self.model

        def encode(params, x):
            return model.apply(params, x, method="encode")

        def decode(params, z):
            return objectives.likelihood_mean(*model.apply(params, z, method="decode"))

        def sample(params, key, n):
            return decode(params, jax.random.normal(key, (n, self.config.latents)))

        def reconstruct(params, x):
            return decode(params, encode(params, x)[0])

        programs = {
            "_encode": jax.jit(encode),
            "_decode": jax.jit(decode),
            "_sample": jax.jit(sample, static_argnums=2),
            "_reconstruct": jax.jit(reconstruct),
        }
        for name, program in programs.items():
            object.__setattr__(self, name, self._at_precision(program))

    def _at_precision(self, program):
        """`program` traced at the precision the model was trained with (`matmul_precision`)."""

        def call(*args):
            with models.matmul_precision(self.config):
                return program(*args)

        return call

    def encode(self, x) -> tuple[jax.Array, jax.Array]:
        """Images (B, H, W, C) -> (mean, log_variance) of q(z|x), each (B, latents)."""
        return self._encode(self.params, as_float_images(x, self.image_shape))

    def decode(self, z) -> jax.Array:
        """Latents (B, latents) -> pixel means E[x|z], (B, H, W, C) in [0, 1]."""
        z = jnp.asarray(z, jnp.float32)
        if z.ndim != 2 or z.shape[1] != self.config.latents:
            raise DataError(
                f"latents of shape {tuple(z.shape)} given; this model takes (B, "
                f"{self.config.latents})."
            )
        return self._decode(self.params, z)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """n draws z ~ N(0, I) decoded: (n, H, W, C) pixel means in [0, 1]."""
        if not (isinstance(n, int) and n >= 1):
            raise ConfigError(f"n={n!r} samples asked for; give an integer >= 1.")
        return self._sample(self.params, key, n)

    def reconstruct(self, x) -> jax.Array:
        """Images (B, H, W, C) -> the decoded posterior means, (B, H, W, C) in [0, 1]."""
        return self._reconstruct(self.params, as_float_images(x, self.image_shape))


def _image_shape(workdir: str, config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """From run.json; a workdir older than run.json: from the data set itself."""
    recorded = workdir_lib.read_run_info(workdir).get("image_shape")
    if recorded:
        return tuple(int(n) for n in recorded)
    return tuple(data.dataset_for(config).image_shape)


def load(workdir: str, member: int | None = None) -> TrainedModel:
    """The model trained in `workdir`, from its newest readable checkpoint.

    Args:
      workdir: a workdir written by `train_and_evaluate` or `train_population` (or
        `python -m vae_jax.main`).
      member: for a population's workdir, which member (0 <= member < population_size).

    Returns:
      A `TrainedModel`.

    Raises:
      WorkdirError: not a workdir, or no readable checkpoint.
      ConfigError: a population without `member`, or a member that is not in it.
    """
    workdir = os.path.abspath(workdir)
    config = workdir_lib.load_workdir_config(workdir)
    size = config.population_size
    if size > 1 and member is None:
        raise ConfigError(
            f"{workdir!r} holds a population of {size} models; say which: load(workdir, member=k) "
            f"with k in 0..{size - 1}."
        )
    if size == 1 and member not in (None, 0):
        raise ConfigError(f"member={member!r} given, but {workdir!r} holds a single model.")
    image_shape = _image_shape(workdir, config)
    model = models.build_model(config, image_shape)
    abstract = jax.eval_shape(
        model.init,
        jax.random.key(0),
        jnp.zeros((1, *image_shape), jnp.float32),
        jnp.zeros((1, config.latents), jnp.float32),
    )
    if size > 1:
        config = member_config(config, member)
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct((size, *a.shape), a.dtype), abstract)
    params, step = checkpoint.restore_params(os.path.join(workdir, "checkpoints"), abstract)
    if size > 1:
        params = jax.tree.map(lambda leaf: leaf[member], params)
    return TrainedModel(
        config=config, params=params, image_shape=image_shape, step=step, model=model
    )
