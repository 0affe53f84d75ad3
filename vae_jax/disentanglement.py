r"""Disentanglement metrics for data with discrete ground-truth factors, as in disentanglement_lib.

A `FactorSource` describes the data: the number of values of each factor (dSprites: shape 3,
scale 6, orientation 40, position_x 32, position_y 32) and `represent`, which maps a batch of
factor-index vectors to codes (for a VAE: the encoder means of the rendered images). Factors are
drawn uniformly and independently. Every metric takes a `numpy.random.Generator`, so a seed
reproduces it exactly. The procedures and defaults are those of disentanglement_lib (Locatello et
al. 2019, "Challenging common assumptions in the unsupervised learning of disentangled
representations"):

BetaVAE score (Higgins et al. 2017). One point: draw a factor k uniformly; draw `batch_size`
pairs of factor vectors that share the value of factor k (a fresh value per pair; all other
factors independent); the feature is the mean over the pairs of |code(a) - code(b)|, a
D-vector, and the label is k. A multinomial logistic regression (L2, C = 1, as scikit-learn's
default `LogisticRegression`) is fitted on `num_train` points; the score is its accuracy on
`num_eval` fresh points. A code that keeps factor k in its own dimensions has a zero there.

FactorVAE score (Kim & Mnih 2018). The variance of each code dimension is estimated on
`num_variance_estimate` random points; dimensions with variance <= 1e-12 are inactive. One vote:
draw a factor k uniformly, fix it to one random value for a batch of `batch_size` points (the
other factors random), divide the codes by the global standard deviations and vote (argmin over
active dimensions of the batch variance, k). The classifier maps each dimension to the factor
with most training votes; the score is its accuracy on `num_eval` fresh votes.

MIG, the mutual information gap (Chen et al. 2018). On `num_train` random points each code
dimension is cut into `num_bins` equal-width bins between its minimum and maximum; I(z_j; v_k) is
the discrete mutual information of the binned code and the factor, H(v_k) the entropy of the
sampled factor. The score is the mean over factors of
(largest - second largest over j of I(z_j; v_k)) / H(v_k).

All three reward axis alignment: a code that holds each factor in its own dimension scores about
1 and a code independent of the factors scores at chance (1/K for the two classifiers, 0 for
MIG). A rotation of the aligned code scores lower on MIG, and on FactorVAE when two factors have
the same dimension of largest loading (the argmin vote only asks for a distinct dimension each);
BetaVAE's linear classifier often still separates it.

Where this differs from disentanglement_lib, on purpose:

- Inactive dimensions (FactorVAE): dlib's `_prune_dims` keeps dims with sqrt(variance) >= 0, i.e.
  all of them; a constant dim then gives 0/0 = NaN, which `np.argmin` returns, so every vote
  would go to it. Here variance <= 1e-12 is inactive. dlib also indexes its vote table with the
  position among active dims and reports the total number of dims as `num_active_dims`; here
  votes are counted at the real dim and `num_active_dims` counts active dims.
- The BetaVAE classifier is this module's own multinomial logistic regression (L-BFGS in float32
  to max |gradient| < 1e-5), the objective of scikit-learn >= 0.22's default `LogisticRegression`
  (lbfgs, multinomial, unpenalised intercept); scikit-learn < 0.22, current when dlib was
  written, defaulted to liblinear one-vs-rest with a penalised intercept.
- Draws are vectorised with a `numpy.random.Generator`: the same distributions as dlib's
  per-point `RandomState` loop, not the same random numbers.
- MIG leaves a factor whose sample is constant (H = 0) out of the mean instead of dividing by 0,
  and with a single code dim takes the second largest information as 0.

`represent` is called with at most `REPRESENT_CHUNK_ROWS` rows at a time, and within one phase of
a metric always with the same number of rows (the last chunk is padded by repeating its last row),
so a jitted encoder compiles once. `evaluate_all` runs the three metrics with their defaults.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from vae_jax import progress

# `represent` gets at most this many factor rows per call.
REPRESENT_CHUNK_ROWS = 2048
# The logistic regression pads its rows to a power of two, at least this many.
_MIN_FIT_ROWS = 1024
# A code dimension whose variance is at most this is inactive (FactorVAE score, MIG's report).
VARIANCE_THRESHOLD = 1e-12


class FactorSource(NamedTuple):
    """A data set with discrete ground-truth factors, and a code for each factor vector.

    Attributes:
      sizes: number of values of each of the K factors; factor k takes values 0 .. sizes[k] - 1.
      names: the K factor names, used as keys of the per-factor results.
      represent: (n, K) int factor indices -> (n, D) float codes (e.g. the encoder means of the
        rendered images); called with batches of at most `REPRESENT_CHUNK_ROWS` rows.
    """

    sizes: tuple[int, ...]
    names: tuple[str, ...]
    represent: Callable[[np.ndarray], np.ndarray]


class LogisticRegressionFit(NamedTuple):
    """A fitted multinomial logistic regression: logits = x @ weights + bias.

    Attributes:
      weights: (D, C) float64 weights.
      bias: (C,) float64 intercepts.
      iterations: L-BFGS iterations taken.
      gradient_max: max |gradient| of the normalised objective at the returned parameters.
      converged: whether gradient_max fell below the tolerance within the iteration budget.
    """

    weights: np.ndarray
    bias: np.ndarray
    iterations: int
    gradient_max: float
    converged: bool


# --------------------------------------------------------------------------------------------
# Sampling and representing factors.


def sample_factors(rng: np.random.Generator, sizes: Sequence[int], n: int) -> np.ndarray:
    """n factor vectors, each factor uniform over its values and independent of the others.

    Args:
      rng: the random generator.
      sizes: number of values of each of the K factors.
      n: number of vectors.

    Returns:
      (n, K) int64 indices, column k in [0, sizes[k]).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    return rng.integers(0, sizes, size=(n, sizes.size), dtype=np.int64)


