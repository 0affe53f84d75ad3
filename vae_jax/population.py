"""Populations: K models trained side by side in one compiled program with `jax.vmap`.

A sweep of any objective's weight (β, γ, capacity, ...), of learning rates or of K seeds, on one
accelerator in one go. Member k is exactly the single-model run of `config.member_config(config,
k)`: seed `config.seed + k`, its weight and its learning rate (see `get_config`'s population
fields). It has the same initial parameters (`step.create_train_state` with its seed), the same per-step
keys and shuffle order (its own root key's streams), and the same optimizer, so its metrics equal
the single run's up to the rounding of batched matrix products. (Training amplifies rounding
differences, as it would those between two machines: a ReLU input at zero flips, Adam makes a
full step of a cancelling gradient. Within an epoch or two of the default model the parameters
drift apart by several percent while every figure stays equal to about 1e-4; see
benchmarks/population.py.)

How: the epoch function of `step.py` (shuffle, gather, a `lax.scan` of train steps) is vmapped
over a leading member axis of the train state and of the hyperparameters, with the training
split shared (in_axes None). Each member draws its own permutation, so the batch gather takes
per-member indices from the one copy of the data. The weight and the learning rate are traced
(K,) arguments, not Python constants: the objective (`objectives.make_objective` with `traced`)
and the optimizer are built inside the vmapped function from them, so one compiled program serves
any sweep of the same shape, for every objective.

Several devices: the member axis is split over a ('members', 'data') mesh of gcd(K, D) member
groups of D / gcd(K, D) devices each (`parallel.population_mesh`). The state and the
hyperparameters are placed by `parallel.member_sharding`, the splits replicated; vmap's
`spmd_axis_name` splits each member's gathered batch over its group's 'data' devices, and XLA
all-reduces the gradients within the group. K a multiple of D gives every device K / D members
and whole batches. Every draw comes from the members' seeds, so the figures do not depend on D
(to rounding), and a checkpoint written on any device count resumes on any other: it is restored
into the sharding of the job's initial state.

The learning rate is an argument rather than an `optax.inject_hyperparams` entry of the optimizer
state on purpose: that way the population state is the members' single-model states stacked along
axis 0, leaf for leaf (`stack_states`), its checkpoints hold exactly that, and a member's slice is
a single-model `TrainState` that `train.train_and_evaluate` resumes (`export_member`) without
converting optimizer states.

Workdir of a population run:

  config.json                  the population's resolved config
  members/<k>/metrics.jsonl    member k's records, with the single run's fields; train_seconds is
                               the wall time of the whole population epoch, examples_per_second
                               counts every member's examples
  run.json                     the image shape, kind 'population' and its size
  checkpoints/<step>/          the stacked population state (rerunning the command resumes it)

The host loop is `loop.run`'s, the same as a single run's: only the data differ.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from vae_jax import (
    checkpoint,
    engine,
    evaluation,
    loop,
    models,
    objectives,
    optim,
    parallel,
    rng,
)
from vae_jax import workdir as workdir_lib
from vae_jax.config import (
    config_to_dict,
    member_config,
    population_weight_field,
    validate_config,
)
from vae_jax.errors import ConfigError, WorkdirError
from vae_jax.step import TrainState, create_train_state, make_train_epoch, make_train_step

__all__ = [
    "member_config",
    "stack_states",
    "member_state",
    "initial_population_state",
    "member_hyperparameters",
    "place_members",
    "make_population_epoch",
    "build_job",
    "train_population",
    "export_member",
]


def stack_states(states: list[TrainState]) -> TrainState:
    """Members' single-model states -> one population state, each leaf stacked to (K, ...)."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def member_state(population_state: TrainState, k: int) -> TrainState:
    """Member k's slice of a population state: a single-model `TrainState`."""
    return jax.tree.map(lambda leaf: leaf[k], population_state)


