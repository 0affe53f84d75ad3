"""Populations: K models trained side by side in one compiled program with `jax.vmap`.

A β sweep, or K seeds, on one accelerator in one go. Member k is exactly the single-model run of
`member_config(config, k)`: seed `config.seed + k`, beta `population_betas[k]` and learning rate
`population_learning_rates[k]` (or `config.beta` / `config.learning_rate` when those are empty).
It has the same initial parameters (`train.create_train_state` with its seed), the same per-step
keys and shuffle order (its own root key's streams), and the same optimizer, so its metrics equal
the single run's up to the rounding of batched matrix products. (Training amplifies rounding
differences, as it would those between two machines: a ReLU input at zero flips, Adam makes a
full step of a cancelling gradient. Within an epoch or two of the default model the parameters
drift apart by several percent while every figure stays equal to about 1e-4; see
benchmarks/population.py.)

How: the epoch function of `train.py` (shuffle, gather, a `lax.scan` of train steps) is vmapped
over a leading member axis of the train state and of the hyperparameters, with the training
split shared (in_axes None). Each member draws its own permutation, so the batch gather takes
per-member indices from the one copy of the data. Beta and the learning rate are traced (K,)
arguments, not Python constants: the loss and the optimizer are built inside the vmapped function
from them, so one compiled program serves any sweep of the same shape.

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
  checkpoints/<step>/          the stacked population state (rerunning the command resumes it)
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from absl import logging

from vae_jax import checkpoint, models, objectives, outputs, train
from vae_jax.config import config_to_dict, validate_config
from vae_jax.errors import ConfigError, DivergenceError, Preempted, WorkdirError


def member_config(config: ml_collections.ConfigDict, k: int) -> ml_collections.ConfigDict:
    """The single-model config that population member `k` trains exactly as.

    Args:
      config: a population config (validated).
      k: the member index, 0 <= k < population_size.

    Returns:
      A copy of `config` with seed + k, the member's beta and learning rate, and population_size
      1 without per-member tuples: what `train.train_and_evaluate` would run for this member.

    Raises:
      ConfigError: k is not a member of the population.
    """
    size = config.population_size
    if not (isinstance(k, (int, np.integer)) and 0 <= k < size):
        raise ConfigError(f"member {k!r} is not in the population; allowed: 0 to {size - 1}.")
    k = int(k)
    member = config.copy_and_resolve_references()
    member.seed = config.seed + k
    member.beta = float(config.population_betas[k]) if config.population_betas else config.beta
    member.learning_rate = (
        float(config.population_learning_rates[k])
        if config.population_learning_rates
        else config.learning_rate
    )
    member.population_size = 1
    member.population_betas = ()
    member.population_learning_rates = ()
    return member


def stack_states(states: list[train.TrainState]) -> train.TrainState:
    """Members' single-model states -> one population state, each leaf stacked to (K, ...)."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def member_state(population_state: train.TrainState, k: int) -> train.TrainState:
    """Member k's slice of a population state: a single-model `TrainState`."""
    return jax.tree.map(lambda leaf: leaf[k], population_state)


def initial_population_state(
    model: models.VAE, optimizer, image_shape, latents: int, seeds: list[int]
) -> train.TrainState:
    """`train.create_train_state` of every seed, stacked: leaves (K, ...).

    The seed is passed traced (uint32) so that the init compiles once for all members, not once
    per member; JAX reduces a Python seed modulo 2**32 too, so the root key, and with it every
    member's initial state, is exactly its single run's (tested).
    """

    def create(seed):
        return train.create_train_state(model, optimizer, image_shape, latents, seed)

    if all(seed < 2**32 for seed in seeds):
        create_from_traced_seed = jax.jit(create)
        return stack_states([create_from_traced_seed(np.uint32(seed)) for seed in seeds])
    return stack_states([create(seed) for seed in seeds])  # as the single runs do, seed by seed


def member_hyperparameters(members: list[ml_collections.ConfigDict]) -> tuple[jax.Array, jax.Array]:
    """(betas, learning_rates), each a float32 (K,) array: the traced per-member arguments."""
    betas = jnp.asarray([m.beta for m in members], jnp.float32)
    learning_rates = jnp.asarray([m.learning_rate for m in members], jnp.float32)
    return betas, learning_rates


