"""Objectives registered by name, as a user's own file would: they reach the real driver."""

import json
import os

import flax.linen
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import small_config, without_timings

import vae_jax
from vae_jax import config as config_lib
from vae_jax import data, models, objectives, registry


def build_moment_matched(config, model):
    """A regularized ELBO with a hand-checkable penalty: λ times the batch's mean of z²."""

    def regularizer(terms, step):
        second_moment = jnp.mean(terms.z**2)
        return config.moment_weight * second_moment, {"second_moment": second_moment}

    return objectives.make_regularized_loss(model, regularizer)


@pytest.fixture
def moment_objective():
    spec = vae_jax.register_objective(
        "moment_vae",
        build_moment_matched,
        fields={"moment_weight": 0.5},
        sweepable=("moment_weight",),
    )
    yield spec
    vae_jax.unregister_objective("moment_vae")
    assert "moment_weight" not in config_lib.get_config()


def test_the_built_ins_are_registrations(moment_objective):
    assert config_lib.OBJECTIVES == registry.BUILTIN_OBJECTIVES
    assert registry.objective_names()[-1] == "moment_vae"
    assert config_lib.objective_fields()["moment_weight"] == ("moment_vae",)
    assert config_lib.objective_fields()["factor_gamma"] == ("factor_vae",)
    assert config_lib.population_weight_field("moment_vae") == "moment_weight"
    assert config_lib.POPULATION_WEIGHT_FIELDS["annealed_vae"] == "capacity_gamma"
    assert not objectives.is_variational("dae") and objectives.is_variational("moment_vae")


def test_registration_mistakes_are_one_sentence(moment_objective):
    with pytest.raises(vae_jax.ConfigError, match="'moment_vae' is registered already"):
        vae_jax.register_objective("moment_vae", build_moment_matched)
    with pytest.raises(vae_jax.ConfigError, match="fields that exist already: beta"):
        vae_jax.register_objective("other", build_moment_matched, fields={"beta": 2.0})
    with pytest.raises(vae_jax.ConfigError, match="must be an identifier"):
        vae_jax.register_objective("my-vae", build_moment_matched)
    with pytest.raises(vae_jax.ConfigError, match="'vae' is built in"):
        vae_jax.unregister_objective("vae")
    with pytest.raises(vae_jax.ConfigError, match="objective='nope' is not known; allowed: 'vae'"):
        config_lib.validate_config(small_config(objective="nope"))


def test_another_objectives_setting_is_refused_not_ignored(moment_objective):
    with pytest.raises(vae_jax.ConfigError, match=r"factor_gamma=20.0 is set, but objective='vae'"):
        config_lib.validate_config(small_config(factor_gamma=20.0))
    with pytest.raises(vae_jax.ConfigError, match=r"moment_weight=2.0 is set, but objective='vae'"):
        config_lib.validate_config(small_config(moment_weight=2.0))
    config_lib.validate_config(small_config(objective="moment_vae", moment_weight=2.0))


def test_a_registered_objective_trains_resumes_and_sweeps(moment_objective, tmp_path):
    config = small_config(objective="moment_vae", moment_weight=3.0, num_epochs=2)
    straight = vae_jax.train_and_evaluate(config, str(tmp_path / "straight"))
    assert "train_second_moment" in straight[0] and "test_elbo" in straight[0]
    with open(tmp_path / "straight" / "config.json") as f:
        assert json.load(f)["moment_weight"] == 3.0
    config.num_epochs = 1
    vae_jax.train_and_evaluate(config, str(tmp_path / "resumed"))
    config.num_epochs = 2
    resumed = vae_jax.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert without_timings(resumed) == without_timings(straight)
    # A population sweeps the objective's own field, traced: member 0 (seed 0) is the run above.
    sweep = small_config(
        objective="moment_vae", num_epochs=2, population_size=2, population_weights=(3.0, 0.0)
    )
    records = vae_jax.train_population(sweep, str(tmp_path / "sweep"))
    for field in ("train_loss", "train_second_moment", "test_elbo"):
        np.testing.assert_allclose(records[0][1][field], straight[1][field], rtol=1e-4)
    assert records[1][0]["train_loss"] < records[0][0]["train_loss"]  # no penalty at weight 0
    assert os.path.isfile(tmp_path / "sweep" / "members" / "1" / "metrics.jsonl")


