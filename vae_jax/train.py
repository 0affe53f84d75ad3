"""`train_and_evaluate(config, workdir)`: one model, trained as a `loop.Job`.

This module only builds: the data, the model, the objective, the optimizer, the initial state and
the compiled programs of one run. The host loop (`loop.run`) drives them; the programs themselves
live in `step`, `engine` and `evaluation`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import ml_collections

from vae_jax import engine, evaluation, loop, models, parallel, rng, step_loops
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
    config: ml_collections.ConfigDict
    data_description: str

    @property
    def description(self) -> str:
        return f"{self.data_description} {self.runner.step_loop} loop."

    def settle_step_loop(self, state, recorded, resumed: bool) -> dict:
        return step_loops.settle(self.runner, self.config, state, recorded, resumed)

    def prepare(self, state, first_step: int, num_steps: int) -> None:
        self.runner.prepare(state, first_step, num_steps)

    def run(self, state, first_step: int, num_steps: int, should_stop):
        return self.runner.run(state, first_step, num_steps, should_stop)

    def evaluate(self, state) -> dict:
        return self.evaluate_fn(state.params, self.eval_on_device, self.eval_key)

    def save_pictures(self, images_dir: str, epoch: int, state, write: bool) -> None:
        self.pictures.save(images_dir, epoch, state.params, write)


def _build_programs(config, parts: engine.RunParts, mesh, eval_metrics=None):
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
            call_steps=min(config.steps_per_call or parts.steps_per_epoch, parts.steps_per_epoch),
        )
        evaluate, eval_on_device = evaluation.make_split_evaluate(
            config,
            parts.model,
            dataset.render,
            parts.eval_records,
            mesh,
            extra_metrics=eval_metrics,
        )
        return SingleModelPrograms(
            runner=runner,
            evaluate_fn=jax.jit(evaluate),
            eval_on_device=eval_on_device,
            eval_key=rng.stream_key(state.key, rng.EVAL_STREAM),
            pictures=evaluation.EpochPictures(
                config, parts.model, dataset, parts.eval_records, state.key
            ),
            config=config,
            data_description=(
                f"Data {dataset.name}: {len(train_records)} training examples, {pipeline} pipeline,"
            ),
        )

    return build


def build_job(
    config: ml_collections.ConfigDict, *, eval_metrics=None, on_epoch_end=None
) -> loop.Job:
    """The `loop.Job` of a single run of `config`: checks the config, the data and the hooks,
    builds the model and its initial state. Touches no workdir."""
    parts = engine.build_parts(config, eval_metrics)
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
        build_programs=_build_programs(config, parts, mesh, eval_metrics),
        on_epoch_end=on_epoch_end,
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    start_fresh: bool = False,
    *,
    eval_metrics: Mapping[str, Callable] | None = None,
    on_epoch_end: Callable | None = None,
    **loop_options,
) -> list[dict]:
    """Trains, or resumes training, as `config` says, and writes everything into `workdir`.

    Args:
      config: see `vae_jax.config.get_config`.
      workdir: where config.json, run.json, metrics.jsonl, images/ and checkpoints/ live.
      start_fresh: move a previous run in `workdir` aside (to `previous-<time>/`) instead of
        resuming it.
      eval_metrics: name -> `fn(model, params, x, keys) -> (B,)`, per-example figures computed
        in the compiled evaluation scan and recorded as `test_<name>` (the split's mean);
        x is a float batch in [0, 1], keys the examples' typed keys, the same every epoch.
      on_epoch_end: `(record, state) -> dict or None`, a host callback at every epoch end; the
        fields it returns join the record in metrics.jsonl. It runs outside the compiled
        programs and changes nothing they compute, so resumed runs stay bit-identical; pass
        the same hooks when resuming.
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
    with models.matmul_precision(config):
        job = build_job(config, eval_metrics=eval_metrics, on_epoch_end=on_epoch_end)
        return loop.run(job, workdir, start_fresh=start_fresh, **loop_options)[0]
