"""Populations: each member of a vmapped population is exactly its single-model run."""

import json
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import ELBO_FIELDS, small_config, without_timings

from vae_jax import models, population, train
from vae_jax.config import OBJECTIVES, POPULATION_WEIGHT_FIELDS
from vae_jax.errors import ConfigError, Preempted, WorkdirError
from vae_jax.optim import build_optimizer
from vae_jax.step import create_train_state


def population_config(**overrides):
    """The small test config at a rate at which two epochs already separate the betas' KLs; no
    picture grids, which a population does not draw anyway."""
    return small_config(
        **{
            "objective": "beta_vae",
            "learning_rate": 3e-3,
            "num_image_examples": 0,
            **overrides,
        }
    )


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """`single_run(config) -> records` of train_and_evaluate, each config trained once."""
    cache = {}

    def run(config):
        key = json.dumps(config.to_dict(), sort_keys=True, default=list)
        if key not in cache:
            cache[key] = train.train_and_evaluate(config, str(tmp_path_factory.mktemp("single")))
        return cache[key]

    return run


@pytest.fixture(scope="module")
def seeds_population(tmp_path_factory):
    """Three seeds (0, 1, 2), two epochs: (config, workdir, records per member)."""
    config = population_config(population_size=3)
    workdir = str(tmp_path_factory.mktemp("population"))
    return config, workdir, population.train_population(config, workdir)


def assert_same_run(member_records, single_records):
    """Exact epochs and steps; the ELBO figures to float tolerance."""
    assert [(r["epoch"], r["step"]) for r in member_records] == [
        (r["epoch"], r["step"]) for r in single_records
    ]
    for member, single in zip(member_records, single_records):
        for field in ELBO_FIELDS:
            np.testing.assert_allclose(member[field], single[field], rtol=1e-4, err_msg=field)


def assert_members_match_single_runs(config, records, single_run):
    assert len(records) == config.population_size
    for k, member_records in enumerate(records):
        assert_same_run(member_records, single_run(population.member_config(config, k)))


def test_each_seed_member_is_its_single_run(seeds_population, single_run):
    config, _, records = seeds_population
    assert_members_match_single_runs(config, records, single_run)
    assert len({r[-1]["test_elbo"] for r in records}) == 3  # three different models


def test_workdir_layout(seeds_population):
    _, workdir, records = seeds_population
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["population_size"] == 3
    for k, member_records in enumerate(records):
        path = os.path.join(workdir, "members", str(k), "metrics.jsonl")
        with open(path) as f:
            assert [json.loads(line) for line in f] == member_records
        for record in member_records:
            # The whole population's epoch: every member's examples in one wall time.
            np.testing.assert_allclose(
                record["examples_per_second"], 3 * 8 * 128 / record["train_seconds"], rtol=1e-9
            )
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["16", "8"]


def test_beta_sweep_members_are_their_single_runs_and_order_the_kl(tmp_path, single_run):
    config = population_config(population_size=3, population_betas=(0.5, 1, 4))
    records = population.train_population(config, str(tmp_path / "sweep"))
    assert_members_match_single_runs(config, records, single_run)
    kl = [member_records[-1]["test_kl"] for member_records in records]
    assert kl[0] > kl[1] > kl[2]  # a heavier KL weight buys a smaller KL


def test_per_member_learning_rates(tmp_path, single_run):
    config = population_config(population_size=2, population_learning_rates=(3e-3, 1e-3))
    records = population.train_population(config, str(tmp_path / "rates"))
    assert_members_match_single_runs(config, records, single_run)


@pytest.mark.parametrize(
    "settings",
    [
        {"lr_schedule": "constant"},
        {"lr_schedule": "cosine"},
        {"lr_schedule": "warmup_cosine", "warmup_steps": 3},
        {"optimizer": "adamw", "weight_decay": 0.1},
    ],
)
def test_a_traced_learning_rate_gives_the_constant_rate_optimizer(settings):
    """The population's optimizer, rate traced, has build_optimizer's state and numbers.

    To rounding: XLA may fold a constant rate into neighbouring constants, a traced one not.
    """
    config = population_config(learning_rate=3e-3, **settings)
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.ones(4)}
    grads = [jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 1)), params) for i in range(6)]

    def run(optimizer):
        state = optimizer.init(params)
        current = params
        for g in grads:
            updates, state = optimizer.update(g, state, current)
            current = optax.apply_updates(current, updates)
        return current, state

    constant = jax.jit(lambda: run(build_optimizer(config, 10)))()
    traced = jax.jit(lambda rate: run(build_optimizer(config, 10, rate)))(jnp.float32(3e-3))
    assert jax.tree.structure(traced) == jax.tree.structure(constant)
    for a, b in zip(jax.tree.leaves(traced), jax.tree.leaves(constant)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_a_member_starts_from_its_single_runs_initial_state():
    """Bit for bit, even for a seed beyond int32 (the tests above cover small seeds)."""
    config = population_config()
    model = models.build_model(config, (28, 28, 1))
    optimizer = build_optimizer(config, 16)
    seed = 2**31 + 5
    stacked = population.initial_population_state(model, optimizer, (28, 28, 1), 4, [seed])
    member = population.member_state(stacked, 0)
    single = create_train_state(model, optimizer, (28, 28, 1), 4, seed)
    assert jax.tree.structure(member) == jax.tree.structure(single)
    np.testing.assert_array_equal(jax.random.key_data(member.key), jax.random.key_data(single.key))
    for a, b in zip(jax.tree.leaves(member.params), jax.tree.leaves(single.params)):
        np.testing.assert_array_equal(a, b)


def test_resume_continues_the_population_exactly(seeds_population, tmp_path):
    config, finished, straight = seeds_population
    workdir = str(tmp_path / "resumed")
    # As if the run had stopped after epoch 1: its checkpoint is the latest.
    shutil.copytree(finished, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "16"))
    resumed = population.train_population(config, workdir)
    for member_resumed, member_straight in zip(resumed, straight):
        assert without_timings(member_resumed) == without_timings(member_straight)  # bit for bit
        assert member_resumed[0] == member_straight[0]  # epoch 1 kept, not redone
        assert member_resumed[1]["train_seconds"] != member_straight[1]["train_seconds"]
    assert population.train_population(config, workdir) == resumed  # finished: nothing to do