def make_population_epoch(
    model: models.VAE,
    config: ml_collections.ConfigDict,
    render,
    schedule_steps: int,
    steps_per_epoch: int,
    num_steps: int,
):
    """The vmapped epoch: `population_epoch(states, betas, learning_rates, images)`.

    Args:
      model: the VAE every member trains.
      config: the population config (its shared fields: batch size, optimizer, schedule, ...).
      render: the data set's record renderer, or None when records are images.
      schedule_steps: the length of the learning-rate schedule, as in the single run.
      steps_per_epoch: training batches per epoch.
      num_steps: updates in this call (see `train.make_train_epoch`).

    Returns:
      A function of states (a population `TrainState`, leaves (K, ...)), betas (K,),
      learning_rates (K,) and images (N, ...) shared by all members, returning the new states and
      a dict of (K, num_steps) per-step metrics.
    """

    def member_epoch(state, beta, learning_rate, images):
        # Built per trace from traced hyperparameters: one program for any values of the sweep.
        optimizer = train.build_optimizer(config, schedule_steps, learning_rate)
        train_step = train.make_train_step(
            objectives.make_elbo_loss(model, beta, config.kl_warmup_steps),
            optimizer,
            config.dynamic_binarization,
            render,
            skip_nonfinite=config.nan_policy == "skip",
        )
        epoch = train.make_train_epoch(train_step, config.batch_size, steps_per_epoch, num_steps)
        return epoch(state, images)

    return jax.vmap(member_epoch, in_axes=(0, 0, 0, None))


@dataclasses.dataclass(frozen=True)
class _Population:
    """What a population run and an export both build from the config, before touching a workdir."""

    dataset: object
    train_records: np.ndarray
    eval_records: np.ndarray
    model: models.VAE
    members: list
    steps_per_epoch: int
    schedule_steps: int
    total_steps: int
    initial_state: train.TrainState


def _build_population(config: ml_collections.ConfigDict) -> _Population:
    """Checks the config and data, and initialises every member as its single run would."""
    validate_config(config)
    dataset, train_records, eval_records = train._load_splits(config)
    if train.choose_pipeline(config, train_records) != "device":
        raise ConfigError(
            f"pipeline={config.pipeline!r} streams the training split, which a population cannot "
            "do: its members share one copy of the split on the device; use pipeline='device' "
            "(or 'auto' with a split of at most "
            f"{train.DEVICE_DATA_BUDGET_BYTES // 2**30} GiB)."
        )
    steps_per_epoch = len(train_records) // config.batch_size
    schedule_steps = config.num_epochs * steps_per_epoch
    total_steps = min(schedule_steps, config.max_steps) if config.max_steps else schedule_steps
    model = models.build_model(config, dataset.image_shape)
    members = [member_config(config, k) for k in range(config.population_size)]
    # The optimizer's state does not depend on the learning rate's value, only on its kind.
    optimizer = train.build_optimizer(config, schedule_steps)
    initial_state = initial_population_state(
        model, optimizer, dataset.image_shape, config.latents, [m.seed for m in members]
    )
    return _Population(
        dataset=dataset,
        train_records=train_records,
        eval_records=eval_records,
        model=model,
        members=members,
        steps_per_epoch=steps_per_epoch,
        schedule_steps=schedule_steps,
        total_steps=total_steps,
        initial_state=initial_state,
    )


def _member_metrics_path(workdir: str, k: int) -> str:
    return os.path.join(workdir, "members", str(k), "metrics.jsonl")


def _start_outputs(config, workdir: str, restored_step: int) -> list[outputs.MetricsLog]:
    """Writes config.json and rewinds every member's metrics.jsonl to the restored checkpoint."""
    outputs.write_json_atomic(os.path.join(workdir, "config.json"), config_to_dict(config))
    logs = []
    for k in range(config.population_size):
        path = _member_metrics_path(workdir, k)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        log = outputs.MetricsLog(path)
        dropped = log.rewind(restored_step)
        if dropped:
            logging.info(
                "Member %d: dropped %d metric records past step %d.", k, dropped, restored_step
            )
        logs.append(log)
    if restored_step:
        logging.info("Resumed the population from the checkpoint at step %d.", restored_step)
    return logs


def _describe(k: int, member) -> str:
    return (
        f"population member {k} (seed {member.seed}, beta {member.beta:g}, "
        f"learning_rate {member.learning_rate:g})"
    )


def _name_member(k: int, member, error: DivergenceError) -> DivergenceError:
    return DivergenceError(f"{_describe(k, member)}: {error}")


def _check_member_training(k, member, call_metrics, first_step, epoch, last_checkpoint) -> None:
    """Raises DivergenceError, naming the member, at its first non-finite training loss."""
    try:
        train._check_finite(call_metrics, first_step, epoch, last_checkpoint, member)
    except DivergenceError as error:
        raise _name_member(k, member, error) from None