def _represent_chunks(
    source: FactorSource, factors: np.ndarray, chunk_rows: int = REPRESENT_CHUNK_ROWS
) -> Iterator[np.ndarray]:
    """Yields the float64 codes of consecutive chunks of `factors` (n, K), in order.

    Every call of `source.represent` gets min(n, chunk_rows) rows: a short last chunk is padded
    by repeating its last row, and the codes of the padding are dropped.
    """
    n = len(factors)
    size = min(n, chunk_rows)
    dim = None
    for start in range(0, n, size):
        piece = factors[start : start + size]
        rows = len(piece)
        if rows < size:
            piece = np.concatenate([piece, np.repeat(piece[-1:], size - rows, axis=0)])
        codes = np.asarray(source.represent(piece), dtype=np.float64)
        if codes.ndim != 2 or codes.shape[0] != size:
            raise ValueError(
                f"represent must map ({size}, K) factors to ({size}, D) codes; "
                f"it returned shape {codes.shape}"
            )
        if dim is not None and codes.shape[1] != dim:
            raise ValueError(f"represent returned {codes.shape[1]} code dims after {dim}")
        dim = codes.shape[1]
        if not np.all(np.isfinite(codes)):
            raise ValueError("represent returned non-finite codes (NaN or inf)")
        yield codes[:rows]


def _represent(source: FactorSource, factors: np.ndarray) -> np.ndarray:
    """(n, K) factors -> (n, D) float64 codes, computed in chunks."""
    return np.concatenate(list(_represent_chunks(source, factors)))


