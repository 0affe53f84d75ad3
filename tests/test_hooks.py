"""train_and_evaluate's hooks: metrics folded into the compiled evaluation scan, and a host
callback whose fields join the record; resumed runs stay bit-identical with them."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import small_config, without_timings

from vae_jax import data, population, train
from vae_jax.errors import ConfigError


def pixel_mass(model, params, x, keys):
    """Per example: the sum of its pixels; checkable by hand from the records."""
    del model, params, keys
    return jnp.sum(x, axis=(1, 2, 3))


def code_norm(model, params, x, keys):
    """Per example: the squared norm of its encoder mean (depends on the trained parameters)."""
    del keys
    mean, _ = model.apply(params, x, method="encode")
    return jnp.sum(mean**2, axis=-1)


def parameter_norm(record, state):
    """A host callback: the parameters' global norm and an echo of the record's epoch."""
    norm = float(jnp.sqrt(sum(jnp.sum(p**2) for p in jax.tree.leaves(state.params))))
    return {"param_norm": norm, "seen_epoch": record["epoch"]}


HOOKS = {"eval_metrics": {"pixel_mass": pixel_mass, "code_norm": code_norm}}


def test_eval_metrics_are_split_means_and_hook_fields_join_the_record(tmp_path):
    config = small_config(max_eval_examples=300, eval_batch_size=128)  # a padded last batch
    records = train.train_and_evaluate(config, str(tmp_path), **HOOKS, on_epoch_end=parameter_norm)
    _, _, eval_records = data.load_splits(config)
    by_hand = np.mean(eval_records.reshape(len(eval_records), -1).astype(np.float64).sum(1) / 255)
    for epoch, record in enumerate(records, start=1):
        np.testing.assert_allclose(record["test_pixel_mass"], by_hand, rtol=1e-5)
        assert record["test_code_norm"] > 0 and record["param_norm"] > 0
        assert record["seen_epoch"] == epoch
    assert records[0]["test_code_norm"] != records[1]["test_code_norm"]
    written = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert written == records


def test_resumed_run_with_hooks_equals_the_uninterrupted_one(tmp_path):
    config = small_config(num_epochs=3)
    straight = train.train_and_evaluate(
        config, str(tmp_path / "straight"), **HOOKS, on_epoch_end=parameter_norm
    )
    config.num_epochs = 2
    train.train_and_evaluate(
        config, str(tmp_path / "resumed"), **HOOKS, on_epoch_end=parameter_norm
    )
    config.num_epochs = 3
    resumed = train.train_and_evaluate(
        config, str(tmp_path / "resumed"), **HOOKS, on_epoch_end=parameter_norm
    )
    assert without_timings(resumed) == without_timings(straight)


def test_population_hooks_see_each_member(tmp_path):
    config = small_config(
        num_epochs=1, population_size=2, objective="beta_vae", population_weights=(1.0, 4.0)
    )
    seen = []

    def hook(record, state):
        seen.append(jax.tree.leaves(state.params)[0].shape)
        return {"member_norm": parameter_norm(record, state)["param_norm"]}

    members = population.train_population(config, str(tmp_path), **HOOKS, on_epoch_end=hook)
    assert len(seen) == 2 and seen[0] == seen[1]  # one member's parameters each, no member axis
    assert members[0][0]["member_norm"] != members[1][0]["member_norm"]
    np.testing.assert_allclose(
        members[0][0]["test_pixel_mass"], members[1][0]["test_pixel_mass"], rtol=1e-6
    )


@pytest.mark.parametrize(
    "hooks, message",
    [
        ({"eval_metrics": {"elbo": pixel_mass}}, r"eval_metrics name 'elbo' must be"),
        ({"eval_metrics": {"bad name": pixel_mass}}, r"eval_metrics name 'bad name'"),
        (
            {"eval_metrics": {"total": lambda m, p, x, k: jnp.sum(x)}},
            r"eval_metrics\['total'\] returned shape \(\) .* one value per example",
        ),
    ],
)
def test_bad_eval_metrics_are_refused_before_the_workdir_is_touched(tmp_path, hooks, message):
    with pytest.raises(ConfigError, match=message):
        train.train_and_evaluate(small_config(), str(tmp_path / "run"), **hooks)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_hook_field_that_replaces_a_record_field_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"on_epoch_end returned 'test_elbo', which the record"):
        train.train_and_evaluate(
            small_config(num_epochs=1), str(tmp_path), on_epoch_end=lambda r, s: {"test_elbo": 0}
        )


def test_a_hook_value_json_cannot_hold_is_one_sentence_and_nothing_is_appended(tmp_path):
    with pytest.raises(ConfigError, match=r"on_epoch_end returned when=<object .* cannot hold"):
        train.train_and_evaluate(
            small_config(num_epochs=1), str(tmp_path), on_epoch_end=lambda r, s: {"when": object()}
        )
    log = tmp_path / "metrics.jsonl"
    assert not (log.exists() and log.read_text().strip())