def initial_population_state(
    model: models.VAE, optimizer, image_shape, latents: int, seeds: list[int], critic=None
) -> TrainState:
    """`step.create_train_state` of every seed, stacked: leaves (K, ...).

    The seed is passed traced (uint32) so that the init compiles once for all members, not once
    per member; JAX reduces a Python seed modulo 2**32 too, so the root key, and with it every
    member's initial state, is exactly its single run's (tested).
    """

    def create(seed):
        return create_train_state(model, optimizer, image_shape, latents, seed, critic=critic)

    if all(seed < 2**32 for seed in seeds):
        create_from_traced_seed = jax.jit(create)
        return stack_states([create_from_traced_seed(np.uint32(seed)) for seed in seeds])
    return stack_states([create(seed) for seed in seeds])  # as the single runs do, seed by seed


def place_members(tree, mesh):
    """A population state (or any tree of (K, ...) leaves) on one device -> the same values split
    over `mesh` by `parallel.member_sharding`: each member group's devices hold its members.

    The leaves are read back to the host and placed with `jax.make_array_from_callback`, so every
    process places its own (identical) copy; typed keys travel as their raw key data.
    """

    def place(leaf):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = parallel.put_members(jax.random.key_data(leaf), mesh)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        return parallel.put_members(leaf, mesh)

    return jax.tree.map(place, tree)


def member_hyperparameters(members) -> dict[str, jax.Array]:
    """The traced per-member arguments: float32 (K,) arrays of the learning rate and, for an
    objective with a weight, of that field (`config.population_weight_field`)."""
    fields = ["learning_rate"]
    weight = population_weight_field(members[0].objective)
    if weight is not None:
        fields.append(weight)
    return {field: jnp.asarray([m[field] for m in members], jnp.float32) for field in fields}


def make_population_epoch(
    model: models.VAE,
    config: ml_collections.ConfigDict,
    render,
    schedule_steps: int,
    steps_per_epoch: int,
    num_steps: int,
    mesh=None,
):
    """The vmapped epoch: `population_epoch(states, hyperparameters, images)`.

    Args:
      model: the VAE every member trains.
      config: the population config (its shared fields: batch size, optimizer, schedule, ...).
      render: the data set's record renderer, or None when records are images.
      schedule_steps: the length of the learning-rate schedule, as in the single run.
      steps_per_epoch: training batches per epoch.
      num_steps: updates in this call (see `step.make_train_epoch`).
      mesh: a `parallel.population_mesh` the members are split over, or None (one device).
        Each member's gathered batch is then split over the mesh's 'data' axis within its
        member group (vmap's `spmd_axis_name` adds the 'members' axis to the constraint).

    Returns:
      A function of states (a population `TrainState`, leaves (K, ...)), hyperparameters
      (`member_hyperparameters`: name -> (K,)) and images (N, ...) shared by all members,
      and optionally `num_valid` (a traced count: the steps past it are masked, as in
      `step.make_train_epoch`), returning the new states and a dict of (K, num_steps)
      per-step metrics.
    """

    batch_sharding = None if mesh is None else parallel.batch_sharding(mesh)

    def member_epoch(state, hyperparameters, images, num_valid):
        # Built per trace from traced values: one program for any values of the sweep.
        traced = dict(hyperparameters)
        optimizer = optim.build_optimizer(config, schedule_steps, traced.pop("learning_rate"))
        train_step = make_train_step(
            objectives.make_objective(config, model, traced),
            optimizer,
            config.dynamic_binarization,
            render,
            skip_nonfinite=config.nan_policy == "skip",
        )
        epoch = make_train_epoch(
            train_step, config.batch_size, steps_per_epoch, num_steps, batch_sharding
        )
        return epoch(state, images, num_valid)

    spmd = {} if mesh is None else {"spmd_axis_name": parallel.MEMBERS_AXIS}
    vmapped = jax.vmap(member_epoch, in_axes=(0, 0, None, None), **spmd)

    def population_epoch(states, hyperparameters, images, num_valid=None):
        return vmapped(states, hyperparameters, images, num_valid)

    return population_epoch


