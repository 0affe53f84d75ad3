"""Bad input ends in one clear sentence, before any work, and never harms what a workdir holds."""

import os
import re

import jax.numpy as jnp
import pytest
from conftest import run_cli, small_config, snapshot

from vae_jax import models, objectives, train
from vae_jax.config import get_config, validate_config
from vae_jax.errors import ConfigError, DivergenceError, WorkdirError


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("dataset", "cifar99", "dataset='cifar99' is not known; allowed: 'binarized_mnist'"),
        ("model", "resnet", "model='resnet' is not known; allowed: 'mlp', 'conv'"),
        ("likelihood", "poisson", "likelihood='poisson' is not known; allowed: 'bernoulli'"),
        ("optimizer", "sgd", "optimizer='sgd' is not known"),
        ("lr_schedule", "linear", "lr_schedule='linear' is not known"),
        ("eval_split", "train", "eval_split='train' is not known"),
        ("latents", 0, "latents=0 must be an integer >= 1"),
        ("batch_size", -5, "batch_size=-5 must be an integer >= 1"),
        ("num_epochs", 0, "num_epochs=0 must be an integer >= 1"),
        ("eval_batch_size", 0, "eval_batch_size=0 must be an integer >= 1"),
        ("checkpoint_every_epochs", 0, "checkpoint_every_epochs=0 must be an integer >= 1"),
        ("max_steps", -1, "max_steps=-1 must be an integer >= 0"),
        ("learning_rate", 0.0, "learning_rate=0.0 must be a finite number > 0"),
        ("learning_rate", -1e-3, "learning_rate=-0.001 must be a finite number > 0"),
        ("learning_rate", float("nan"), "learning_rate=nan must be a finite number > 0"),
        ("learning_rate", float("inf"), "learning_rate=inf must be a finite number > 0"),
        ("beta", -1.0, "beta=-1.0 must be a finite number >= 0"),
        ("gaussian_scale", 0.0, "gaussian_scale=0.0 must be a finite number > 0"),
        ("hidden_sizes", (500, 0), "hidden_sizes=(500, 0) must be a non-empty tuple of positive"),
        ("hidden_sizes", (), "hidden_sizes=() must be a non-empty tuple"),
        ("conv_features", (32, -64), "conv_features=(32, -64) must be a non-empty tuple"),
        ("dropout_rate", 1.0, "dropout_rate=1.0 must be a number in [0, 1)"),
        ("objective", "vq_vae", "objective='vq_vae' is not known; allowed: 'vae', 'beta_vae'"),
        ("activation", "gelu", "activation='gelu' is not known; allowed: 'relu'"),
        ("lr_schedule", "burda2", "lr_schedule='burda2' is not known"),
        ("kl_warmup_steps", -1, "kl_warmup_steps=-1 must be an integer >= 0"),
        ("capacity_max", -25.0, "capacity_max=-25.0 must be a finite number >= 0"),
        ("capacity_steps", 0, "capacity_steps=0 must be an integer >= 1"),
        ("capacity_gamma", float("nan"), "capacity_gamma=nan must be a finite number >= 0"),
        ("factor_gamma", -1.0, "factor_gamma=-1.0 must be a finite number >= 0"),
        ("discriminator_hidden", (), "discriminator_hidden=() must be a non-empty tuple"),
        ("discriminator_learning_rate", 0.0, "discriminator_learning_rate=0.0 must be a finite"),
        ("iwae_samples", 0, "iwae_samples=0 must be an integer >= 1"),
        ("dae_corruption", "blur", "dae_corruption='blur' is not known; allowed: 'masking'"),
        ("dae_noise_level", 1.0, "dae_noise_level=1.0 must be a fraction in (0, 1) of pixels"),
        ("images_every_epochs", 0, "images_every_epochs=0 must be an integer >= 1"),
        ("dtype", "float16", "dtype='float16' is not known; allowed: 'float32', 'bfloat16'"),
    ],
)
def test_invalid_values_are_named_with_what_is_allowed(field, value, message):
    config = get_config()
    config[field] = value
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"beta": 4.0}, "beta=4.0 with objective='vae', whose KL weight is 1; use objective="),
        ({"objective": "ae", "kl_warmup_steps": 100}, "kl_warmup_steps=100 with objective='ae'"),
        ({"objective": "dae", "dae_corruption": "gaussian", "dae_noise_level": 0.0}, "sigma > 0"),
        ({"objective": "factor_vae", "batch_size": 1}, "batch_size=1 with objective='factor_vae'"),
        (
            {"objective": "iwae", "population_size": 2, "population_weights": (1.0, 2.0)},
            "objective='iwae', which has no weight to sweep",
        ),
        (
            {"objective": "dae", "population_size": 2, "population_weights": (0.2, 1.5)},
            "population member 1: dae_noise_level=1.5 must be a fraction in (0, 1)",
        ),
        ({"population_size": 2, "population_betas": (1.0, 4.0)}, "need objective='beta_vae'"),
    ],
)
def test_settings_that_contradict_the_objective(overrides, message):
    config = get_config()
    config.update(overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(config)


def test_combinations_that_do_not_fit_together():
    config = get_config()
    config.dropout_rate = 0.1
    with pytest.raises(ConfigError, match="dropout_rate=0.1 applies to model='conv' only"):
        validate_config(config)
    config = get_config()
    config.weight_decay = 0.01
    with pytest.raises(ConfigError, match="weight_decay=0.01 needs optimizer='adamw'"):
        validate_config(config)


def test_unknown_field_in_a_config_file_is_caught_with_a_suggestion():
    config = get_config()
    config.latnets = 10  # a typo an experiment file could make: ConfigDict accepts new fields
    with pytest.raises(ConfigError, match="unknown config field 'latnets'; did you mean 'latents'"):
        validate_config(config)


def test_batch_larger_than_the_split(tmp_path):
    config = small_config(batch_size=2048)
    with pytest.raises(
        ConfigError, match="batch_size=2048 is larger than the training split.*1024"
    ):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(WorkdirError, match="a_file/run' cannot be used"):
        train.train_and_evaluate(small_config(), str(blocker / "run"))


def test_checkpoint_of_another_model_is_refused_and_kept(tmp_path):
    workdir = tmp_path / "run"
    train.train_and_evaluate(small_config(num_epochs=1), str(workdir))
    before = snapshot(workdir)
    with pytest.raises(WorkdirError, match=r"latents=4 in the checkpoint, 3 now") as error:
        train.train_and_evaluate(small_config(num_epochs=2, latents=3), str(workdir))
    assert "new --workdir" in str(error.value)
    assert snapshot(workdir) == before


def test_checkpoint_whose_shapes_differ_from_what_the_code_builds_is_refused(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    train.train_and_evaluate(small_config(num_epochs=1), str(workdir))
    before = snapshot(workdir)
    # Same config, but the code now builds a wider model (as after a change to models.py).
    original = models.build_model
    monkeypatch.setattr(
        models,
        "build_model",
        lambda config, shape: original(small_config(hidden_sizes=(65,)), shape),
    )
    with pytest.raises(WorkdirError, match="model of another shape"):
        train.train_and_evaluate(small_config(num_epochs=2), str(workdir))
    assert snapshot(workdir) == before


@pytest.mark.parametrize("damage", ["truncate_arrays", "garbage_meta", "delete_manifest"])
def test_corrupt_checkpoint_is_reported_and_left_untouched(tmp_path, damage):
    workdir = tmp_path / "run"
    train.train_and_evaluate(small_config(num_epochs=1), str(workdir))
    latest = workdir / "checkpoints" / "8"
    if damage == "truncate_arrays":
        for root, _, files in os.walk(latest / "state"):
            for name in files:
                if "ocdbt" in root or name.startswith("manifest"):
                    with open(os.path.join(root, name), "r+b") as f:
                        f.truncate(3)
    elif damage == "garbage_meta":
        (latest / "meta" / "metadata").write_bytes(b"\x00garbage{")
    else:
        (latest / "state" / "manifest.ocdbt").unlink()
    before = snapshot(workdir)
    with pytest.raises(WorkdirError, match=r"checkpoint .*checkpoints/8 cannot be read.*untouched"):
        train.train_and_evaluate(small_config(num_epochs=2), str(workdir))
    assert snapshot(workdir) == before


def test_divergence_is_stopped_with_the_step_and_the_quantity(tmp_path):
    with pytest.raises(DivergenceError) as error:
        train.train_and_evaluate(small_config(learning_rate=1e30), str(tmp_path / "run"))
    message = str(error.value)
    assert "became non-finite at step" in message and "learning_rate (now 1e+30)" in message
    assert "loss=" in message and "kl=" in message
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_divergence_keeps_the_last_good_checkpoint_and_metrics(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    train.train_and_evaluate(small_config(num_epochs=1), str(workdir))
    before = snapshot(workdir / "checkpoints")
    metrics_before = (workdir / "metrics.jsonl").read_text()

    make_elbo_loss = objectives.make_elbo_loss

    def poisoned_elbo_loss(model, beta, kl_warmup_steps=0):
        loss_fn = make_elbo_loss(model, beta, kl_warmup_steps)

        def poisoned(params, x, key, step):
            loss, metrics = loss_fn(params, x, key, step)
            bad = jnp.where(step >= 11, jnp.nan, 0.0)  # fault injection from step 11 on
            return loss + bad, {**metrics, "loss": loss + bad, "kl": metrics["kl"] + bad}

        return poisoned

    monkeypatch.setattr(objectives, "make_elbo_loss", poisoned_elbo_loss)
    with pytest.raises(
        DivergenceError,
        match=r"at step 12 \(epoch 2\).*kl=nan.*checkpoint "
        r"\(step 8\) is kept",
    ):
        train.train_and_evaluate(small_config(num_epochs=3), str(workdir))
    assert snapshot(workdir / "checkpoints") == before
    assert (workdir / "metrics.jsonl").read_text() == metrics_before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config.dataset=cifar99"], "error: dataset='cifar99' is not known; allowed:"),
        (
            ["--config.latnets=3"],
            "error: invalid --config override: 'latnets'; Did you mean \"latents\"",
        ),
        (["--config.batch_size=abc"], "error: flag --config.batch_size=abc: invalid literal"),
        (
            ["--config.batch_size=50001"],
            "error: batch_size=50001 is larger than the training split",
        ),
        (
            ["--config=no_such_config.py"],
            "error: --config could not be loaded: [Errno 2] No such file",
        ),
        (["--config.learning_rate=-1"], "error: learning_rate=-1.0 must be a finite number > 0."),
    ],
)
def test_cli_reports_bad_input_in_one_line_without_traceback(tmp_path, args, message):
    result = run_cli("--workdir", str(tmp_path / "run"), *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_cli_unwritable_workdir(tmp_path):
    (tmp_path / "a_file").write_text("")
    result = run_cli("--workdir", str(tmp_path / "a_file" / "run"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot be used: Not a directory" in result.stderr
