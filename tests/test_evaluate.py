"""`python -m vae_jax.evaluate`: its figures agree with training's, its bounds are ordered, PCA is
exact where it should be, and it changes nothing of the training run."""

import json
import os

import numpy as np
import pytest
from conftest import run_cli, small_config, snapshot

from vae_jax import estimators, evaluate, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small 2-latent VAE trained for 2 epochs, and its records."""
    workdir = str(tmp_path_factory.mktemp("trained"))
    records = train.train_and_evaluate(small_config(latents=2), workdir)
    return workdir, records


def test_evaluation_agrees_with_training_and_orders_the_bounds(trained):
    workdir, records = trained
    before = {name: snapshot(os.path.join(workdir, name)) for name in ("checkpoints",)} | {
        "metrics": snapshot(workdir)["metrics.jsonl"]
    }
    # The same 500 test examples that training evaluated after its last epoch.
    result = evaluate.evaluate_workdir(workdir, iwae_samples=200, batch_size=50, max_examples=500)
    metrics = result["metrics"]

    assert result["checkpoint_step"] == records[-1]["step"]
    assert metrics["test_elbo"] == pytest.approx(records[-1]["test_elbo"], rel=1e-6)
    # The 200-sample bound is tighter than the single-sample ELBO, by a clear margin here.
    assert 0 < metrics["iwae_nll"] < -metrics["test_elbo"] - 1.0
    assert 0 < metrics["iwae_nll_stderr"] < 5
    assert metrics["iwae_samples"] == 200
    assert metrics["recon_nats"] > 0 and metrics["recon_squared_error"] > 0
    assert metrics["pca_squared_error"] > 0
    assert "importance-weighted" in result["procedures"]["iwae_nll"]

    with open(os.path.join(workdir, "eval.json")) as f:
        assert json.load(f) == json.loads(json.dumps(result))
    for name in ("traversals.png", "interpolation.png", "manifold.png", "training_curves.png"):
        assert name in result["images"]
        assert os.path.getsize(os.path.join(workdir, "images", name)) > 100
    # Evaluation reads the run; it writes only eval.json and the pictures.
    after = {"checkpoints": snapshot(os.path.join(workdir, "checkpoints"))} | {
        "metrics": snapshot(workdir)["metrics.jsonl"]
    }
    assert after == before


def test_pca_error_is_the_sum_of_the_discarded_eigenvalues():
    rng = np.random.default_rng(0)
    scales = np.array([3.0, 2.0, 1.0, 0.5])
    basis, _ = np.linalg.qr(rng.normal(size=(12, 4)))
    points = (rng.normal(size=(4000, 4)) * scales) @ basis.T + 0.3  # rank 4 around a mean
    images = points.reshape((4000, 3, 4, 1))
    assert estimators.pca_squared_error(images, images, 4) == pytest.approx(0.0, abs=1e-18)
    covariance = np.cov(points.T, bias=True)
    eigenvalues = np.sort(np.linalg.eigvalsh(covariance))[::-1]
    for components in (1, 2, 3):
        expected = eigenvalues[components:].sum()
        assert estimators.pca_squared_error(images, images, components) == pytest.approx(
            expected, rel=1e-9
        )


def test_autoencoder_evaluation_has_a_reconstruction_and_no_bound(tmp_path):
    workdir = str(tmp_path)
    train.train_and_evaluate(small_config(objective="ae", num_epochs=1), workdir)
    result = evaluate.evaluate_workdir(workdir, iwae_samples=100, max_examples=100, draw=False)
    assert "iwae_nll" not in result["metrics"] and "test_elbo" not in result["metrics"]
    assert result["metrics"]["test_recon"] == pytest.approx(result["metrics"]["recon_nats"])


def test_dsprites_evaluation_scores_the_three_disentanglement_metrics(tmp_path):
    workdir = str(tmp_path)
    config = small_config(
        dataset="dsprites",
        model="conv",
        conv_features=(8, 8, 8, 8),
        conv_hidden=32,
        latents=4,
        batch_size=32,
        num_epochs=1,
        max_train_examples=256,
        max_eval_examples=64,
        eval_batch_size=64,
        num_image_examples=0,
    )
    train.train_and_evaluate(config, workdir)
    result = evaluate.evaluate_workdir(
        workdir, iwae_samples=0, max_examples=64, disentanglement_points=(200, 100), draw=False
    )
    for name in ("beta_vae", "factor_vae", "mig"):
        assert 0.0 <= result["metrics"][name] <= 1.0
        assert "disentanglement_lib" in result["procedures"][name]


def _evaluate_cli(*args, cwd):
    return run_cli(*args, cwd=cwd, module="vae_jax.evaluate")


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "error: --iwae_samples=-1 must be an integer >= 0"),
        (["--max_examples=-5"], "error: --max_examples=-5 must be an integer >= 0"),
    ],
)
def test_cli_rejects_bad_flags_in_one_line(trained, tmp_path, args, message):
    workdir, _ = trained
    completed = _evaluate_cli(
        f"--workdir={workdir}", *(args or ["--iwae_samples=-1"]), cwd=tmp_path
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in completed.stderr


def test_cli_on_a_directory_that_is_not_a_workdir(tmp_path):
    completed = _evaluate_cli(f"--workdir={tmp_path}", cwd=tmp_path)
    assert completed.returncode == 2
    assert "has no config.json, so it is not a vae_jax workdir" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_cli_prints_the_table(trained, tmp_path):
    workdir, _ = trained
    completed = _evaluate_cli(
        f"--workdir={workdir}",
        "--iwae_samples=10",
        "--max_examples=100",
        "--nopictures",
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    assert "iwae_nll" in completed.stdout and "pca_squared_error" in completed.stdout
    assert "nats per example" in completed.stdout
