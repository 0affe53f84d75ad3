"""Objectives registered by name, as a user's own file would: they reach the real driver."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import small_config, without_timings

import vae_jax
from vae_jax import config as config_lib
from vae_jax import objectives, registry


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
