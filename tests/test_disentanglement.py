"""The disentanglement metrics on codes whose answer is known: the ground-truth factors themselves,
noise, a rotation of the factors and the factors with one missing.

Factor sizes are dSprites' (3, 6, 40, 32, 32). Apart from one run with every default, the metrics
use 2000 train / 1000 eval points, where the chance-level bands below are over 6 standard
deviations wide. The classifier-based scores are fractions of the eval points, so a binomial
standard deviation sqrt(p (1 - p) / 1000) <= 0.016 is what the tolerances are measured against.
"""

import json
import math

import numpy as np
import pytest

from vae_jax import disentanglement as dis

SIZES = (3, 6, 40, 32, 32)
NAMES = ("shape", "scale", "orientation", "position_x", "position_y")
K = len(SIZES)
SMALL = {
    "beta_vae": {"num_train": 2000, "num_eval": 1000},
    "factor_vae": {"num_train": 2000, "num_eval": 1000, "num_variance_estimate": 5000},
}
_SIZES = np.array(SIZES)


def source(represent):
    return dis.FactorSource(SIZES, NAMES, represent)


def unit_range(factors):
    """The ground truth, each factor scaled to [0, 1]."""
    return factors / (_SIZES - 1.0)


def standardized(factors):
    """The ground truth, each factor with mean 0 and variance 1 under the uniform distribution."""
    return (factors - (_SIZES - 1) / 2) / np.sqrt((_SIZES**2 - 1) / 12)


def entropy(counts):
    p = np.asarray(counts, float) / np.sum(counts)
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def expected_mig_gaps(num_train, num_bins=20):
    """The normalised gap of each factor for the ground-truth code, from first principles.

    The code of factor k is the factor itself, so binning it is a deterministic map of v_k and
    I(bin(z_k); v_k) = H(bin(z_k)): the gap is H(bin) / H(v_k), which is 1 while a bin holds at
    most one value (shape 3, scale 6) and less once 20 bins merge values: 40 orientations fill
    every bin with two values, log 20 / log 40 = 0.812; 32 positions put two values in 12 bins
    and one in 8, 4.25 log 2 / 5 log 2 = 0.85. The population MIG is their mean, 0.902.

    The second largest mutual information is with an independent dimension j, 0 in the
    population; the plug-in estimate is biased up by (A_j - 1)(S_k - 1) / 2n (A_j occupied bins,
    S_k values; Miller 1955), which lowers the gap by up to 0.01 at n = 10000.
    """
    occupied = [np.count_nonzero(np.histogram(np.arange(s), bins=num_bins)[0]) for s in SIZES]
    gaps = []
    for k, size in enumerate(SIZES):
        bin_counts = np.histogram(np.arange(size), bins=num_bins)[0]
        population = entropy(bin_counts) / math.log(size)
        bias = max((occupied[j] - 1) * (size - 1) for j in range(K) if j != k) / (2 * num_train)
        gaps.append(population - bias / math.log(size))
    return np.array(gaps)


# ---------------------------------------------------------------------------------------------
# The aligned ground truth: every metric near its maximum.


