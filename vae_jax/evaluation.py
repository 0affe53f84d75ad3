"""Device-side evaluation: the inputs of an evaluation example, the evaluation scan over a whole
split, and the programs that draw each epoch's pictures.

Example i of a split always gets the key fold_in(EVAL stream, i), so a figure does not depend on
the evaluation batch size, the device count or the epoch it is measured in.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import drawing, models, objectives, parallel, rng
from vae_jax.errors import ConfigError
from vae_jax.step import records_to_float, to_float

__all__ = [
    "eval_inputs",
    "make_evaluate",
    "make_split_evaluate",
    "check_extra_metrics",
    "make_pictures",
    "pad_to_multiple",
    "EpochPictures",
]


def eval_inputs(records, indices, key, render=None, binarize: bool = False):
    """(float inputs, per-example keys) of evaluation examples `indices`.

    Example i's key is fold_in(key, i); with `binarize` (dynamically binarized training) its
    pixels are one fixed Bernoulli draw from fold_in(that key, 1), the same every epoch and for
    any batch size, so every evaluation scores the same binary data.
    """
    example_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)
    x = records_to_float(records, render)
    if binarize:
        binarize_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(example_keys, 1)
        x = jax.vmap(jax.random.bernoulli)(binarize_keys, x).astype(jnp.float32)
    return x, example_keys


def make_evaluate(
    model: models.VAE,
    batch_size: int,
    num_examples: int,
    render: Callable | None = None,
    binarize: bool = False,
    batch_sharding=None,
    variational: bool = True,
    extra_metrics: Mapping[str, Callable] | None = None,
):
    """Mean single-sample ELBO terms over a whole split: `evaluate(params, images, key) -> dict`.

    For a non-`variational` model (an autoencoder) the only term is the reconstruction loss
    from the encoder's mean (`objectives.deterministic_terms`). `extra_metrics` maps names to
    per-example metrics `fn(model, params, x, keys) -> (B,)` (see `check_extra_metrics`),
    averaged over the split in the same scan.

    `images` is the split padded to a multiple of `batch_size` (see `pad_to_multiple`); the first
    `num_examples` count. Example i's draws come from fold_in(key, i), so the figures do not
    depend on the evaluation batch size. With `binarize` (for dynamically binarized training),
    each grayscale example is scored as one fixed Bernoulli draw of its pixels, the same every
    epoch, so the figure is a log-likelihood bound of binary data rather than a cross-entropy.
    """

    terms_fn = objectives.elbo_terms if variational else objectives.deterministic_terms
    extra_metrics = dict(extra_metrics or {})
    names = (*(("elbo", "kl", "recon") if variational else ("recon",)), *extra_metrics)

    def evaluate(params, images: jax.Array, key: jax.Array) -> dict:
        num_batches = images.shape[0] // batch_size
        batches = images.reshape((num_batches, batch_size, *images.shape[1:]))

        def body(totals, batch_index):
            indices = batch_index * batch_size + jnp.arange(batch_size)
            batch = batches[batch_index]
            if batch_sharding is not None:
                batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
            x, example_keys = eval_inputs(batch, indices, key, render, binarize)
            terms = terms_fn(model, params, x, example_keys)
            for name, fn in extra_metrics.items():
                terms[name] = jnp.reshape(fn(model, params, x, example_keys), (batch_size,))
            weight = (indices < num_examples).astype(jnp.float32)
            return {k: totals[k] + jnp.sum(weight * terms[k]) for k in totals}, None

        zeros = {k: jnp.zeros((), jnp.float32) for k in names}
        totals, _ = jax.lax.scan(body, zeros, jnp.arange(num_batches))
        return {k: v / num_examples for k, v in totals.items()}

    return evaluate


def check_extra_metrics(extra_metrics, model, image_shape, latents: int, variational: bool):
    """Refuses, before anything compiles, evaluation metrics that would not fold into the scan.

    Each is `fn(model, params, x, keys) -> (B,)`: x a (B, H, W, C) float batch in [0, 1], keys
    the B examples' typed keys (the same every epoch), one value per example (the record holds
    the split's mean as `test_<name>`). Traced once on abstract inputs (`jax.eval_shape`).

    Raises:
      ConfigError: a name that is not an identifier or is one of the built-in figures, or a
        function that does not give one value per example.
    """
    taken = ("elbo", "kl", "recon") if variational else ("recon",)
    batch = 2
    key = jax.random.key(0)
    x = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
    params = jax.eval_shape(
        lambda x: model.init(key, x, jnp.zeros((batch, latents), jnp.float32)), x
    )
    keys = jax.random.split(key, batch)
    for name, fn in dict(extra_metrics or {}).items():
        if not (isinstance(name, str) and name.isidentifier()) or name in taken:
            raise ConfigError(
                f"eval_metrics name {name!r} must be an identifier other than "
                f"{', '.join(repr(t) for t in taken)} (the built-in figures)."
            )
        shape = jax.eval_shape(lambda p, x: fn(model, p, x, keys), params, x).shape
        if tuple(shape) not in ((batch,), (batch, 1)):
            raise ConfigError(
                f"eval_metrics[{name!r}] returned shape {tuple(shape)} for a batch of {batch}; "
                "it must give one value per example, shape (B,)."
            )


def make_split_evaluate(
    config, model, render, eval_records: np.ndarray, mesh, shard_batches=True, extra_metrics=None
):
    """The per-epoch evaluation of a run: `(evaluate, records on the device)`, with evaluate as
    in `make_evaluate` and the records padded to its batch size and copied to every device.

    With `shard_batches`, each evaluation batch is split over the mesh's 'data' axis (all its
    devices for a run's 1-D mesh; a member group's for a population's, whose vmap adds the
    'members' axis), so its size is rounded up to a multiple of that axis's size."""
    devices = mesh.shape[parallel.DATA_AXIS] if shard_batches else 1
    batch_size = -(-min(config.eval_batch_size, len(eval_records)) // devices) * devices
    evaluate = make_evaluate(
        model,
        batch_size,
        len(eval_records),
        render,
        binarize=config.dynamic_binarization,
        batch_sharding=parallel.batch_sharding(mesh) if shard_batches else None,
        variational=objectives.is_variational(config.objective),
        extra_metrics=extra_metrics,
    )
    return evaluate, parallel.put_replicated(pad_to_multiple(eval_records, batch_size), mesh)


def make_pictures(model: models.VAE, num_samples: int):
    """`pictures(params, images, key) -> (reconstructions, samples, latent means)`.

    Reconstructions and samples are E[x|z] in [0, 1]; the latent means are the encoder's means
    of the images, for a scatter plot coloured by label.

    Reconstructions decode the posterior mean of each image; samples decode z ~ N(0, I) drawn
    from `key`, the same every epoch so that grids are comparable across epochs.
    """

    def pictures(params, images: jax.Array, key: jax.Array):
        mean, _ = model.apply(params, to_float(images), method="encode")
        reconstructions = objectives.likelihood_mean(*model.apply(params, mean, method="decode"))
        z = jax.random.normal(key, (num_samples, mean.shape[-1]))
        samples = objectives.likelihood_mean(*model.apply(params, z, method="decode"))
        return reconstructions, samples, mean

    return pictures


def pad_to_multiple(images: np.ndarray, multiple: int) -> np.ndarray:
    padding = (-images.shape[0]) % multiple
    if padding == 0:
        return images
    return np.concatenate([images, np.zeros((padding, *images.shape[1:]), images.dtype)])


class EpochPictures:
    """The PNG grids of every epoch, and the latent scatter when the split has labels."""

    def __init__(self, config, model, dataset, eval_records, root_key):
        count = min(config.num_image_examples, len(eval_records))
        # Evenly spaced over the split: binarized MNIST's test split is sorted by digit.
        self.indices = np.linspace(0, len(eval_records) - 1, count).astype(int)
        records = eval_records[self.indices]
        render = dataset.render
        self.inputs = np.asarray(records if render is None else jax.jit(render)(records))
        labels = dataset.labels.get(config.eval_split)
        self.labels = None if labels is None else labels[self.indices]
        self.enabled = count > 0
        self.draw = jax.jit(make_pictures(model, count))
        self.key = rng.stream_key(root_key, rng.PICTURES_STREAM)

    def save(self, images_dir: str, epoch: int, params, write: bool = True) -> None:
        """Draws the grids (every process takes part: the parameters span all of them) and,
        if `write`, saves them."""
        if not self.enabled:
            return
        reconstructions, samples, means = jax.device_get(self.draw(params, self.inputs, self.key))
        if not write:
            return
        drawing.save_reconstructions(
            os.path.join(images_dir, f"reconstructions_epoch_{epoch:03d}.png"),
            self.inputs.astype(np.float32) / 255.0,
            reconstructions,
        )
        drawing.save_samples(os.path.join(images_dir, f"samples_epoch_{epoch:03d}.png"), samples)
        if self.labels is not None:
            drawing.save_latent_scatter(
                os.path.join(images_dir, f"latents_epoch_{epoch:03d}.png"), means, self.labels
            )