class TinyEncoder(flax.linen.Module):
    """A user's own encoder: one convolution, then the two heads."""

    latents: int

    @flax.linen.compact
    def __call__(self, x, train=False):
        h = flax.linen.relu(flax.linen.Conv(4, (3, 3), strides=(2, 2))(x))
        h = h.reshape((h.shape[0], -1))
        return flax.linen.Dense(self.latents)(h), flax.linen.Dense(self.latents)(h)


class TinyDecoder(flax.linen.Module):
    image_shape: tuple

    @flax.linen.compact
    def __call__(self, z, train=False):
        pixels = int(np.prod(self.image_shape))
        return flax.linen.Dense(pixels)(z).reshape((z.shape[0], *self.image_shape))


def build_tiny(config, image_shape):
    return models.VAE(TinyEncoder(config.latents), TinyDecoder(image_shape), config.likelihood)


def load_noise(config):
    """Float [0, 1] images in memory: 8x8 gray noise, 512 training and 128 test images."""
    rng = np.random.default_rng(config.seed)
    images = rng.random((640, 8, 8)).astype(np.float32)
    return data.from_arrays(images[:512], images[512:], name="noise")


@pytest.fixture
def user_model_and_data():
    vae_jax.register_model("tiny_conv", build_tiny)
    vae_jax.register_dataset("noise", load_noise)
    yield
    registry.unregister("tiny_conv")
    registry.unregister("noise")


def test_a_registered_model_and_data_set_train_resume_load_and_evaluate(
    user_model_and_data, tmp_path
):
    settings = {"model": "tiny_conv", "dataset": "noise", "likelihood": "gaussian"}
    config = small_config(**settings, max_train_examples=0, num_epochs=2, batch_size=64)
    straight = vae_jax.train_and_evaluate(config, str(tmp_path / "straight"))
    assert [r["step"] for r in straight] == [8, 16] and np.isfinite(straight[-1]["test_elbo"])
    with open(tmp_path / "straight" / "config.json") as f:
        assert json.load(f)["model"] == "tiny_conv"  # recorded as what it is
    config.num_epochs = 1
    vae_jax.train_and_evaluate(config, str(tmp_path / "resumed"))
    config.num_epochs = 2
    resumed = vae_jax.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert without_timings(resumed) == without_timings(straight)
    model = vae_jax.load(str(tmp_path / "straight"))
    assert model.image_shape == (8, 8, 1) and isinstance(model.model.encoder, TinyEncoder)
    assert model.reconstruct(np.zeros((2, 8, 8, 1), np.float32)).shape == (2, 8, 8, 1)
    result = vae_jax.evaluate_workdir(str(tmp_path / "straight"), iwae_samples=8, draw=False)
    assert result["checkpoint_step"] == 16 and np.isfinite(result["metrics"]["iwae_nll"])


def test_user_models_and_data_sets_are_checked(user_model_and_data):
    with pytest.raises(vae_jax.ConfigError, match="model 'tiny_conv' is registered already"):
        vae_jax.register_model("tiny_conv", build_tiny)
    with pytest.raises(vae_jax.ConfigError, match="model='nope' is not known; allowed: 'mlp'"):
        config_lib.validate_config(small_config(model="nope"))
    vae_jax.register_dataset("not_a_dataset", lambda config: np.zeros((4, 2, 2)))
    try:
        with pytest.raises(vae_jax.ConfigError, match="returned a ndarray, not a vae_jax.data"):
            data.load_splits(small_config(dataset="not_a_dataset"))
    finally:
        registry.unregister("not_a_dataset")