def test_ground_truth_code_scores_near_one_with_defaults():
    calls = []

    def represent(factors):
        calls.append(len(factors))
        return unit_range(factors).astype(np.float32)

    scores = dis.evaluate_all(source(represent), seed=0)

    assert scores["beta_vae"]["score"] >= 0.99  # measured 1.0
    assert scores["beta_vae"]["train_accuracy"] >= 0.99
    assert scores["beta_vae"]["logistic_regression"]["converged"]
    assert scores["factor_vae"]["score"] >= 0.99  # measured 1.0
    assert scores["factor_vae"]["dim_to_factor"] == list(NAMES)
    assert scores["factor_vae"]["num_active_dims"] == K
    mig = scores["mig"]
    gaps = np.array([mig["per_factor_gap"][name] for name in NAMES])
    # Population MIG 0.902 (see expected_mig_gaps); with the plug-in bias, 0.896 expected.
    expected = expected_mig_gaps(num_train=10_000)
    np.testing.assert_allclose(gaps, expected, atol=0.005)
    assert mig["score"] == pytest.approx(expected.mean(), abs=0.004)  # measured 0.8965
    assert mig["score"] >= 0.8
    assert [mig["per_factor_best_dims"][name][0] for name in NAMES] == list(range(K))

    # Every default as in disentanglement_lib, and said so.
    assert scores["beta_vae"]["procedure"] == (
        "disentanglement_lib BetaVAE score: batch 64, 10000 train / 5000 eval points, "
        "multinomial logistic regression (L2, C=1)"
    )
    assert "batch 64, 10000 train / 5000 eval votes" in scores["factor_vae"]["procedure"]
    assert "variances from 10000 points" in scores["factor_vae"]["procedure"]
    assert "10000 points" in mig["procedure"] and "20 equal-width bins" in mig["procedure"]
    # represent saw chunks of exactly 2048 rows (a padded last chunk): one compile for an encoder.
    assert set(calls) == {2048}
    assert sum(calls) >= 2 * 64 * 15_000 + 64 * 15_000 + 20_000
    json.dumps(scores)  # the lead writes these dicts to eval.json


# ---------------------------------------------------------------------------------------------
# A code independent of the factors: chance.


def test_random_code_scores_at_chance():
    noise = np.random.default_rng(123)
    scores = dis.evaluate_all(
        source(lambda factors: noise.normal(size=(len(factors), K))), seed=1, **SMALL
    )
    # Eval labels are uniform and independent of the features, so whatever the classifier, each
    # eval point is right with probability sum_k P(predict k) / K = 1/5 exactly; over 1000 eval
    # points the standard deviation is 0.0126, so [0.12, 0.30] is over 6 of them each side.
    assert 0.12 <= scores["beta_vae"]["score"] <= 0.30  # measured 0.20
    assert 0.12 <= scores["factor_vae"]["score"] <= 0.30  # measured 0.20
    # MIG's plug-in informations are all bias, about equal for every dim: the gaps vanish.
    assert scores["mig"]["score"] < 0.05  # measured 0.0005


# ---------------------------------------------------------------------------------------------
# An invertible mixture: the same information, not axis-aligned.


def test_rotated_code_scores_lower_on_mig_and_factor_vae():
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(K, K)))
    # Fixing factor k leaves code dim j a variance 1 - R_jk^2 of its global 1, so k's votes go to
    # argmax_j R_jk^2. This rotation sends shape and orientation to the same dim, so at most 4
    # of the 5 factors can win a dim: FactorVAE <= about 0.8.
    dominant = np.argmax(rotation**2, axis=0)
    assert len(set(dominant.tolist())) == K - 1
    aligned = dis.evaluate_all(source(standardized), seed=2, **SMALL)
    rotated = dis.evaluate_all(source(lambda f: standardized(f) @ rotation.T), seed=2, **SMALL)

    assert aligned["factor_vae"]["score"] >= 0.99
    assert rotated["factor_vae"]["score"] <= 0.85  # measured 0.70
    # Each rotated dim carries some information on every factor: the gaps shrink.
    assert aligned["mig"]["score"] >= 0.85
    assert rotated["mig"]["score"] < 0.5 * aligned["mig"]["score"]  # measured 0.17 vs 0.90


def test_factor_vae_misses_a_rotation_whose_factors_keep_distinct_dims_but_mig_does_not():
    # The other side of the argmin-vote rule: when every factor has its own dominant dim (as
    # for this rotation), FactorVAE is 1 although no dim is one factor; MIG still drops.
    rotation, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(K, K)))
    assert len(set(np.argmax(rotation**2, axis=0).tolist())) == K
    rotated = dis.evaluate_all(source(lambda f: standardized(f) @ rotation.T), seed=2, **SMALL)
    assert rotated["factor_vae"]["score"] >= 0.99
    assert rotated["mig"]["score"] < 0.45  # measured 0.30


# ---------------------------------------------------------------------------------------------
# A code that lost one factor (its dim is constant).


