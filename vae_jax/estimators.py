"""The estimators `python -m vae_jax.evaluate` reports, as functions of a model's parameters and
a split's records: the importance-weighted bound, the reconstruction errors, the PCA baseline,
and dSprites' factor source for the disentanglement scores.

Every figure is per example, in nats (log-densities summed over pixels) or, for the squared
errors, summed over pixels.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import disentanglement, evaluation, objectives, progress
from vae_jax.step import to_float

__all__ = [
    "batches",
    "float_batches",
    "float_images",
    "importance_weighted_nll",
    "reconstruction_errors",
    "pca_basis",
    "pca_squared_error",
    "dsprites_factor_source",
]


def batches(count: int, batch_size: int):
    """(start, stop) of consecutive batches covering `count` examples, the last one short."""
    for start in range(0, count, batch_size):
        yield start, min(start + batch_size, count)


def float_batches(records, dataset, start, stop, key, binarize):
    """Float inputs of examples [start, stop): rendered and, for dynamically binarized training,
    the same fixed Bernoulli draw per example that training's evaluation scores."""
    return evaluation.eval_inputs(
        jnp.asarray(records[start:stop]), jnp.arange(start, stop), key, dataset.render, binarize
    )


def importance_weighted_nll(model, params, records, dataset, key, config, num_samples, batch_size):
    """Per-example k-sample bounds over the split -> (mean -bound, its standard error)."""
    chunk_size = min(num_samples, 128)

    @jax.jit
    def bounds_of(params, records_batch, start, key):
        indices = start + jnp.arange(records_batch.shape[0])
        x, _ = evaluation.eval_inputs(
            records_batch, indices, key, dataset.render, config.dynamic_binarization
        )
        sample_key = jax.random.fold_in(jax.random.fold_in(key, 2), start)
        return objectives.importance_weighted_bound(
            model, params, x, sample_key, num_samples, chunk_size
        )

    padded = evaluation.pad_to_multiple(records, batch_size)
    values = []
    with progress.Phase(f"IWAE bound, k = {num_samples}", len(records)) as phase:
        for start, stop in batches(len(records), batch_size):
            bound = bounds_of(params, jnp.asarray(padded[start : start + batch_size]), start, key)
            values.append(np.asarray(bound)[: stop - start])
            phase.update(stop - start)
    bounds = np.concatenate(values).astype(np.float64)
    return float(-bounds.mean()), float(bounds.std(ddof=1) / math.sqrt(len(bounds)))


def reconstruction_errors(model, params, records, dataset, key, binarize, batch_size):
    """Mean over examples of -log p(x | z = posterior mean) and of the squared error of E[x|z]."""

    @jax.jit
    def errors_of(params, x):
        mean, _ = model.apply(params, x, method="encode")
        location, log_scale = model.apply(params, mean, method="decode")
        nats = -objectives.log_likelihood(x, location, log_scale)
        squared = jnp.sum((objectives.likelihood_mean(location, log_scale) - x) ** 2, (1, 2, 3))
        return nats, squared

    nats, squared = [], []
    with progress.Phase("reconstruction errors", len(records)) as phase:
        for start, stop in batches(len(records), batch_size):
            x, _ = float_batches(records, dataset, start, stop, key, binarize)
            batch_nats, batch_squared = errors_of(params, x)
            nats.append(np.asarray(batch_nats))
            squared.append(np.asarray(batch_squared))
            phase.update(stop - start)
    return float(np.concatenate(nats).mean()), float(np.concatenate(squared).mean())


def pca_basis(train_images: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray]:
    r"""The training mean μ (D,) and the leading `components` eigenvectors V (D, components) of
    the training covariance, from `eigh` of the D × D scatter matrix

    .. math::
        S = (X - \mu)^\top (X - \mu), \qquad S V = V \Lambda,

    in float64. For N ≫ D (20,000 × 784) forming S costs N·D² and its eigendecomposition D³,
    far less than the SVD of the N × D matrix; the subspace is the SVD's right singular
    vectors' (tested against it). With fewer examples than pixels the SVD is the cheaper one.
    """
    flat = train_images.reshape((len(train_images), -1)).astype(np.float64)
    mean = flat.mean(axis=0)
    centred = flat - mean
    if len(flat) < flat.shape[1]:
        _, _, right_vectors = np.linalg.svd(centred, full_matrices=False)
        return mean, right_vectors[:components].T
    _, vectors = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    return mean, vectors[:, ::-1][:, :components]


def pca_squared_error(train_images: np.ndarray, eval_images: np.ndarray, components: int):
    r"""Squared error per example (summed over pixels) of the best rank-`components` affine
    reconstruction, fitted on `train_images`:

    .. math::
        \hat x = \mu + V V^\top (x - \mu)

    with V the leading eigenvectors of the training covariance (`pca_basis`). A linear
    autoencoder with as many units as the VAE has latents: the baseline a nonlinear model should
    beat.
    """
    mean, basis = pca_basis(train_images, components)
    flat_eval = eval_images.reshape((len(eval_images), -1)).astype(np.float64) - mean
    residual = flat_eval - (flat_eval @ basis) @ basis.T
    return float(np.mean(np.sum(residual**2, axis=1)))


def float_images(records, dataset, count: int, batch_size: int = 1000) -> np.ndarray:
    render = jax.jit(dataset.render) if dataset.render is not None else None
    parts = []
    for start, stop in batches(count, batch_size):
        batch = records[start:stop]
        parts.append(np.asarray(batch if render is None else render(jnp.asarray(batch))))
    return np.concatenate(parts).astype(np.float32) / 255.0


def dsprites_factor_source(model, params, dataset) -> disentanglement.FactorSource:
    """dSprites' factors, and the code of a factor vector: the encoder's mean of its image."""
    from vae_jax.data import dsprites

    @jax.jit
    def represent(factors):
        images = to_float(dataset.render(factors))
        return model.apply(params, images, method="encode")[0]

    return disentanglement.FactorSource(
        sizes=tuple(dsprites.FACTOR_SIZES),
        names=tuple(dsprites.FACTOR_NAMES),
        represent=lambda factors: np.asarray(represent(jnp.asarray(factors, jnp.int32))),
    )