@dataclasses.dataclass
class PopulationPrograms:
    """The compiled programs of K members: the vmapped epoch per call length, the vmapped
    evaluation. Populations draw no per-epoch pictures (export a member for those).

    The state and the hyperparameters are split over `mesh` by `parallel.member_sharding`, the
    splits replicated; the programs keep the state's sharding and give their metrics replicated,
    so that every process can read all members' figures."""

    make_epoch: object  # num_steps -> the vmapped epoch function
    mesh: jax.sharding.Mesh
    hyperparameters: dict
    train_on_device: jax.Array
    evaluate_fn: object
    eval_on_device: jax.Array
    eval_keys: jax.Array
    description: str
    size: int
    call_steps: int = 0
    programs: dict = dataclasses.field(default_factory=dict)

    def scan_length(self, num_steps: int) -> int:
        """Calls up to `call_steps` long run in one program, their extra steps masked, so an
        epoch's remainder or a resumed epoch's first call compiles nothing more."""
        return self.call_steps if 0 < num_steps <= self.call_steps else num_steps

    def prepare(self, state, first_step: int, num_steps: int) -> None:
        length = self.scan_length(num_steps)
        if length in self.programs:
            return
        started = time.perf_counter()
        self.programs[length] = (
            jax.jit(
                self.make_epoch(length),
                donate_argnums=0,
                out_shardings=(parallel.member_sharding(self.mesh), parallel.replicated(self.mesh)),
            )
            .lower(state, self.hyperparameters, self.train_on_device, np.int32(length))
            .compile()
        )
        logging.info(
            "Compiled the %d-member, %d-step population program in %.2f s.",
            self.size,
            length,
            time.perf_counter() - started,
        )

    def run(self, state, first_step: int, num_steps: int, should_stop):
        self.prepare(state, first_step, num_steps)
        program = self.programs[self.scan_length(num_steps)]
        state, metrics = program(
            state, self.hyperparameters, self.train_on_device, np.int32(num_steps)
        )
        return state, {k: v[:, :num_steps] for k, v in jax.device_get(metrics).items()}

    def evaluate(self, state) -> dict:
        return self.evaluate_fn(state.params, self.eval_on_device, self.eval_keys)

    def save_pictures(self, images_dir: str, epoch: int, state, write: bool) -> None:
        del images_dir, epoch, state, write

    def settle_step_loop(self, state, recorded, resumed):
        """A population's epoch is always one scanned program of every member."""
        del state, recorded, resumed
        return None


def _build_programs(config, parts: engine.RunParts, members, mesh, eval_metrics=None):
    """`state -> PopulationPrograms`, for `loop.Job.build_programs`."""
    split = mesh.shape[parallel.DATA_AXIS]  # devices per member group

    def build(state) -> PopulationPrograms:
        # Within a member group, every evaluation batch is split over the group's devices too.
        evaluate, eval_on_device = evaluation.make_split_evaluate(
            config,
            parts.model,
            parts.dataset.render,
            parts.eval_records,
            mesh,
            shard_batches=split > 1,
            extra_metrics=eval_metrics,
        )
        evaluate_members = jax.vmap(
            evaluate, in_axes=(0, None, 0), spmd_axis_name=parallel.MEMBERS_AXIS
        )
        return PopulationPrograms(
            make_epoch=lambda num_steps: make_population_epoch(
                parts.model,
                config,
                parts.dataset.render,
                parts.schedule_steps,
                parts.steps_per_epoch,
                num_steps,
                mesh,
            ),
            mesh=mesh,
            hyperparameters=place_members(member_hyperparameters(members), mesh),
            train_on_device=parallel.put_replicated(parts.train_records, mesh),
            evaluate_fn=jax.jit(evaluate_members, out_shardings=parallel.replicated(mesh)),
            eval_on_device=eval_on_device,
            eval_keys=jax.vmap(rng.stream_key, in_axes=(0, None))(state.key, rng.EVAL_STREAM),
            description=(
                f"Data {parts.dataset.name}: {len(parts.train_records)} training examples, "
                f"{len(members)} members in one program over {mesh.size} devices "
                f"({mesh.shape[parallel.MEMBERS_AXIS]} member groups, each member's batch split "
                f"over {split})."
            ),
            size=len(members),
            call_steps=min(config.steps_per_call or parts.steps_per_epoch, parts.steps_per_epoch),
        )

    return build