def _reduce_groups(
    source: FactorSource,
    factors: np.ndarray,
    reduce: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Represents (G, R, K) factors in chunks and reduces each group of R codes as it comes.

    Args:
      source: the factor source.
      factors: (G, R, K) factor indices: G groups of R rows each.
      reduce: (m, R, D) codes -> (m, ...) per-group results.

    Returns:
      (G, ...) the results of all groups; only about one chunk of codes is held at a time.
    """
    num_groups, group_rows, num_factors = factors.shape
    results, pending, pending_rows = [], [], 0
    for codes in _represent_chunks(source, factors.reshape(num_groups * group_rows, num_factors)):
        pending.append(codes)
        pending_rows += len(codes)
        whole = pending_rows // group_rows
        if whole:
            block = pending[0] if len(pending) == 1 else np.concatenate(pending)
            cut = whole * group_rows
            results.append(reduce(block[:cut].reshape(whole, group_rows, block.shape[1])))
            pending, pending_rows = [block[cut:]], pending_rows - cut
    return np.concatenate(results)


# --------------------------------------------------------------------------------------------
# Multinomial logistic regression (the BetaVAE score's classifier).


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iterations"))
def _fit_lbfgs(x, labels, row_weights, l2, tolerance, *, num_classes, max_iterations):
    """L-BFGS on the normalised objective of `logistic_regression_fit`; see there.

    Rows with weight 0 are padding (they let one compiled program serve many sizes n); the
    others have weight 1 / n.
    """
    onehot = jax.nn.one_hot(labels, num_classes, dtype=x.dtype)

    def objective(params):
        weights, bias = params
        log_probs = jax.nn.log_softmax(x @ weights + bias)
        cross_entropy = -jnp.sum(row_weights * jnp.sum(onehot * log_probs, axis=-1))
        return cross_entropy + 0.5 * l2 * jnp.sum(weights**2)

    def gradient_max(grad):
        return jnp.maximum(jnp.max(jnp.abs(grad[0])), jnp.max(jnp.abs(grad[1])))

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(
            grad, state, params, value=value, grad=grad, value_fn=objective
        )
        return optax.apply_updates(params, updates), state

    def keep_going(carry):
        _, state = carry
        count = optax.tree.get(state, "count")
        error = gradient_max(optax.tree.get(state, "grad"))
        return (count == 0) | ((count < max_iterations) & (error >= tolerance))

    params = (
        jnp.zeros((x.shape[1], num_classes), x.dtype),
        jnp.zeros((num_classes,), x.dtype),
    )
    params, state = jax.lax.while_loop(keep_going, step, (params, solver.init(params)))
    return params, optax.tree.get(state, "count"), gradient_max(jax.grad(objective)(params))


def logistic_regression_fit(
    x: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    c: float = 1.0,
    tolerance: float = 1e-5,
    max_iterations: int = 1000,
) -> LogisticRegressionFit:
    r"""Multinomial logistic regression with an L2 penalty on the weights, not on the bias.

    Minimises, over W (D, C) and b (C,), scikit-learn's `LogisticRegression` objective

    .. math::
        \tfrac12 \|W\|_F^2 + c \sum_{i=1}^n -\log \operatorname{softmax}(x_i W + b)_{y_i}

    in the equivalent form divided by c n (mean cross-entropy + ||W||^2 / (2 c n)), with
    L-BFGS (`optax.lbfgs`, zoom line search) from zero until max |gradient| < `tolerance`.
    Runs on the CPU in float32, so it is deterministic and its result does not depend on the
    accelerator; n is padded with zero-weight rows to a power of two, so that one compilation
    serves many sizes.

    Args:
      x: (n, D) features.
      labels: (n,) int classes in [0, num_classes).
      num_classes: number of classes C (a class absent from `labels` is never favoured).
      c: inverse regularisation strength (scikit-learn's C).
      tolerance: stop when the largest gradient entry of the normalised objective is below this.
      max_iterations: L-BFGS iteration budget.

    Returns:
      The fitted parameters and convergence information.
    """
    x = np.asarray(x)
    labels = np.asarray(labels)
    if x.ndim != 2 or labels.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(
            f"need (n, D) features and (n,) labels, n >= 1; got {x.shape}, {labels.shape}"
        )
    if c <= 0:
        raise ValueError(f"c={c} must be > 0")
    n = x.shape[0]
    rows = max(_MIN_FIT_ROWS, 1 << (n - 1).bit_length())  # n padded to a power of two
    padded_x = np.zeros((rows, x.shape[1]), np.float32)
    padded_x[:n] = x
    padded_labels = np.zeros(rows, np.int32)
    padded_labels[:n] = labels
    row_weights = np.zeros(rows, np.float32)
    row_weights[:n] = 1.0 / n
    cpu = jax.devices("cpu")[0]
    params, iterations, gradient_max = _fit_lbfgs(
        jax.device_put(padded_x, cpu),
        jax.device_put(padded_labels, cpu),
        jax.device_put(row_weights, cpu),
        jax.device_put(np.float32(1.0 / (c * n)), cpu),
        jax.device_put(np.float32(tolerance), cpu),
        num_classes=int(num_classes),
        max_iterations=int(max_iterations),
    )
    gradient_max = float(gradient_max)
    return LogisticRegressionFit(
        weights=np.asarray(params[0], dtype=np.float64),
        bias=np.asarray(params[1], dtype=np.float64),
        iterations=int(iterations),
        gradient_max=gradient_max,
        converged=gradient_max < tolerance,
    )


def logistic_regression_predict(fit: LogisticRegressionFit, x: np.ndarray) -> np.ndarray:
    r"""The most probable class, :math:`\arg\max_c (x W + b)_c`, of each row of (n, D) x."""
    return np.argmax(np.asarray(x, dtype=np.float64) @ fit.weights + fit.bias, axis=1)


# --------------------------------------------------------------------------------------------
# FactorVAE score pieces.


def active_dims(variances: np.ndarray, threshold: float = VARIANCE_THRESHOLD) -> np.ndarray:
    r"""Boolean mask of the active code dimensions: :math:`\operatorname{Var}[z_j] > threshold`."""
    return np.asarray(variances) > threshold


def majority_vote_classifier(votes: np.ndarray) -> np.ndarray:
    r"""The factor each dimension stands for: :math:`\hat k(j) = \arg\max_k N_{kj}`.

    Args:
      votes: (K, D) counts N_kj of votes (argmin dimension j for fixed factor k).

    Returns:
      (D,) factor index per dimension (the lowest on ties, 0 for a dimension without votes).
    """
    return np.argmax(votes, axis=0)


def vote_accuracy(votes: np.ndarray, classifier: np.ndarray) -> float:
    r"""Fraction of votes the classifier gets right: :math:`\sum_j N_{\hat k(j) j} / \sum N`."""
    total = votes.sum()
    if total == 0:
        return 0.0
    return float(votes[classifier, np.arange(votes.shape[1])].sum() / total)


# --------------------------------------------------------------------------------------------
# MIG pieces.


def histogram_discretize(codes: np.ndarray, num_bins: int) -> np.ndarray:
    r"""Bins each code dimension into `num_bins` equal-width bins between its min and max.

    Dimension j gets edges :math:`e_b = m_j + b (M_j - m_j) / B`, b = 0 .. B, with m_j, M_j its
    minimum and maximum over the n points; value z falls in bin b when e_b <= z < e_{b+1}, the
    maximum in the last bin (`np.histogram` edges and `np.digitize`; a constant dimension lands
    in one bin).

    Args:
      codes: (n, D) codes.
      num_bins: B.

    Returns:
      (n, D) int64 bin indices in [0, B).
    """
    codes = np.asarray(codes)
    binned = np.empty(codes.shape, dtype=np.int64)
    for j in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, j], bins=num_bins)
        binned[:, j] = np.digitize(codes[:, j], edges[:-1]) - 1
    return binned


def mutual_information_from_counts(counts: np.ndarray) -> np.ndarray:
    r"""Mutual information, in nats, of the joint distributions given by count tables.

    .. math::
        I(A; B) = \sum_{a, b} p(a, b) \log \frac{p(a, b)}{p(a) p(b)}, \qquad
        p(a, b) = N_{ab} / \textstyle\sum N

    with 0 log 0 = 0 (the plug-in estimate, as `sklearn.metrics.mutual_info_score`).

    Args:
      counts: (..., A, B) joint counts N_ab.

    Returns:
      (...) mutual informations, >= 0.
    """
    counts = np.asarray(counts, dtype=np.float64)
    joint = counts / counts.sum(axis=(-2, -1), keepdims=True)
    product = joint.sum(axis=-1, keepdims=True) * joint.sum(axis=-2, keepdims=True)
    seen = joint > 0
    ratio = np.where(seen, joint, 1.0) / np.where(seen, product, 1.0)
    return np.maximum(np.sum(joint * np.log(ratio), axis=(-2, -1)), 0.0)


def entropy_from_counts(counts: np.ndarray) -> np.ndarray:
    r"""Entropy in nats, :math:`H = -\sum_a p(a) \log p(a)` with p = N / sum N, of (..., A)."""
    counts = np.asarray(counts, dtype=np.float64)
    p = counts / counts.sum(axis=-1, keepdims=True)
    return -np.sum(p * np.log(np.where(p > 0, p, 1.0)), axis=-1)


def mutual_information_matrix(
    binned_codes: np.ndarray, factors: np.ndarray, num_bins: int, sizes: Sequence[int]
) -> np.ndarray:
    r"""I(z_j; v_k) for every binned code dimension j and factor k, from joint counts.

    Args:
      binned_codes: (n, D) bin indices in [0, num_bins).
      factors: (n, K) factor indices, column k in [0, sizes[k]).
      num_bins: number of bins of the codes.
      sizes: number of values of each factor.

    Returns:
      (D, K) mutual informations in nats.
    """
    num_dims = binned_codes.shape[1]
    matrix = np.zeros((num_dims, len(sizes)))
    dim_offsets = np.arange(num_dims) * num_bins
    for k, size in enumerate(sizes):
        cells = (dim_offsets + binned_codes) * size + factors[:, k : k + 1]
        counts = np.bincount(cells.ravel(), minlength=num_dims * num_bins * size)
        matrix[:, k] = mutual_information_from_counts(counts.reshape(num_dims, num_bins, size))
    return matrix


# --------------------------------------------------------------------------------------------
# The metrics.


def _check_source(source: FactorSource) -> tuple[tuple[int, ...], tuple[str, ...]]:
    sizes = tuple(int(s) for s in source.sizes)
    names = tuple(str(name) for name in source.names)
    if not sizes or any(s < 1 for s in sizes):
        raise ValueError(f"factor sizes {source.sizes} must be one or more integers >= 1")
    if len(names) != len(sizes):
        raise ValueError(f"{len(names)} factor names for {len(sizes)} factors")
    return sizes, names


def _check_count(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def _per_factor_accuracy(
    names: Sequence[str], labels: np.ndarray, correct: np.ndarray
) -> dict[str, float | None]:
    """Accuracy among the points of each factor (None for a factor without points)."""
    result = {}
    for k, name in enumerate(names):
        mine = labels == k
        result[name] = float(correct[mine].mean()) if mine.any() else None
    return result


def _beta_vae_points(
    source: FactorSource, rng: np.random.Generator, sizes: tuple[int, ...], batch_size: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """n (feature, label) points of the BetaVAE score: (n, D) features and (n,) labels."""
    num_factors = len(sizes)
    labels = rng.integers(num_factors, size=n)
    first = sample_factors(rng, sizes, n * batch_size).reshape(n, batch_size, num_factors)
    second = sample_factors(rng, sizes, n * batch_size).reshape(n, batch_size, num_factors)
    shared = (np.arange(num_factors) == labels[:, None])[:, None, :]
    second = np.where(shared, first, second)

    def mean_abs_difference(codes):
        return np.abs(codes[:, :batch_size] - codes[:, batch_size:]).mean(axis=1)

    features = _reduce_groups(source, np.concatenate([first, second], axis=1), mean_abs_difference)
    return features, labels


def beta_vae_score(
    source: FactorSource,
    rng: np.random.Generator,
    batch_size: int = 64,
    num_train: int = 10_000,
    num_eval: int = 5_000,
) -> dict:
    r"""The BetaVAE score (Higgins et al. 2017), disentanglement_lib's procedure.

    A point with label k ~ U{0..K-1}: pairs (a_i, b_i), i = 1..B, of factor vectors with
    a_ik = b_ik (drawn per pair) and all other factors independent; its feature is

    .. math::
        f = \frac1B \sum_{i=1}^B |z(a_i) - z(b_i)| \in \mathbb{R}^D.

    A multinomial logistic regression (`logistic_regression_fit`, C = 1) is fitted on
    `num_train` points; score = its accuracy on `num_eval` fresh points.

    Args:
      source: the factors and their code.
      rng: random generator for every draw.
      batch_size: B, pairs per point.
      num_train: training points.
      num_eval: evaluation points.

    Returns:
      Dict: score (= eval_accuracy), train_accuracy, eval_accuracy, eval_accuracy_per_factor,
      num_dims, num_active_dims (dims whose code differs within some training pair),
      logistic_regression (iterations, gradient_max, converged), the parameters and procedure.
    """
    sizes, names = _check_source(source)
    batch_size = _check_count("batch_size", batch_size)
    num_train = _check_count("num_train", num_train)
    num_eval = _check_count("num_eval", num_eval)
    train_x, train_y = _beta_vae_points(source, rng, sizes, batch_size, num_train)
    fit = logistic_regression_fit(train_x, train_y, num_classes=len(sizes), c=1.0)
    train_accuracy = float(np.mean(logistic_regression_predict(fit, train_x) == train_y))
    eval_x, eval_y = _beta_vae_points(source, rng, sizes, batch_size, num_eval)
    correct = logistic_regression_predict(fit, eval_x) == eval_y
    eval_accuracy = float(correct.mean())
    return {
        "score": eval_accuracy,
        "train_accuracy": train_accuracy,
        "eval_accuracy": eval_accuracy,
        "eval_accuracy_per_factor": _per_factor_accuracy(names, eval_y, correct),
        "num_dims": int(train_x.shape[1]),
        "num_active_dims": int(np.count_nonzero(train_x.max(axis=0) > 0)),
        "logistic_regression": {
            "iterations": fit.iterations,
            "gradient_max": fit.gradient_max,
            "converged": fit.converged,
        },
        "batch_size": batch_size,
        "num_train": num_train,
        "num_eval": num_eval,
        "procedure": (
            f"disentanglement_lib BetaVAE score: batch {batch_size}, {num_train} train / "
            f"{num_eval} eval points, multinomial logistic regression (L2, C=1)"
        ),
    }


def _factor_vae_votes(
    source: FactorSource,
    rng: np.random.Generator,
    sizes: tuple[int, ...],
    batch_size: int,
    n: int,
    scales: np.ndarray,
    active: np.ndarray,
) -> np.ndarray:
    """(K, D) vote counts of n FactorVAE votes."""
    num_factors = len(sizes)
    labels = rng.integers(num_factors, size=n)
    factors = sample_factors(rng, sizes, n * batch_size).reshape(n, batch_size, num_factors)
    fixed = (np.arange(num_factors) == labels[:, None])[:, None, :]
    factors = np.where(fixed, factors[:, :1, :], factors)
    active_index = np.flatnonzero(active)

    def argmin_dim(codes):
        local = np.var(codes[:, :, active_index] / scales[active_index], axis=1, ddof=1)
        return active_index[np.argmin(local, axis=1)]

    dims = _reduce_groups(source, factors, argmin_dim)
    num_dims = len(active)
    return np.bincount(labels * num_dims + dims, minlength=num_factors * num_dims).reshape(
        num_factors, num_dims
    )


def factor_vae_score(
    source: FactorSource,
    rng: np.random.Generator,
    batch_size: int = 64,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    num_variance_estimate: int = 10_000,
) -> dict:
    r"""The FactorVAE score (Kim & Mnih 2018), disentanglement_lib's procedure.

    Global variances :math:`s_j^2 = \operatorname{Var}[z_j]` (ddof 1) from
    `num_variance_estimate` random points; dimension j is active iff s_j^2 > 1e-12
    (`VARIANCE_THRESHOLD`). A vote: k ~ U{0..K-1}; a batch of B factor vectors sharing one
    random value of factor k, the others random; with :math:`\hat\sigma_j^2` the batch variance
    (ddof 1) of z_j / s_j, the vote is

    .. math::
        (\arg\min_{j\,\mathrm{active}} \hat\sigma_j^2,\; k).

    The classifier maps each dimension j to the factor with most of its `num_train` training
    votes (`majority_vote_classifier`); score = its accuracy on `num_eval` fresh votes.

    Args:
      source: the factors and their code.
      rng: random generator for every draw.
      batch_size: B >= 2, points per vote.
      num_train: training votes.
      num_eval: evaluation votes.
      num_variance_estimate: points of the global variance estimate (>= 2).

    Returns:
      Dict: score (= eval_accuracy), train_accuracy, eval_accuracy, eval_accuracy_per_factor,
      num_dims, num_active_dims, active_dims, dim_to_factor (the classifier; None for inactive
      dims), train_votes ((K, D) counts), global_variances, the parameters and procedure. With no
      active dimension every accuracy is 0 and `note` says why.
    """
    sizes, names = _check_source(source)
    batch_size = _check_count("batch_size", batch_size, minimum=2)
    num_train = _check_count("num_train", num_train)
    num_eval = _check_count("num_eval", num_eval)
    num_variance_estimate = _check_count("num_variance_estimate", num_variance_estimate, 2)
    codes = _represent(source, sample_factors(rng, sizes, num_variance_estimate))
    variances = np.var(codes, axis=0, ddof=1)
    active = active_dims(variances)
    result = {
        "num_dims": int(codes.shape[1]),
        "num_active_dims": int(active.sum()),
        "active_dims": [int(j) for j in np.flatnonzero(active)],
        "global_variances": [float(v) for v in variances],
        "batch_size": batch_size,
        "num_train": num_train,
        "num_eval": num_eval,
        "num_variance_estimate": num_variance_estimate,
        "procedure": (
            f"disentanglement_lib FactorVAE score: batch {batch_size}, {num_train} train / "
            f"{num_eval} eval votes, global variances from {num_variance_estimate} points, "
            f"majority vote over active dims (variance > {VARIANCE_THRESHOLD:g})"
        ),
    }
    if not active.any():
        return {
            "score": 0.0,
            "train_accuracy": 0.0,
            "eval_accuracy": 0.0,
            "eval_accuracy_per_factor": dict.fromkeys(names, 0.0),
            "note": "no active code dimension (every variance <= threshold): score 0",
            **result,
        }
    scales = np.sqrt(variances)
    train_votes = _factor_vae_votes(source, rng, sizes, batch_size, num_train, scales, active)
    classifier = majority_vote_classifier(train_votes)
    eval_votes = _factor_vae_votes(source, rng, sizes, batch_size, num_eval, scales, active)
    eval_accuracy = vote_accuracy(eval_votes, classifier)
    right = eval_votes[classifier, np.arange(len(classifier))]
    per_factor = {}
    for k, name in enumerate(names):
        total = eval_votes[k].sum()
        per_factor[name] = float(right[classifier == k].sum() / total) if total else None
    return {
        "score": eval_accuracy,
        "train_accuracy": vote_accuracy(train_votes, classifier),
        "eval_accuracy": eval_accuracy,
        "eval_accuracy_per_factor": per_factor,
        "dim_to_factor": [names[k] if a else None for k, a in zip(classifier, active)],
        "train_votes": train_votes.tolist(),
        **result,
    }


def mutual_information_gap(
    source: FactorSource,
    rng: np.random.Generator,
    num_train: int = 10_000,
    num_bins: int = 20,
) -> dict:
    r"""The mutual information gap (Chen et al. 2018), disentanglement_lib's procedure.

    On `num_train` random points, with :math:`\tilde z_j` the code binned by
    `histogram_discretize` and I the plug-in mutual information (`mutual_information_matrix`),

    .. math::
        \mathrm{MIG} = \frac1K \sum_k \frac{I(\tilde z_{j^{(1)}_k}; v_k)
            - I(\tilde z_{j^{(2)}_k}; v_k)}{H(v_k)}

    where j^(1)_k, j^(2)_k are the dimensions with the largest and second largest I with
    factor k and H(v_k) the entropy of the sampled factor. (With one code dimension the second
    largest is 0; a factor whose sample is constant, H = 0, has no gap and is left out of the
    mean.)

    Args:
      source: the factors and their code.
      rng: random generator for every draw.
      num_train: points.
      num_bins: bins per code dimension.

    Returns:
      Dict: score, per_factor_gap (normalised), per_factor_entropy, per_factor_best_dims
      ([j1, j2]), mutual_information ((D, K) nats), num_dims, num_active_dims (variance >
      1e-12), the parameters and procedure.
    """
    sizes, names = _check_source(source)
    num_train = _check_count("num_train", num_train)
    num_bins = _check_count("num_bins", num_bins)
    factors = sample_factors(rng, sizes, num_train)
    codes = _represent(source, factors)
    matrix = mutual_information_matrix(
        histogram_discretize(codes, num_bins), factors, num_bins, sizes
    )
    entropies = np.array(
        [entropy_from_counts(np.bincount(factors[:, k], minlength=s)) for k, s in enumerate(sizes)]
    )
    order = np.argsort(-matrix, axis=0, kind="stable")
    best = matrix[order[0], np.arange(len(sizes))]
    second = (
        matrix[order[1], np.arange(len(sizes))] if matrix.shape[0] > 1 else np.zeros(len(sizes))
    )
    has_entropy = entropies > 0
    gaps = np.where(has_entropy, best - second, 0.0) / np.where(has_entropy, entropies, 1.0)
    score = float(gaps[has_entropy].mean()) if has_entropy.any() else 0.0
    return {
        "score": score,
        "per_factor_gap": {
            name: float(g) if h else None for name, g, h in zip(names, gaps, has_entropy)
        },
        "per_factor_entropy": {name: float(h) for name, h in zip(names, entropies)},
        "per_factor_best_dims": {
            name: [int(j) for j in order[:2, k]] for k, name in enumerate(names)
        },
        "mutual_information": matrix.tolist(),
        "num_dims": int(codes.shape[1]),
        "num_active_dims": int(active_dims(np.var(codes, axis=0)).sum()),
        "num_train": num_train,
        "num_bins": num_bins,
        "procedure": (
            f"disentanglement_lib MIG: {num_train} points, each code dim discretised into "
            f"{num_bins} equal-width bins between its min and max, plug-in mutual information "
            "(nats) normalised by the factor entropy"
        ),
    }


METRICS: dict[str, Callable[..., dict]] = {
    "beta_vae": beta_vae_score,
    "factor_vae": factor_vae_score,
    "mig": mutual_information_gap,
}


def _metric_parameters(metric: Callable[..., dict]) -> tuple[str, ...]:
    return tuple(inspect.signature(metric).parameters)[2:]


def evaluate_all(source: FactorSource, seed: int = 0, **overrides: Any) -> dict:
    """The BetaVAE score, FactorVAE score and MIG of `source`, reproducible from `seed`.

    Each metric draws from its own generator, spawned from `np.random.SeedSequence(seed)`, so
    changing one metric's parameters leaves the others' results unchanged.

    Args:
      source: the factors and their code.
      seed: the seed of every draw.
      **overrides: a parameter name (e.g. num_train=1000) sets that parameter of every metric
        that has it; a metric name (beta_vae, factor_vae, mig) maps to a dict of parameters for
        that metric alone, which wins over the former.

    Returns:
      {'beta_vae': {...}, 'factor_vae': {...}, 'mig': {...}}, each metric's dict (with its
      'score' and 'procedure') plus the 'seed'.
    """
    known = {p for metric in METRICS.values() for p in _metric_parameters(metric)}
    for key, value in overrides.items():
        if key in METRICS:
            if not isinstance(value, Mapping):
                raise TypeError(f"override {key}= must be a dict of parameters, not {value!r}")
            unknown = set(value) - set(_metric_parameters(METRICS[key]))
            if unknown:
                raise TypeError(f"{key} has no parameter(s) {sorted(unknown)}")
        elif key not in known:
            raise TypeError(f"unknown override {key!r}; allowed: {sorted(known | set(METRICS))}")
    children = np.random.SeedSequence(seed).spawn(len(METRICS))
    results = {}
    with progress.Phase("disentanglement metrics", len(METRICS), unit="metrics") as phase:
        for (name, metric), child in zip(METRICS.items(), children):
            parameters = _metric_parameters(metric)
            kwargs = {k: v for k, v in overrides.items() if k in parameters}
            kwargs.update(overrides.get(name, {}))
            begun = time.perf_counter()
            results[name] = {**metric(source, np.random.default_rng(child), **kwargs), "seed": seed}
            logging.info(
                "%s: %.4g in %s.",
                name,
                results[name]["score"],
                progress.duration(time.perf_counter() - begun),
            )
            phase.update(1)
    return results
