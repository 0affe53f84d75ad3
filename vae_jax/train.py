"""`train_and_evaluate(config, workdir)`: one model, trained as a `loop.Job`.

This module only builds: the data, the model, the objective, the optimizer, the initial state and
the compiled programs of one run. The host loop (`loop.run`) drives them; the programs themselves
live in `step`, `engine` and `evaluation`.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections

from vae_jax import data, engine, evaluation, loop, models, objectives, optim, parallel, rng
from vae_jax import workdir as workdir_lib
from vae_jax.config import validate_config
from vae_jax.errors import ConfigError
from vae_jax.step import create_train_state, make_train_step

__all__ = ["train_and_evaluate", "build_job", "SingleModelPrograms"]


@dataclasses.dataclass
class SingleModelPrograms:
    """The compiled programs of one model: its epoch runner, evaluation and pictures."""

    runner: engine.EpochRunner
    evaluate_fn: object
    eval_on_device: jax.Array
    eval_key: jax.Array
    pictures: evaluation.EpochPictures
    description: str

    def prepare(self, state, first_step: int, num_steps: int) -> None:
        self.runner.prepare(state, first_step, num_steps)

    def run(self, state, first_step: int, num_steps: int, should_stop):
        return self.runner.run(state, first_step, num_steps, should_stop)

    def evaluate(self, state) -> dict:
        return self.evaluate_fn(state.params, self.eval_on_device, self.eval_key)

    def save_pictures(self, images_dir: str, epoch: int, state, write: bool) -> None:
        self.pictures.save(images_dir, epoch, state.params, write)


def _build_programs(config, model, objective, optimizer, dataset, splits, mesh, steps_per_epoch):
    """`state -> SingleModelPrograms`, for `loop.Job.build_programs`."""
    train_records, eval_records = splits

    def build(state) -> SingleModelPrograms:
        train_step = make_train_step(
            objective,
            optimizer,
            config.dynamic_binarization,
            dataset.render,
            skip_nonfinite=config.nan_policy == "skip",
        )
        pipeline, step_loop = (
            engine.choose_pipeline(config, train_records),
            engine.choose_step_loop(config),
        )
        runner = engine.EpochRunner(
            pipeline,
            train_step,
            train_records,
            config.batch_size,
            steps_per_epoch,
            rng.stream_key(state.key, rng.SHUFFLE_STREAM),
            config.stream_chunk_steps,
            mesh,
            step_loop,
        )
        # Evaluation batches are split over the devices too: round their size up to a multiple.
        eval_batch_size = (
            -(-min(config.eval_batch_size, len(eval_records)) // mesh.size) * mesh.size
        )
        evaluate = evaluation.make_evaluate(
            model,
            eval_batch_size,
            len(eval_records),
            dataset.render,
            binarize=config.dynamic_binarization,
            batch_sharding=parallel.batch_sharding(mesh),
            variational=objectives.is_variational(config.objective),
        )
        return SingleModelPrograms(
            runner=runner,
            evaluate_fn=jax.jit(evaluate),
            eval_on_device=parallel.put_replicated(
                evaluation.pad_to_multiple(eval_records, eval_batch_size), mesh
            ),
            eval_key=rng.stream_key(state.key, rng.EVAL_STREAM),
            pictures=evaluation.EpochPictures(config, model, dataset, eval_records, state.key),
            description=(
                f"Data {dataset.name}: {len(train_records)} training examples, {pipeline} "
                f"pipeline, {step_loop} loop."
            ),
        )

    return build


def build_job(config: ml_collections.ConfigDict) -> loop.Job:
    """The `loop.Job` of a single run of `config`: checks the config and the data, builds the
    model and its initial state. Touches no workdir."""
    validate_config(config)
    dataset, train_records, eval_records = data.load_splits(config)
    steps_per_epoch, schedule_steps, total_steps = engine.schedule_lengths(
        config, len(train_records)
    )
    mesh = parallel.data_mesh()
    if config.batch_size % mesh.size:
        raise ConfigError(
            f"batch_size={config.batch_size} must be divisible by the {mesh.size} devices, which "
            f"split every batch; allowed: multiples of {mesh.size}."
        )
    engine.warn_slow_bf16(config)
    model = models.build_model(config, dataset.image_shape)
    objective = objectives.make_objective(config, model)
    optimizer = optim.build_optimizer(config, schedule_steps)
    initial_state = create_train_state(
        model,
        optimizer,
        dataset.image_shape,
        config.latents,
        config.seed,
        sharding=parallel.replicated(mesh),
        critic=objective.critic,
    )
    return loop.Job(
        config=config,
        members=(config,),
        stacked=False,
        initial_state=initial_state,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        image_shape=tuple(dataset.image_shape),
        build_programs=_build_programs(
            config,
            model,
            objective,
            optimizer,
            dataset,
            (train_records, eval_records),
            mesh,
            steps_per_epoch,
        ),
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, start_fresh: bool = False, **loop_options
) -> list[dict]:
    """Trains, or resumes training, as `config` says, and writes everything into `workdir`.

    Args:
      config: see `vae_jax.config.get_config`.
      workdir: where config.json, run.json, metrics.jsonl, images/ and checkpoints/ live.
      start_fresh: move a previous run in `workdir` aside (to `previous-<time>/`) instead of
        resuming it.
      **loop_options: `signals`, `clock` or `open_checkpoints` for `loop.run` (tests).

    Returns:
      The records of metrics.jsonl after the run: one per finished epoch.

    Raises:
      VaeJaxError (or a subclass): a problem the user can fix, found before anything was changed
        in the workdir (or, for a diverging run or a failed write, with the intact checkpoint
        named).
      Preempted: SIGTERM or SIGINT arrived; a checkpoint of the step reached was saved.
    """
    validate_config(config)
    workdir = workdir_lib.prepare_workdir(workdir)
    job = build_job(config)
    return loop.run(job, workdir, start_fresh=start_fresh, **loop_options)[0]