def _population_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """`parallel.population_mesh` of the config's population over every device.

    Raises:
      ConfigError: a batch_size that the devices of a member group cannot split evenly.
    """
    size, devices = config.population_size, jax.device_count()
    mesh = parallel.population_mesh(size)
    split = mesh.shape[parallel.DATA_AXIS]
    if config.batch_size % split:
        raise ConfigError(
            f"batch_size={config.batch_size} must be divisible by {split}: population_size={size} "
            f"on {devices} devices splits every member's batch over {split} devices "
            f"({devices} / gcd({size}, {devices})); use a batch_size that is a multiple of {split}"
            f", or a population_size that is a multiple of {devices}."
        )
    return mesh


def build_job(
    config: ml_collections.ConfigDict, *, eval_metrics=None, on_epoch_end=None
) -> loop.Job:
    """The `loop.Job` of a population: checks the config, data and hooks, and initialises every
    member as its single run would. Touches no workdir."""
    parts = engine.build_parts(config, eval_metrics)
    if engine.choose_pipeline(config, parts.train_records) != "device":
        raise ConfigError(
            f"pipeline={config.pipeline!r} streams the training split, which a population cannot "
            "do: its members share one copy of the split on the device; use pipeline='device' "
            "(or 'auto' with a split of at most "
            f"{engine.DEVICE_DATA_BUDGET_BYTES // 2**30} GiB)."
        )
    mesh = _population_mesh(config)
    members = tuple(member_config(config, k) for k in range(config.population_size))
    stacked = initial_population_state(
        parts.model,
        parts.optimizer,
        parts.dataset.image_shape,
        config.latents,
        [m.seed for m in members],
        parts.objective.critic,
    )
    # Checkpoints restore into this sharding (`checkpoint.CheckpointStore.restore_latest`), also
    # those written with another device count.
    initial_state = place_members(stacked, mesh)
    return loop.Job(
        config=config,
        members=members,
        stacked=True,
        initial_state=initial_state,
        steps_per_epoch=parts.steps_per_epoch,
        total_steps=parts.total_steps,
        image_shape=tuple(parts.dataset.image_shape),
        build_programs=_build_programs(config, parts, members, mesh, eval_metrics),
        on_epoch_end=on_epoch_end,
    )


def train_population(
    config: ml_collections.ConfigDict,
    workdir: str,
    start_fresh: bool = False,
    *,
    eval_metrics=None,
    on_epoch_end=None,
    **loop_options,
) -> list[list[dict]]:
    """Trains, or resumes, `config.population_size` models at once, and writes into `workdir`.

    Args:
      config: a config with population_size >= 1 (1 trains a population of one).
      workdir: see the module docstring for its layout.
      start_fresh: move a previous run in `workdir` aside instead of resuming it.
      eval_metrics, on_epoch_end: as for `train.train_and_evaluate`; the callback gets each
        member's record and state.
      **loop_options: `signals`, `clock` or `open_checkpoints` for `loop.run` (tests).

    Returns:
      One list per member: the records of its metrics.jsonl after the run, one per epoch.

    Raises:
      VaeJaxError (or a subclass): a problem the user can fix, found before anything was changed
        in the workdir (or, for a diverging member or a failed write, with the intact checkpoint
        named).
      Preempted: SIGTERM or SIGINT arrived; a checkpoint of the step reached was saved.
    """
    validate_config(config)
    workdir = workdir_lib.prepare_workdir(workdir)
    with models.matmul_precision(config):
        job = build_job(config, eval_metrics=eval_metrics, on_epoch_end=on_epoch_end)
        return loop.run(job, workdir, start_fresh=start_fresh, **loop_options)


