"""`train_and_evaluate(config, workdir)`: one model, trained as a `loop.Job`.

This module only builds: the data, the model, the objective, the optimizer, the initial state and
the compiled programs of one run. The host loop (`loop.run`) drives them; the programs themselves
live in `step`, `engine` and `evaluation`.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections

from vae_jax import engine, evaluation, loop, parallel, rng
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


def _build_programs(config, parts: engine.RunParts, mesh):
    """`state -> SingleModelPrograms`, for `loop.Job.build_programs`."""
    dataset, train_records = parts.dataset, parts.train_records

    def build(state) -> SingleModelPrograms:
        train_step = make_train_step(
            parts.objective,
            parts.optimizer,
            config.dynamic_binarization,
            dataset.render,
            skip_nonfinite=config.nan_policy == "skip",
        )
        pipeline = engine.choose_pipeline(config, train_records)
        step_loop = engine.choose_step_loop(config)
        runner = engine.EpochRunner(
            pipeline,
            train_step,
            train_records,
            config.batch_size,
            parts.steps_per_epoch,
            rng.stream_key(state.key, rng.SHUFFLE_STREAM),
            config.stream_chunk_steps,
            mesh,
            step_loop,
        )
        evaluate, eval_on_device = evaluation.make_split_evaluate(
            config, parts.model, dataset.render, parts.eval_records, mesh
        )
        return SingleModelPrograms(
            runner=runner,
            evaluate_fn=jax.jit(evaluate),
            eval_on_device=eval_on_device,
            eval_key=rng.stream_key(state.key, rng.EVAL_STREAM),
            pictures=evaluation.EpochPictures(
                config, parts.model, dataset, parts.eval_records, state.key
            ),
            description=(
                f"Data {dataset.name}: {len(train_records)} training examples, {pipeline} "
                f"pipeline, {step_loop} loop."
            ),
        )

    return build


def build_job(config: ml_collections.ConfigDict) -> loop.Job:
    """The `loop.Job` of a single run of `config`: checks the config and the data, builds the
    model and its initial state. Touches no workdir."""
    parts = engine.build_parts(config)
    mesh = parallel.data_mesh()
    if config.batch_size % mesh.size:
        raise ConfigError(
            f"batch_size={config.batch_size} must be divisible by the {mesh.size} devices, which "
            f"split every batch; allowed: multiples of {mesh.size}."
        )
    initial_state = create_train_state(
        parts.model,
        parts.optimizer,
        parts.dataset.image_shape,
        config.latents,
        config.seed,
        sharding=parallel.replicated(mesh),
        critic=parts.objective.critic,
    )
    return loop.Job(
        config=config,
        members=(config,),
        stacked=False,
        initial_state=initial_state,
        steps_per_epoch=parts.steps_per_epoch,
        total_steps=parts.total_steps,
        image_shape=tuple(parts.dataset.image_shape),
        build_programs=_build_programs(config, parts, mesh),
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
