"""How the steps of an epoch reach the device: the pipeline, the step loop, compiled programs.

'device' pipeline: the training split is on the device and a call is one compiled program.
'stream': the host gathers the batches in the same order and prefetches them in chunks. The step
loop is 'scan' (the steps compiled into one loop) or 'host' (the compiled step called once per
step). Every combination runs the same `step.make_train_step` on the same batches; programs are
compiled once per call length, before they are timed.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from vae_jax import data, evaluation, models, objectives, optim, parallel
from vae_jax.config import validate_config
from vae_jax.data import stream
from vae_jax.step import (
    MASK_CHUNK,
    make_host_loop_chunk,
    make_host_loop_epoch,
    make_train_chunk,
    make_train_epoch,
    masks_in_chunks,
)

__all__ = [
    "RunParts",
    "build_parts",
    "DEVICE_DATA_BUDGET_BYTES",
    "schedule_lengths",
    "warn_slow_bf16",
    "choose_pipeline",
    "choose_step_loop",
    "EpochRunner",
]


@dataclasses.dataclass(frozen=True)
class RunParts:
    """What a single run and a population both build from a config, before any workdir is
    touched or any program compiled: the data, the step counts, the model, its objective and
    its optimizer (a population's members differ only in traced values of these)."""

    dataset: data.Dataset
    train_records: np.ndarray
    eval_records: np.ndarray
    steps_per_epoch: int
    schedule_steps: int
    total_steps: int
    model: models.VAE
    objective: objectives.Objective
    optimizer: object


def build_parts(config: ml_collections.ConfigDict, eval_metrics=None) -> RunParts:
    """Validates `config`, loads its data and builds its model, objective and optimizer; checks
    the objective's metrics and the user's `eval_metrics` before anything compiles."""
    validate_config(config)
    dataset, train_records, eval_records = data.load_splits(config)
    steps_per_epoch, schedule_steps, total_steps = schedule_lengths(config, len(train_records))
    warn_slow_bf16(config)
    model = models.build_model(config, dataset.image_shape)
    objective = objectives.make_objective(config, model)
    objectives.check_metrics(
        objective,
        model,
        dataset.image_shape,
        config.latents,
        config.batch_size,
        variational=objectives.is_variational(config.objective),
    )
    evaluation.check_extra_metrics(
        eval_metrics,
        model,
        dataset.image_shape,
        config.latents,
        objectives.is_variational(config.objective),
    )
    return RunParts(
        dataset=dataset,
        train_records=train_records,
        eval_records=eval_records,
        steps_per_epoch=steps_per_epoch,
        schedule_steps=schedule_steps,
        total_steps=total_steps,
        model=model,
        objective=objective,
        # A population's members share it: its state depends on the rate's kind, not its value.
        optimizer=optim.build_optimizer(config, schedule_steps),
    )


def schedule_lengths(config: ml_collections.ConfigDict, num_train: int) -> tuple[int, int, int]:
    """(steps_per_epoch, schedule_steps, total_steps) of a run on `num_train` examples: the
    learning-rate schedule spans num_epochs; max_steps, when set, ends training earlier."""
    steps_per_epoch = num_train // config.batch_size
    schedule_steps = config.num_epochs * steps_per_epoch
    total_steps = min(schedule_steps, config.max_steps) if config.max_steps else schedule_steps
    return steps_per_epoch, schedule_steps, total_steps


def warn_slow_bf16(config: ml_collections.ConfigDict) -> None:
    """bf16 on a CPU without bf16 units is slower than f32 (docs/performance.md): say so."""
    if (
        config.dtype == "bfloat16"
        and jax.default_backend() == "cpu"
        and models.cpu_has_bf16_units() is False
    ):
        logging.warning(
            "dtype='bfloat16' on a CPU without bf16 units (no avx512_bf16, amx_bf16 or bf16 in "
            "/proc/cpuinfo): XLA computes the bf16 products in float32 with conversions, so "
            "this run is slower than with dtype='float32'. It trains correctly; use float32 "
            "here for speed."
        )


# With pipeline='auto', a training split of at most this many bytes lives on the device.
DEVICE_DATA_BUDGET_BYTES = 2 * 2**30


def choose_pipeline(config: ml_collections.ConfigDict, train_records) -> str:
    """'device' or 'stream': the config's choice, or for 'auto' whether the split fits."""
    if config.pipeline != "auto":
        return config.pipeline
    fits = (
        isinstance(train_records, np.ndarray) and train_records.nbytes <= DEVICE_DATA_BUDGET_BYTES
    )
    return "device" if fits else "stream"


def choose_step_loop(config: ml_collections.ConfigDict) -> str:
    """'scan', 'host', or 'auto': settled at the start of the run by `step_loops.settle`, which
    measures both on the actual program (XLA runs some ops, such as XLA:CPU's convolutions,
    several times slower inside loop bodies: jax-ml/jax#12868)."""
    return config.step_loop


class EpochRunner:
    """Runs the steps of one epoch by either pipeline, with programs compiled ahead of time.

    'device': the split is on the device and the steps are one compiled scan
    (`make_train_epoch`). 'stream': the host gathers batches in the same order and prefetches them
    in chunks, each scanned by one compiled call (`make_train_chunk`). Both run the same
    `train_step` on the same batches.
    """

    def __init__(
        self,
        pipeline,
        train_step,
        train_records,
        batch_size,
        steps_per_epoch,
        shuffle_key,
        chunk_steps,
        mesh=None,
        step_loop: str = "scan",
        call_steps: int | None = None,
    ):
        self.mesh = parallel.data_mesh() if mesh is None else mesh
        self.call_steps = call_steps
        self.pipeline = pipeline
        self.step_loop = step_loop
        self.train_step = train_step
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.record_spec = (train_records.shape[1:], train_records.dtype)
        self._programs = {}  # (step loop, num_steps) -> compiled program
        if pipeline == "device":
            # Small data: a full copy on every device; each device gathers its part of a batch.
            self.train_on_device = parallel.put_replicated(train_records, self.mesh)
        else:
            self.chunk_steps = min(chunk_steps, steps_per_epoch)  # a chunk stays in its epoch
            self.loader = stream.StreamingLoader(
                train_records,
                batch_size,
                steps_per_epoch,
                shuffle_key,
                self.chunk_steps,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
                place=lambda chunk: parallel.put_process_batches(chunk, self.mesh, 1),
                pad_chunks=True,
            )

    def example_input(self, num_steps: int):
        """What a call of `num_steps` steps takes besides the state: the split on the device,
        or (streaming) a chunk of batches, here zeros of the chunk's shape and placement."""
        if self.pipeline == "device":
            return self.train_on_device
        shape, dtype = self.record_spec
        zeros = np.zeros((self.scan_length(num_steps), self.batch_size, *shape), dtype)
        return parallel.put_process_batches(zeros, self.mesh, 1)

    def time_steps(self, state, num_steps: int, step_loop: str) -> float:
        """Seconds per step of one call of `num_steps` steps by `step_loop`, run on a copy of
        `state` (the copy starts the epoch, so the call stays inside it); the run is unchanged."""
        program = self.program(state, num_steps, step_loop)
        trial = jax.tree.map(lambda leaf: leaf.copy(), state).replace(step=state.step * 0)
        inputs = self.example_input(num_steps)
        jax.block_until_ready(trial)
        started = time.perf_counter()
        jax.block_until_ready(program(trial, inputs))
        return (time.perf_counter() - started) / num_steps

    def timing_steps(self, num_steps: int) -> int:
        """A scanned call of about `num_steps` steps that computes no masked steps: on a GPU
        a call's masking works in whole chunks of MASK_CHUNK steps (`step._masked_scan`), so a
        shorter call would be timed for the chunk's steps and counted for fewer."""
        length = self.scan_length(num_steps)
        if length == num_steps or not masks_in_chunks(self.mesh.devices.flat[0].platform):
            return num_steps
        return min(length, -(-num_steps // MASK_CHUNK) * MASK_CHUNK)

    def forget(self, step_loop: str) -> None:
        """Drops the compiled programs of a step loop the run will not use."""
        self._programs = {k: v for k, v in self._programs.items() if k[0] != step_loop}

    def scan_length(self, num_steps: int) -> int:
        """How many steps the scan that runs a call of `num_steps` is compiled for: on the
        device, every call up to `call_steps` runs in that one program, its extra steps masked,
        so an epoch's remainder or a resumed epoch's first call compiles nothing more; when
        streaming, every chunk is `chunk_steps` long (the loader pads the shorter ones)."""
        if self.pipeline == "device" and self.call_steps and num_steps <= self.call_steps:
            return self.call_steps
        if self.pipeline == "stream" and num_steps <= self.chunk_steps:
            return self.chunk_steps
        return num_steps

    def program(self, state, num_steps: int, step_loop: str | None = None):
        """The compiled program for `num_steps` steps, compiled before it is timed: once per
        scan length when scanned, once in all for the host loop (its step is the same)."""
        step_loop = step_loop or self.step_loop
        if step_loop not in ("scan", "host"):
            raise ValueError(f"step_loop={step_loop!r} is not settled (step_loops.settle)")
        length = self.scan_length(num_steps)
        key = (step_loop, length if step_loop == "scan" else None)
        if key not in self._programs:
            started = time.perf_counter()
            self._programs[key] = self._compile(state, length, step_loop)
            logging.info(
                "Compiled the %s %s program (%s loop) in %.2f s.",
                f"{length}-step" if step_loop == "scan" else "one-step",
                self.pipeline,
                step_loop,
                time.perf_counter() - started,
            )
        program = self._programs[key]
        if step_loop == "host":
            return functools.partial(program, num_steps=num_steps)
        return lambda state, inputs: program(state, inputs, np.int32(num_steps))

    def _compile(self, state, num_steps: int, step_loop: str):
        if self.pipeline == "device":
            make = make_train_epoch if step_loop == "scan" else make_host_loop_epoch
            fn = make(
                self.train_step,
                self.batch_size,
                self.steps_per_epoch,
                num_steps,
                parallel.batch_sharding(self.mesh),
            )
            example = self.train_on_device
        else:
            fn = (make_train_chunk if step_loop == "scan" else make_host_loop_chunk)(
                self.train_step
            )
            shape, dtype = self.record_spec
            example = jax.ShapeDtypeStruct(
                (num_steps, self.batch_size, *shape),
                dtype,
                sharding=parallel.batch_sharding(self.mesh, leading_axes=1),
            )
        if step_loop == "scan":
            lowered = jax.jit(fn, donate_argnums=0).lower(state, example, np.int32(num_steps))
            return lowered.compile()
        return fn(state, example)

    def prepare(self, state, first_step: int, num_steps: int) -> None:
        """Compiles every program the epoch starting at `first_step` will call."""
        if self.pipeline == "device":
            self.program(state, num_steps)
            return
        first_batch = first_step % self.steps_per_epoch
        for start in range(first_batch, first_batch + num_steps, self.chunk_steps):
            self.program(state, min(self.chunk_steps, first_batch + num_steps - start))

    def run(self, state, first_step: int, num_steps: int, should_stop=lambda: False):
        """Steps [first_step, first_step + num_steps) of one epoch -> (state, host metrics).

        Streaming checks `should_stop()` between chunks and may return after fewer steps; the
        metrics say how many (their length)."""
        if self.pipeline == "device":
            state, step_metrics = self.program(state, num_steps)(state, self.train_on_device)
            return state, {k: v[:num_steps] for k, v in jax.device_get(step_metrics).items()}
        chunks, done = [], 0
        for batches in self.loader.epoch(first_step, num_steps):
            valid = min(self.chunk_steps, num_steps - done)  # the rest of a chunk is padding
            state, chunk_metrics = self.program(state, valid)(state, batches)
            chunks.append((chunk_metrics, valid))
            done += valid
            if should_stop():
                break
        fetched = jax.device_get([metrics for metrics, _ in chunks])
        parts = [(m, valid) for m, (_, valid) in zip(fetched, chunks)]
        return state, {k: np.concatenate([m[k][:v] for m, v in parts]) for k in fetched[0]}
