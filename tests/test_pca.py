"""The PCA baseline's subspace from eigh of the scatter matrix equals the SVD's (estimators.py)."""

import numpy as np
import pytest

from vae_jax import estimators


def _data(examples, pixels, seed=0):
    rng = np.random.default_rng(seed)
    scales = np.geomspace(10.0, 0.1, pixels)  # a clear spectrum: distinct leading directions
    mixing = np.linalg.qr(rng.normal(size=(pixels, pixels)))[0]
    return (rng.normal(size=(examples, pixels)) * scales) @ mixing.T + 3.0


@pytest.mark.parametrize("examples, pixels", [(2000, 64), (40, 64)])  # eigh, and SVD (N < D)
def test_the_pca_subspace_and_error_equal_the_svds(examples, pixels):
    train, held_out = _data(examples, pixels), _data(500, pixels, seed=1)
    mean, basis = estimators.pca_basis(train, 5)
    _, _, right = np.linalg.svd(train - train.mean(0), full_matrices=False)
    reference = right[:5].T
    assert basis.shape == (pixels, 5)
    np.testing.assert_allclose(mean, train.mean(0))
    np.testing.assert_allclose(basis @ basis.T, reference @ reference.T, atol=1e-9)
    centred = held_out - mean
    svd_error = np.mean(np.sum((centred - centred @ reference @ reference.T) ** 2, axis=1))
    error = estimators.pca_squared_error(train, held_out, 5)
    assert error == pytest.approx(svd_error, rel=1e-10)
    # Fewer components reconstruct worse: the basis is ordered by variance.
    assert estimators.pca_squared_error(train, held_out, 2) > error
