"""config.matmul_precision: every program of a run, its evaluation and a loaded model is traced
at it. A CPU computes float32 products in full whatever the setting, so the tests look at what
the programs are traced with and what the workdir records (docs/performance.md, "TF32")."""

import json

import jax
import jax.numpy as jnp
import pytest
from conftest import small_config

from vae_jax import evaluate, models, objectives, population, train, trained
from vae_jax.config import validate_config
from vae_jax.errors import ConfigError, WorkdirError
from vae_jax.optim import build_optimizer
from vae_jax.step import create_train_state, make_train_step


def _lowered_step(config) -> str:
    model = models.build_model(config, (28, 28, 1))
    optimizer = build_optimizer(config, 10)
    state = create_train_state(model, optimizer, (28, 28, 1), config.latents, 0)
    step = make_train_step(objectives.make_elbo_loss(model), optimizer)
    batch = jnp.zeros((8, 28, 28, 1), jnp.uint8)
    with models.matmul_precision(config):
        return jax.jit(step).lower(state, batch).as_text()


def test_highest_reaches_every_product_of_the_step_and_default_changes_nothing():
    highest = _lowered_step(small_config(matmul_precision="highest"))
    default = _lowered_step(small_config())
    assert highest.count("dot_general") == default.count("dot_general") > 0
    assert highest.count("HIGHEST") >= highest.count("dot_general")
    assert "HIGHEST" not in default
    assert jax.config.jax_default_matmul_precision is None  # the context is left


def test_a_mistyped_precision_is_refused_with_the_closest_choice():
    with pytest.raises(ConfigError, match="matmul_precision='hihgest'.*did you mean 'highest'"):
        validate_config(small_config(matmul_precision="hihgest"))


def test_training_evaluation_and_loading_run_at_the_configured_precision(tmp_path):
    precision = "highest"
    seen = []

    def hook(record, state):
        seen.append(jax.config.jax_default_matmul_precision)

    config = small_config(num_epochs=1, matmul_precision=precision)
    train.train_and_evaluate(config, str(tmp_path), on_epoch_end=hook)
    assert seen == [precision]
    result = evaluate.evaluate_workdir(str(tmp_path), iwae_samples=2, max_examples=50, draw=False)
    assert result["matmul_precision"] == precision
    assert json.loads((tmp_path / "eval.json").read_text())["matmul_precision"] == precision
    model = trained.load(str(tmp_path))
    assert model.decode(jnp.zeros((2, 4))).shape == (2, 28, 28, 1)
    assert jax.config.jax_default_matmul_precision is None


def test_a_population_trains_at_the_configured_precision(tmp_path):
    seen = []
    config = small_config(num_epochs=1, population_size=2, matmul_precision="highest")
    population.train_population(
        config,
        str(tmp_path),
        on_epoch_end=lambda r, s: seen.append(jax.config.jax_default_matmul_precision),
    )
    assert seen == ["highest", "highest"]


def test_resuming_at_another_precision_is_refused(tmp_path):
    train.train_and_evaluate(small_config(num_epochs=1), str(tmp_path))
    with pytest.raises(WorkdirError, match="matmul_precision=.default. in the checkpoint"):
        train.train_and_evaluate(small_config(matmul_precision="highest"), str(tmp_path))