def _check_member_evaluation(k, member, eval_metrics, step, epoch, last_checkpoint) -> None:
    """Raises DivergenceError, naming the member, when its evaluation is not finite."""
    if not all(math.isfinite(float(v)) for v in eval_metrics.values()):
        raise DivergenceError(
            f"{_describe(k, member)}: the {member.eval_split} ELBO became non-finite after step "
            f"{step} (epoch {epoch}): {eval_metrics}; the last good checkpoint (step "
            f"{last_checkpoint}) is kept. Lower its learning rate."
        )


def _member_slice(tree: dict, k: int) -> dict:
    return {name: values[k] for name, values in tree.items()}


def train_population(config: ml_collections.ConfigDict, workdir: str) -> list[list[dict]]:
    """Trains, or resumes, `config.population_size` models at once, and writes into `workdir`.

    Args:
      config: a config with population_size >= 1 (1 trains a population of one).
      workdir: see the module docstring for its layout.

    Returns:
      One list per member: the records of its metrics.jsonl after the run, one per epoch.

    Raises:
      VaeJaxError (or a subclass): a problem the user can fix, found before anything was changed
        in the workdir (or, for a diverging member, before the bad state was saved).
      Preempted: SIGTERM or SIGINT arrived; a checkpoint of the step reached was saved.
    """
    population = _build_population(config)
    workdir = outputs.prepare_workdir(workdir)
    checkpoints_dir = os.path.join(workdir, "checkpoints")
    with (
        outputs.WorkdirLock(workdir),
        checkpoint.CheckpointStore(checkpoints_dir, config.max_to_keep) as checkpoints,
    ):
        return _train_population(config, workdir, population, checkpoints)