@pytest.mark.parametrize("missing", range(K), ids=NAMES)
def test_code_missing_one_factor(missing):
    def represent(factors):
        codes = standardized(factors)
        codes[:, missing] = 3.0
        return codes

    full = dis.mutual_information_gap(source(standardized), np.random.default_rng(7))
    scores = dis.evaluate_all(source(represent), seed=3, **SMALL)

    # FactorVAE: the constant dim is inactive (variance 0); votes for the missing factor land on
    # a random other dim, which the majority gives to its own factor, so they are all wrong and
    # the others all right: score = the fraction of eval votes of the other factors, 4/5.
    factor_vae = scores["factor_vae"]
    assert factor_vae["num_active_dims"] == K - 1
    assert factor_vae["dim_to_factor"][missing] is None
    assert factor_vae["score"] == pytest.approx(0.8, abs=0.05)  # measured 0.78 - 0.82
    assert factor_vae["eval_accuracy_per_factor"][NAMES[missing]] == 0.0
    assert all(
        factor_vae["eval_accuracy_per_factor"][name] == 1.0
        for k, name in enumerate(NAMES)
        if k != missing
    )

    # MIG: the missing factor's gap is 0 and the others keep theirs, so MIG = (sum of the other
    # gaps) / 5 -- about 4/5 of the full value (exactly when the lost gap is the mean gap).
    gaps = scores["mig"]["per_factor_gap"]
    assert gaps[NAMES[missing]] < 0.01
    full_gaps = full["per_factor_gap"]
    for k, name in enumerate(NAMES):
        if k != missing:
            assert gaps[name] == pytest.approx(full_gaps[name], abs=0.01)
    others = sum(full_gaps[name] for k, name in enumerate(NAMES) if k != missing)
    assert scores["mig"]["score"] == pytest.approx(others / K, abs=0.01)
    assert scores["mig"]["score"] / full["score"] == pytest.approx(0.8, abs=0.05)  # 0.78-0.82

    # BetaVAE does not notice: "no zero feature" identifies the missing factor as well as a zero
    # feature identifies the others.
    assert scores["beta_vae"]["score"] >= 0.99


# ---------------------------------------------------------------------------------------------
# The pieces.


def test_logistic_regression_separates_separable_data_and_not_noise():
    rng = np.random.default_rng(0)
    centres = 4.0 * np.eye(K)

    def blobs(n):
        labels = rng.integers(K, size=n)
        return centres[labels] + 0.5 * rng.normal(size=(n, K)), labels

    x, y = blobs(2000)
    fit = dis.logistic_regression_fit(x, y, num_classes=K)
    assert fit.converged
    assert np.mean(dis.logistic_regression_predict(fit, x) == y) == 1.0
    x_eval, y_eval = blobs(2000)
    assert np.mean(dis.logistic_regression_predict(fit, x_eval) == y_eval) == 1.0

    x, y = rng.normal(size=(2000, K)), rng.integers(K, size=2000)
    fit = dis.logistic_regression_fit(x, y, num_classes=K)
    assert fit.converged
    # 25 weights on 2000 points barely fit noise, and held-out accuracy is chance (sd 0.009).
    assert np.mean(dis.logistic_regression_predict(fit, x) == y) < 0.26
    held_out = np.mean(dis.logistic_regression_predict(fit, rng.normal(size=(2000, K))) == y)
    assert abs(held_out - 0.2) < 0.05


def test_logistic_regression_leaves_the_bias_unpenalised():
    # Without features the optimum is softmax(b) = the class frequencies exactly (a penalty on b
    # would shrink them towards uniform), and W = 0.
    frequencies = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    labels = np.repeat(np.arange(K), (2000 * frequencies).astype(int))
    fit = dis.logistic_regression_fit(np.zeros((2000, K)), labels, num_classes=K)
    probabilities = np.exp(fit.bias) / np.exp(fit.bias).sum()
    np.testing.assert_allclose(probabilities, frequencies, atol=1e-4)
    np.testing.assert_array_equal(fit.weights, 0.0)