class _StopAtOnce:
    """Stands in for loop.StopSignals: as if SIGTERM had come during the first call."""

    signum = signal.SIGTERM
    requested = True

    def poll(self):
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        pass


def test_a_preempted_population_resumes_mid_epoch_exactly(seeds_population, tmp_path, monkeypatch):
    _, _, straight = seeds_population
    config = population_config(population_size=3, steps_per_call=4)
    workdir = str(tmp_path / "preempted")
    with pytest.raises(Preempted):
        population.train_population(config, workdir, signals=_StopAtOnce)
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["4"]  # inside epoch 1
    # Calls of 4 steps, against the straight run's calls of whole epochs.
    resumed = population.train_population(config, workdir)
    for member_resumed, member_straight in zip(resumed, straight):
        assert without_timings(member_resumed) == without_timings(member_straight)


def test_exported_member_resumes_as_a_single_run(seeds_population, tmp_path):
    config, workdir, records = seeds_population
    out = str(tmp_path / "member1")
    exported = population.export_member(workdir, 1, out, config)
    assert exported == records[1]
    member = population.member_config(config, 1)
    with open(os.path.join(out, "config.json")) as f:
        saved = json.load(f)
    assert (saved["seed"], saved["population_size"], saved["beta"]) == (1, 1, 1.0)

    member.num_epochs = 3
    continued = train.train_and_evaluate(member, out)
    assert continued[:2] == records[1]  # resumed, not redone: even the timings are the export's
    assert (continued[2]["epoch"], continued[2]["step"]) == (3, 24)
    assert continued[2]["test_elbo"] > continued[1]["test_elbo"]  # and it trains on


def test_unusable_requests_fail_with_one_sentence(seeds_population, tmp_path):
    config, workdir, _ = seeds_population
    with pytest.raises(ConfigError, match="member 3 is not in the population; allowed: 0 to 2"):
        population.export_member(workdir, 3, str(tmp_path / "out"), config)
    with pytest.raises(WorkdirError, match="holds no population checkpoint"):
        population.export_member(str(tmp_path / "empty"), 0, str(tmp_path / "out"), config)
    with pytest.raises(ConfigError, match="pipeline='stream'"):
        population.train_population(
            population_config(population_size=2, pipeline="stream"), str(tmp_path / "streamed")
        )
    with pytest.raises(ConfigError, match="population_betas has 2 values"):
        population.train_population(
            population_config(population_size=3, population_betas=(1, 2)), str(tmp_path / "b")
        )
    assert not os.path.exists(tmp_path / "out")


# Per objective: the members' values of its weight (None: it has none) and settings that keep
# the test small. Every objective trains as a population through `objectives.make_objective`.
EVERY_OBJECTIVE = {
    "vae": (None, {}),
    "beta_vae": ((1.0, 4.0), {}),
    "annealed_vae": ((100.0, 1000.0), {"capacity_steps": 8}),
    "beta_tcvae": ((1.0, 6.0), {}),
    "factor_vae": ((5.0, 40.0), {"discriminator_hidden": (32, 32)}),
    "iwae": (None, {"iwae_samples": 3}),
    "ae": (None, {}),
    "dae": ((0.1, 0.5), {}),
    "dip_vae_i": ((1.0, 20.0), {}),
    "dip_vae_ii": ((1.0, 20.0), {}),
    "info_vae": ((10.0, 500.0), {}),
}


def test_the_table_covers_every_objective():
    assert set(EVERY_OBJECTIVE) == set(OBJECTIVES)
    assert {o for o, (w, _) in EVERY_OBJECTIVE.items() if w} == set(POPULATION_WEIGHT_FIELDS)


@pytest.mark.parametrize("objective", sorted(EVERY_OBJECTIVE))
def test_every_objective_trains_as_a_population_member_by_member(objective, tmp_path, single_run):
    """Member 1 (its own weight and learning rate, traced in the one program) is its single run."""
    weights, settings = EVERY_OBJECTIVE[objective]
    config = population_config(
        objective=objective,
        population_size=2,
        num_epochs=1,
        population_learning_rates=(1e-3, 3e-3),
        population_weights=weights or (),
        **settings,
    )
    records = population.train_population(config, str(tmp_path))
    assert [len(r) for r in records] == [1, 1]
    first, second = records[0][0], records[1][0]
    assert first["train_loss"] != second["train_loss"]
    single = single_run(population.member_config(config, 1))[0]
    assert set(second) == set(single)
    for field, value in single.items():
        if field in ("train_seconds", "examples_per_second"):
            continue
        np.testing.assert_allclose(second[field], value, rtol=1e-4, err_msg=field)
    if weights:
        member = population.member_config(config, 1)
        assert member[POPULATION_WEIGHT_FIELDS[objective]] == weights[1]