def _train_population(config, workdir, population: _Population, checkpoints) -> list[list[dict]]:
    """The body of `train_population` once the workdir is locked and checkpoints opened."""
    members, total_steps = population.members, population.total_steps
    steps_per_epoch, size = population.steps_per_epoch, config.population_size
    state, restored_step, extra = checkpoints.restore_latest(population.initial_state, config)
    # Every check has passed: from here on the workdir is written.
    try:
        logs = _start_outputs(config, workdir, restored_step)
    except OSError as error:
        raise train._write_failure(error, workdir, restored_step) from error
    if restored_step >= total_steps:
        logging.info(
            "Already trained to step %d of %d; raise num_epochs to go on.",
            restored_step,
            total_steps,
        )
        return [log.read() for log in logs]

    betas, learning_rates = member_hyperparameters(members)
    train_on_device = jax.device_put(population.train_records)
    programs = {}

    def program_of(num_steps: int):
        """Compiled once per length, before it is timed (as `train.EpochRunner` does)."""
        if num_steps not in programs:
            started = time.perf_counter()
            fn = make_population_epoch(
                population.model,
                config,
                population.dataset.render,
                population.schedule_steps,
                steps_per_epoch,
                num_steps,
            )
            programs[num_steps] = (
                jax.jit(fn, donate_argnums=0)
                .lower(state, betas, learning_rates, train_on_device)
                .compile()
            )
            logging.info(
                "Compiled the %d-member, %d-step population program in %.2f s.",
                size,
                num_steps,
                time.perf_counter() - started,
            )
        return programs[num_steps]

    eval_records = population.eval_records
    eval_batch_size = min(config.eval_batch_size, len(eval_records))
    eval_on_device = jax.device_put(train.pad_to_multiple(eval_records, eval_batch_size))
    evaluate = train.make_evaluate(
        population.model,
        eval_batch_size,
        len(eval_records),
        population.dataset.render,
        binarize=config.dynamic_binarization,
    )
    evaluate_members = jax.jit(jax.vmap(evaluate, in_axes=(0, None, 0)))
    eval_keys = jax.vmap(train.stream_key, in_axes=(0, None))(state.key, train.EVAL_STREAM)

    split = config.eval_split
    step = last_checkpoint = restored_step
    # The unfinished epoch a mid-epoch checkpoint left: each member's step metrics, and the time.
    epoch_metrics = [
        {name: [np.asarray(values, np.float32)] for name, values in saved.items()}
        for saved in extra.get("members_epoch_metrics", [{}] * size)
    ]
    epoch_seconds = float(extra.get("epoch_train_seconds", 0.0))
    calls_per_epoch = config.steps_per_call or steps_per_epoch
    progress = tqdm.tqdm(
        total=total_steps,
        initial=step,
        unit="step",
        dynamic_ncols=True,
        disable=not config.progress_bar,
        desc=f"training {size} models",
    )
    with train._StopSignals() as stop, progress:
        while step < total_steps:
            epoch = step // steps_per_epoch + 1
            epoch_end = min(epoch * steps_per_epoch, total_steps)
            num_steps = min(epoch_end - step, calls_per_epoch)
            program = program_of(num_steps)  # compilation stays out of the timing

            started = time.perf_counter()
            state, call_metrics = program(state, betas, learning_rates, train_on_device)
            call_metrics = jax.device_get(call_metrics)
            epoch_seconds += time.perf_counter() - started

            for k, member in enumerate(members):
                member_metrics = _member_slice(call_metrics, k)
                if config.nan_policy == "stop":
                    _check_member_training(k, member, member_metrics, step, epoch, last_checkpoint)
                for name, values in member_metrics.items():
                    epoch_metrics[k].setdefault(name, []).append(np.asarray(values, np.float32))
            step += num_steps
            progress.update(num_steps)

            if step < epoch_end:  # stopped inside the epoch: keep its metrics with the state
                if stop.requested:
                    extra = {
                        "members_epoch_metrics": [train._as_json(m) for m in epoch_metrics],
                        "epoch_train_seconds": epoch_seconds,
                    }
                    train._save(checkpoints, step, state, config, extra, workdir, last_checkpoint)
                    raise Preempted(stop.signum, step)
                continue

            eval_metrics = jax.device_get(evaluate_members(state.params, eval_on_device, eval_keys))
            records = []
            for k, member in enumerate(members):
                member_eval = _member_slice(eval_metrics, k)
                _check_member_evaluation(k, member, member_eval, step, epoch, last_checkpoint)
                try:
                    record = train._epoch_record(
                        epoch,
                        step,
                        step - (epoch - 1) * steps_per_epoch,
                        epoch_metrics[k],
                        member_eval,
                        split,
                        epoch_seconds,
                        member,
                    )
                except DivergenceError as error:
                    raise _name_member(k, member, error) from None
                # The wall time was the whole population's: count every member's examples.
                record["examples_per_second"] *= size
                records.append(record)
            try:
                for log, record in zip(logs, records):
                    log.append(record)
            except OSError as error:
                raise train._write_failure(error, workdir, last_checkpoint) from error
            epoch_metrics, epoch_seconds = [{} for _ in members], 0.0

            if epoch % config.checkpoint_every_epochs == 0 or step == total_steps or stop.requested:
                train._save(checkpoints, step, state, config, None, workdir, last_checkpoint)
                last_checkpoint = step
            logging.info(
                "epoch %d/%d step %d: %s_elbo per member %s nats; %.2f s, %.0f examples/s",
                epoch,
                math.ceil(total_steps / steps_per_epoch),
                step,
                split,
                " ".join(f"{r[f'{split}_elbo']:.2f}" for r in records),
                records[0]["train_seconds"],
                records[0]["examples_per_second"],
            )
            if stop.requested and step < total_steps:
                raise Preempted(stop.signum, step)
    try:
        checkpoints.wait()  # the last save is complete, or its failure is reported here
    except Exception as error:
        raise train._write_failure(error, workdir, last_checkpoint) from error
    return [log.read() for log in logs]


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

    population = _build_population(config)
    with outputs.WorkdirLock(os.path.abspath(workdir)):
        with checkpoint.CheckpointStore(source, config.max_to_keep) as checkpoints:
            state, step, extra = checkpoints.restore_latest(population.initial_state, config)
        records = outputs.MetricsLog(_member_metrics_path(workdir, k)).read()
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
    out_workdir = outputs.prepare_workdir(out_workdir)
    with outputs.WorkdirLock(out_workdir):
        outputs.write_json_atomic(os.path.join(out_workdir, "config.json"), config_to_dict(member))
        metrics_path = os.path.join(out_workdir, "metrics.jsonl")
        if os.path.exists(metrics_path):
            os.remove(metrics_path)  # a stale log without a checkpoint: replaced, not merged
        log = outputs.MetricsLog(metrics_path)
        for record in records:
            log.append(record)
        with checkpoint.CheckpointStore(out_checkpoints, member.max_to_keep) as out_store:
            out_store.save(step, member_state(state, k), member, member_extra)
    logging.info("Exported member %d at step %d to %s.", k, step, out_workdir)
    return records