def export_member(
    workdir: str, k: int, out_workdir: str, config: ml_collections.ConfigDict
) -> list[dict]:
    """Writes population member `k` as a single-model workdir that `train_and_evaluate` resumes.

    `out_workdir` gets config.json (`member_config(config, k)`), metrics.jsonl (the member's
    records up to the exported checkpoint) and checkpoints/<step>/ holding the member's slice of
    the latest population checkpoint. Running `train.train_and_evaluate` on it with the member's
    config and a larger num_epochs continues that member as its single run would.

    Args:
      workdir: a population workdir with at least one checkpoint.
      k: the member, 0 <= k < population_size.
      out_workdir: a directory without a checkpoint (created if needed).
      config: the population's config; must agree with the checkpoint's, as for resuming.

    Returns:
      The exported metrics.jsonl records.

    Raises:
      ConfigError: an invalid config or member index.
      WorkdirError: no population checkpoint to export, one that does not match `config`, or an
        `out_workdir` that already holds a checkpoint; nothing was written then.
    """
    validate_config(config)
    member = member_config(config, k)
    source = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(source) or not os.listdir(source):
        raise WorkdirError(
            f"{workdir!r} holds no population checkpoint to export; train it first "
            "with train_population."
        )
    out_checkpoints = os.path.join(os.path.abspath(out_workdir), "checkpoints")
    if os.path.isdir(out_checkpoints) and os.listdir(out_checkpoints):
        raise WorkdirError(
            f"{out_workdir!r} already holds checkpoints; export member {k} into a new directory."
        )

    job = build_job(config)
    with workdir_lib.WorkdirLock(os.path.abspath(workdir)):
        with checkpoint.CheckpointStore(source, config.max_to_keep) as checkpoints:
            state, step, extra = checkpoints.restore_latest(job.initial_state, config)
        records = workdir_lib.MetricsLog(
            os.path.join(workdir, "members", str(k), "metrics.jsonl")
        ).read()
    if step == 0:
        raise WorkdirError(
            f"{workdir!r} holds no population checkpoint to export; train it first "
            "with train_population."
        )
    records = [r for r in records if r["step"] <= step]
    # A mid-epoch checkpoint carries the unfinished epoch's metrics: the member's, as the single
    # run keeps its own.
    member_extra = (
        {
            "epoch_metrics": extra["members_epoch_metrics"][k],
            "epoch_train_seconds": extra["epoch_train_seconds"],
        }
        if "members_epoch_metrics" in extra
        else None
    )

    # Every check has passed: from here on out_workdir is written.
    out_workdir = workdir_lib.prepare_workdir(out_workdir)
    with workdir_lib.WorkdirLock(out_workdir):
        workdir_lib.write_json_atomic(
            os.path.join(out_workdir, "config.json"), config_to_dict(member)
        )
        workdir_lib.write_run_info(
            out_workdir, image_shape=job.image_shape, kind="single", population_size=1
        )
        metrics_path = os.path.join(out_workdir, "metrics.jsonl")
        if os.path.exists(metrics_path):
            os.remove(metrics_path)  # a stale log without a checkpoint: replaced, not merged
        log = workdir_lib.MetricsLog(metrics_path)
        for record in records:
            log.append(record)
        with checkpoint.CheckpointStore(out_checkpoints, member.max_to_keep) as out_store:
            out_store.save(step, member_state(state, k), member, member_extra)
    logging.info("Exported member %d at step %d to %s.", k, step, out_workdir)
    return records