def test_mutual_information_and_entropy_from_counts():
    # Independent: a product table has I = 0. Identical: I(A; A) = H(A).
    assert dis.mutual_information_from_counts(np.outer([1, 2, 3], [4, 5])) == pytest.approx(0.0)
    assert dis.mutual_information_from_counts(np.diag([1, 1, 2])) == pytest.approx(
        1.5 * math.log(2)
    )
    assert dis.entropy_from_counts(np.array([1, 1, 2])) == pytest.approx(1.5 * math.log(2))
    # A 2x2 table, by hand: p = [[.4, .1], [.1, .4]], marginals 1/2.
    by_hand = 2 * 0.4 * math.log(0.4 / 0.25) + 2 * 0.1 * math.log(0.1 / 0.25)
    assert dis.mutual_information_from_counts(np.array([[4, 1], [1, 4]])) == pytest.approx(by_hand)


def test_histogram_discretize_uses_equal_width_bins_between_min_and_max():
    codes = np.stack([np.arange(40.0), np.full(40, 2.5), np.linspace(-1, 1, 40) ** 3], axis=1)
    binned = dis.histogram_discretize(codes, num_bins=20)
    assert binned.min() >= 0 and binned.max() <= 19
    np.testing.assert_array_equal(binned[:, 0], np.arange(40) // 2)  # two values per bin
    assert np.all(binned[:, 1] == binned[0, 1])  # a constant dim: one bin
    for j in range(3):
        counts = np.histogram(codes[:, j], bins=20)[0]
        np.testing.assert_array_equal(np.bincount(binned[:, j], minlength=20), counts)


def test_sample_factors_is_uniform_and_in_range():
    factors = dis.sample_factors(np.random.default_rng(0), SIZES, 100_000)
    assert factors.shape == (100_000, K)
    for k, size in enumerate(SIZES):
        counts = np.bincount(factors[:, k], minlength=size)
        assert len(counts) == size
        # Each count is binomial(100000, 1/size): within 6 standard deviations.
        expected = 100_000 / size
        assert np.all(np.abs(counts - expected) < 6 * math.sqrt(expected))


def test_no_active_dimension_scores_zero_and_says_so():
    result = dis.factor_vae_score(
        source(lambda f: np.ones((len(f), 3))), np.random.default_rng(0), num_train=10
    )
    assert result["score"] == 0.0 and result["num_active_dims"] == 0
    assert "no active" in result["note"]


# ---------------------------------------------------------------------------------------------
# Reproducibility and the interface of evaluate_all.


def test_same_seed_same_results_and_overrides_reach_every_metric():
    def run(seed):
        return dis.evaluate_all(
            source(unit_range), seed=seed, num_train=1500, num_eval=500, batch_size=16
        )

    first, again, other = run(5), run(5), run(6)
    assert first == again
    assert first != other
    assert first["beta_vae"]["num_train"] == first["mig"]["num_train"] == 1500
    assert first["factor_vae"]["num_eval"] == 500 and first["factor_vae"]["batch_size"] == 16
    # A metric's own dict wins, and the others are untouched: each has its own generator.
    changed = dis.evaluate_all(
        source(unit_range), seed=5, num_train=1500, num_eval=500, batch_size=16, mig={"num_bins": 8}
    )
    assert changed["mig"]["num_bins"] == 8 and changed["mig"] != first["mig"]
    assert changed["beta_vae"] == first["beta_vae"]
    assert changed["factor_vae"] == first["factor_vae"]


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="unknown override"):
        dis.evaluate_all(source(unit_range), num_points=10)
    with pytest.raises(TypeError, match="no parameter"):
        dis.evaluate_all(source(unit_range), mig={"num_eval": 10})
    with pytest.raises(ValueError, match="batch_size=1"):
        dis.factor_vae_score(source(unit_range), np.random.default_rng(0), batch_size=1)
    with pytest.raises(ValueError, match="non-finite"):
        dis.mutual_information_gap(
            source(lambda f: np.full((len(f), 2), np.nan)), np.random.default_rng(0)
        )
