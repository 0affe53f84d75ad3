"""The host loop: the one place where training is driven, for one model and for populations.

A single run and a population differ in data, not in control flow: one state or K states stacked
along axis 0, one metrics log or K, one member config or K. A `Job` holds that data and builds the
compiled `Programs` the loop calls; `run` does the rest, once for both:

  lock the workdir -> restore the newest readable checkpoint -> write config.json and rewind the
  metrics logs -> per call: train, check the losses are finite -> per epoch end: evaluate, check,
  append records, draw pictures, save by the checkpoint rule -> on SIGTERM/SIGINT: save and raise
  `Preempted` -> wait for the last save.

Every failed write becomes one `WorkdirError` that names the intact checkpoint. The stop signals,
the clock and the checkpoint store are parameters, so every branch is tested with fakes
(tests/test_loop.py) without compiling anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging

from vae_jax import checkpoint
from vae_jax import events as events_lib
from vae_jax import workdir as workdir_lib
from vae_jax.config import config_to_dict, population_weight_field
from vae_jax.errors import ConfigError, DivergenceError, Preempted
from vae_jax.records import as_json, check_finite, epoch_record, headline, summary
from vae_jax.stopping import CoordinatedStop, StopSignals, stop_signals

__all__ = ["Programs", "Job", "StopSignals", "CoordinatedStop", "run"]


class Programs(Protocol):
    """The compiled side of a job, as the loop calls it. Metrics come back as host arrays: per
    step (n,) for one model, (K, n) for K; evaluation figures as scalars, or (K,)."""

    description: str  # for the log line that says how the data moves

    def prepare(self, state, first_step: int, num_steps: int) -> None:
        """Compiles what the call starting at `first_step` will run (kept out of the timing)."""

    def run(self, state, first_step: int, num_steps: int, should_stop: Callable[[], bool]):
        """Steps [first_step, first_step + num_steps) -> (state, metrics); may stop early
        between chunks when `should_stop()`, and the metrics' length says how many ran."""

    def evaluate(self, state) -> dict:
        """The evaluation split's mean figures."""

    def save_pictures(self, images_dir: str, epoch: int, state, write: bool) -> None:
        """Draws the epoch's pictures (every process takes part) and, if `write`, saves them."""

    def settle_step_loop(self, state, recorded: dict | None, resumed: bool) -> dict | None:
        """Picks the step loop (`step_loops.settle`) before the first call; returns what
        run.json records of it (None: nothing to choose)."""


@dataclasses.dataclass(frozen=True)
class Job:
    """What the loop trains.

    Attributes:
      config: the run's config, written to config.json and to every checkpoint.
      members: the config each member trains exactly as; (config,) for a single run.
      stacked: False for one model; True when state leaves and metrics have a member axis.
      initial_state: the freshly initialised state: what a run without a checkpoint starts
        from, and the structure a checkpoint is restored into.
      steps_per_epoch: training batches per epoch.
      total_steps: where training ends (num_epochs, or max_steps).
      image_shape: (H, W, C) of the model's images, recorded in run.json.
      build_programs: the compiled programs, from the restored state.
      on_epoch_end: `(record, state) -> dict or None`, called on the host at every epoch end
        with each member's record and state; the fields it returns join the record.
    """

    config: ml_collections.ConfigDict
    members: tuple
    stacked: bool
    initial_state: Any
    steps_per_epoch: int
    total_steps: int
    image_shape: tuple
    build_programs: Callable[[Any], Programs]
    on_epoch_end: Callable[[dict, Any], dict | None] | None = None

    @property
    def size(self) -> int:
        return len(self.members)

    def metrics_paths(self, workdir: str) -> list[str]:
        if not self.stacked:
            return [os.path.join(workdir, "metrics.jsonl")]
        return [os.path.join(workdir, "members", str(k), "metrics.jsonl") for k in range(self.size)]

    def event_dirs(self, workdir: str) -> list[str]:
        """Each member's TensorBoard run: named by its seed and swept values in a population."""
        root = os.path.join(workdir, events_lib.EVENTS_DIR)
        if not self.stacked:
            return [root]
        names = []
        for k, member in enumerate(self.members):
            weight = population_weight_field(member.objective) or "beta"
            names.append(
                f"{k}-seed{member.seed}-{weight}{member[weight]:g}-lr{member.learning_rate:g}"
            )
        return [os.path.join(root, name) for name in names]

    def describe(self, k: int) -> str:
        """How an error names member k: '' for a single run."""
        if not self.stacked:
            return ""
        member = self.members[k]
        weight = population_weight_field(member.objective) or "beta"
        return (
            f"population member {k} (seed {member.seed}, {weight} {member[weight]:g}, "
            f"learning_rate {member.learning_rate:g}): "
        )

    def member_slices(self, tree: dict) -> list[dict]:
        """Per-member views of `tree` (leaves with a member axis when stacked)."""
        if not self.stacked:
            return [tree]
        return [{name: values[k] for name, values in tree.items()} for k in range(self.size)]

    def member_state(self, state, k: int):
        """Member k's state: the state itself for a single run."""
        return jax.tree.map(lambda leaf: leaf[k], state) if self.stacked else state

    def add_hook_fields(self, records: list[dict], state) -> list[dict]:
        """Each record with the fields `on_epoch_end` returns for it (numbers become floats)."""
        if self.on_epoch_end is None:
            return records
        for k, record in enumerate(records):
            added = self.on_epoch_end(dict(record), self.member_state(state, k)) or {}
            if not isinstance(added, dict):
                raise ConfigError(
                    f"on_epoch_end returned {type(added).__name__}; return a dict of new "
                    "record fields, or None."
                )
            clash = sorted(set(added) & set(record))
            if clash:
                raise ConfigError(
                    f"on_epoch_end returned {', '.join(repr(c) for c in clash)}, which the "
                    "record has already; give its fields new names."
                )
            for name, value in added.items():
                record[name] = _plain(value)
                try:
                    json.dumps(record[name])
                except (TypeError, ValueError):
                    raise ConfigError(
                        f"on_epoch_end returned {name}={value!r}, which a JSON record cannot "
                        "hold; return numbers, strings, booleans or lists of them."
                    ) from None
        return records


def _plain(value):
    """A hook's value as JSON holds it: arrays and NumPy scalars become Python numbers."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    array = np.asarray(value)
    return array.item() if array.ndim == 0 else array.tolist()


def _unfinished_epoch(job: Job, extra: dict) -> tuple[list[dict], float]:
    """The per-member step metrics and training time that a mid-epoch checkpoint carried.

    The on-disk names are those of the first versions: `epoch_metrics` for one model,
    `members_epoch_metrics` (a list) for a population."""
    saved = extra.get("members_epoch_metrics") if job.stacked else [extra.get("epoch_metrics")]
    saved = saved or [{}] * job.size
    metrics = [
        {name: [np.asarray(values, np.float32)] for name, values in (member or {}).items()}
        for member in saved
    ]
    return metrics, float(extra.get("epoch_train_seconds", 0.0))


def _unfinished_extra(job: Job, epoch_metrics: list[dict], seconds: float) -> dict:
    if job.stacked:
        return {
            "members_epoch_metrics": [as_json(m) for m in epoch_metrics],
            "epoch_train_seconds": seconds,
        }
    return {"epoch_metrics": as_json(epoch_metrics[0]), "epoch_train_seconds": seconds}


def _write_run_info(job: Job, workdir: str, step_loop: dict | None) -> None:
    workdir_lib.write_run_info(
        workdir,
        image_shape=job.image_shape,
        kind="population" if job.stacked else "single",
        population_size=job.size,
        step_loop=step_loop,
    )


def _start_outputs(job: Job, workdir: str, restored_step: int, is_primary: bool, step_loop):
    """Writes config.json and run.json (keeping its recorded `step_loop`) and rewinds every
    metrics log to the restored checkpoint (the primary process only: the others just read).

    A checkpoint inside an epoch that training goes on from was where `max_steps` ended an
    earlier run: its line for that part of the epoch goes, and the whole epoch's line replaces
    it, so each epoch has one line."""
    logs = [workdir_lib.MetricsLog(path) for path in job.metrics_paths(workdir)]
    if not is_primary:
        return logs
    workdir_lib.write_json_atomic(
        os.path.join(workdir, workdir_lib.CONFIG_FILE), config_to_dict(job.config)
    )
    _write_run_info(job, workdir, step_loop)
    for k, log in enumerate(logs):
        os.makedirs(os.path.dirname(log.path), exist_ok=True)
        dropped = log.rewind(
            restored_step,
            drop_at_step=restored_step % job.steps_per_epoch != 0
            and restored_step < job.total_steps,
        )
        if dropped:
            logging.info(
                "%sDropped %d metric records past step %d; they will be redone.",
                job.describe(k),
                dropped,
                restored_step,
            )
    if restored_step:
        logging.info("Resumed from the checkpoint at step %d.", restored_step)
    return logs


def _evaluation(workdir: str) -> dict | None:
    """eval.json's figures for the event files; an unreadable one is skipped, not fatal."""
    try:
        return workdir_lib.read_json(os.path.join(workdir, "eval.json"))
    except (OSError, ValueError):
        return None


def _open_events(job: Job, workdir: str, logs, cleanup) -> list:
    """Each member's TensorBoard run, rebuilt from its rewound metrics log (primary only)."""
    images_dir = None if job.stacked else os.path.join(workdir, "images")
    opened = []
    for member, directory, log in zip(job.members, job.event_dirs(workdir), logs):
        event_log = events_lib.EventLog(directory, config_to_dict(member), images_dir)
        cleanup.callback(event_log.close)
        event_log.rebuild(log.read(), None if job.stacked else _evaluation(workdir))
        opened.append(event_log)
    return opened


@dataclasses.dataclass
class _Loop:
    """The epoch/call loop of one `run`, past the restore: its position and the unfinished
    epoch's metrics, and one method per branch."""

    job: Job
    workdir: str
    programs: Programs
    checkpoints: Any
    logs: list
    stop: Any
    clock: Callable[[], float]
    progress: Any
    is_primary: bool
    step: int
    epoch_metrics: list[dict]
    epoch_seconds: float
    events: list = dataclasses.field(default_factory=list)
    last_checkpoint: int = 0
    calls: int = 0

    def __post_init__(self):
        self.last_checkpoint = self.step

    def failure(self, error: BaseException):
        return workdir_lib.write_failure(error, self.workdir, self.checkpoints.complete_steps())

    def save(self, state, extra=None) -> None:
        """Starts a checkpoint save; an earlier save's failure (a full disk) surfaces here. With
        `extra` (a preemption, the process ends right after) it waits for the save."""
        try:
            self.checkpoints.save(self.step, state, self.job.config, extra)
            if extra is not None:
                self.checkpoints.wait()
        except Exception as error:
            raise self.failure(error) from error

    def train(self, state):
        """Runs every call to the end of training, or to a stop request."""
        job = self.job
        calls_per_epoch = job.config.steps_per_call or job.steps_per_epoch
        while self.step < job.total_steps:
            epoch = self.step // job.steps_per_epoch + 1
            epoch_end = min(epoch * job.steps_per_epoch, job.total_steps)
            num_steps = min(epoch_end - self.step, calls_per_epoch)
            state = self.call(state, epoch, num_steps)
            self.stop.poll()  # once per boundary: every later check reads this answer
            if self.step < epoch_end:  # inside the epoch: keep its metrics with the state
                if self.stop.requested:
                    self.save(state, _unfinished_extra(job, self.epoch_metrics, self.epoch_seconds))
                    raise Preempted(self.stop.signum, self.step)
                continue
            self.finish_epoch(state, epoch)
            if self.stop.requested and self.step < job.total_steps:
                raise Preempted(self.stop.signum, self.step)
        return state

    def call(self, state, epoch: int, num_steps: int):
        """One compiled call: train, check, and keep the steps' metrics for the epoch's record."""
        self.programs.prepare(state, self.step, num_steps)  # compilation stays out of the timing
        started = self.clock()
        state, metrics = self.programs.run(state, self.step, num_steps, self.stop.poll)
        self.epoch_seconds += self.clock() - started
        done = None
        for k, member_metrics in enumerate(self.job.member_slices(metrics)):
            done = len(member_metrics["loss"])
            if self.job.config.nan_policy == "stop":
                self.check_training(k, member_metrics)
            for name, values in member_metrics.items():
                self.epoch_metrics[k].setdefault(name, []).append(np.asarray(values, np.float32))
        if not self.calls:  # the figure a user waits for at every start
            logging.info(
                "First training call done: %d steps, now at step %d.", done, self.step + done
            )
        self.calls += 1
        self.step += done
        self.progress.update(done)
        return state

    def check_training(self, k: int, member_metrics: dict) -> None:
        member = self.job.members[k]
        epoch = self.step // self.job.steps_per_epoch + 1
        try:
            check_finite(
                member_metrics, self.step, epoch, self.last_checkpoint, member.learning_rate
            )
        except DivergenceError as error:
            raise DivergenceError(f"{self.job.describe(k)}{error}") from None

    def records(self, state, epoch: int) -> list[dict]:
        """Evaluates every member and makes its record of the finished epoch."""
        job, split = self.job, self.job.config.eval_split
        evaluated = job.member_slices(jax.device_get(self.programs.evaluate(state)))
        records = []
        for k, (member, eval_metrics) in enumerate(zip(job.members, evaluated)):
            if not all(math.isfinite(float(v)) for v in eval_metrics.values()):
                raise DivergenceError(
                    f"{job.describe(k)}the {split} figures became non-finite after step {self.step} "
                    f"(epoch {epoch}): {eval_metrics}; the last good checkpoint (step "
                    f"{self.last_checkpoint}) is kept. Lower learning_rate (now "
                    f"{member.learning_rate})."
                )
            steps = self.step - (epoch - 1) * job.steps_per_epoch
            try:
                records.append(
                    epoch_record(
                        epoch,
                        self.step,
                        steps,
                        self.epoch_metrics[k],
                        eval_metrics,
                        split,
                        self.epoch_seconds,
                        member,
                        size=job.size,
                    )
                )
            except DivergenceError as error:
                raise DivergenceError(f"{job.describe(k)}{error}") from None
        return job.add_hook_fields(records, state)

    def finish_epoch(self, state, epoch: int) -> None:
        """Evaluation, records, pictures, the checkpoint rule and the log line of an epoch end."""
        job, config = self.job, self.job.config
        records = self.records(state, epoch)
        try:
            if self.is_primary:
                for log, record in zip(self.logs, records):
                    log.append(record)
            if epoch % config.images_every_epochs == 0 or self.step == job.total_steps:
                images_dir = os.path.join(self.workdir, "images")
                self.programs.save_pictures(images_dir, epoch, state, self.is_primary)
            for event_log, record in zip(self.events, records):
                event_log.add(record)  # after the pictures: the epoch's grids go with it
        except OSError as error:
            raise self.failure(error) from error
        # Training ended inside the epoch (max_steps): its steps so far go with the checkpoint,
        # so that raising max_steps finishes the epoch with the line an unbroken run writes.
        unfinished = (
            _unfinished_extra(job, self.epoch_metrics, self.epoch_seconds)
            if self.step % job.steps_per_epoch
            else None
        )
        self.epoch_metrics, self.epoch_seconds = [{} for _ in job.members], 0.0
        if (
            epoch % config.checkpoint_every_epochs == 0
            or self.step == job.total_steps
            or self.stop.requested
        ):
            self.save(state, unfinished)
            self.last_checkpoint = self.step
        self.log_epoch(epoch, records)

    def log_epoch(self, epoch: int, records: list[dict]) -> None:
        split = self.job.config.eval_split
        field = headline(records[0], split)
        self.progress.set_postfix({field: " ".join(f"{r[field]:.2f}" for r in records)})
        text = (
            summary(records[0], split)
            if not self.job.stacked
            else f"{field} per member " + " ".join(f"{r[field]:.2f}" for r in records)
        )
        logging.info(
            "epoch %d/%d step %d: %s nats; %.2f s, %.0f examples/s",
            epoch,
            math.ceil(self.job.total_steps / self.job.steps_per_epoch),
            self.step,
            text,
            records[0]["train_seconds"],
            records[0]["examples_per_second"],
        )


def _settle_step_loop(job, workdir, programs, state, recorded, restored_step, checkpoints):
    """Picks the step loop before the first call and records a new choice in run.json."""
    step_loop = programs.settle_step_loop(state, recorded, resumed=restored_step > 0)
    if jax.process_index() == 0 and step_loop and step_loop != recorded:
        try:
            _write_run_info(job, workdir, step_loop)
        except OSError as error:
            raise workdir_lib.write_failure(error, workdir, checkpoints.complete_steps()) from error


def run(
    job: Job,
    workdir: str,
    *,
    start_fresh: bool = False,
    signals: Callable[[], Any] = stop_signals,
    clock: Callable[[], float] = time.perf_counter,
    open_checkpoints: Callable[[str, int], Any] = checkpoint.CheckpointStore,
) -> list[list[dict]]:
    """Trains `job` in `workdir`, or resumes it, to `job.total_steps`.

    Args:
      job: what to train (see `Job`).
      workdir: an existing, writable directory (`workdir.prepare_workdir`).
      start_fresh: move a previous run aside (to `previous-<time>/`) instead of resuming it.
      signals: makes the context manager that tells of a stop request
        (`stopping.stop_signals`: coordinated over several processes).
      clock: seconds, for `train_seconds`.
      open_checkpoints: `(directory, max_to_keep) -> store`, a `checkpoint.CheckpointStore`.

    Returns:
      Per member, the records of its metrics log after the run.

    Raises:
      VaeJaxError: a problem the user can fix: found before the workdir changed, or (a diverging
        run, a failed write) with the intact checkpoint named.
      Preempted: a stop was requested; a checkpoint of the step reached was saved.
    """
    is_primary = jax.process_index() == 0  # one process writes metrics, pictures, config.json
    with contextlib.ExitStack() as cleanup:  # unlocks and closes checkpoints on every exit
        if is_primary:
            cleanup.enter_context(workdir_lib.WorkdirLock(workdir))
            if start_fresh:
                moved_to = workdir_lib.move_run_aside(workdir)
                if moved_to:
                    logging.info("Moved the previous run aside to %s.", moved_to)
        checkpoints = cleanup.enter_context(
            open_checkpoints(os.path.join(workdir, "checkpoints"), job.config.max_to_keep)
        )
        state, restored_step, extra = checkpoints.restore_latest(job.initial_state, job.config)
        # A fresh start measures again; a resumed run keeps the loop it was trained with.
        recorded = workdir_lib.read_run_info(workdir).get("step_loop") if restored_step else None
        # Every check has passed: from here on the workdir is written.
        try:
            logs = _start_outputs(job, workdir, restored_step, is_primary, recorded)
            events = _open_events(job, workdir, logs, cleanup) if is_primary else []
        except OSError as error:
            raise workdir_lib.write_failure(error, workdir, checkpoints.complete_steps()) from error
        if restored_step >= job.total_steps:
            logging.info(
                "Already trained to step %d of %d; raise num_epochs to go on.",
                restored_step,
                job.total_steps,
            )
            return [log.read() for log in logs]
        programs = job.build_programs(state)
        _settle_step_loop(job, workdir, programs, state, recorded, restored_step, checkpoints)
        logging.info("%s", programs.description)
        _train(
            job,
            workdir,
            programs,
            checkpoints,
            logs,
            state,
            restored_step,
            extra,
            signals=signals,
            clock=clock,
            is_primary=is_primary,
            events=events,
        )
        return [log.read() for log in logs]


def _train(
    job,
    workdir,
    programs,
    checkpoints,
    logs,
    state,
    step,
    extra,
    *,
    signals,
    clock,
    is_primary,
    events,
) -> None:
    epoch_metrics, epoch_seconds = _unfinished_epoch(job, extra)
    progress = tqdm.tqdm(
        total=job.total_steps,
        initial=step,
        unit="step",
        dynamic_ncols=True,
        disable=not (job.config.progress_bar and is_primary),
        desc="training" if not job.stacked else f"training {job.size} models",
    )
    with signals() as stop, progress:
        loop = _Loop(
            job,
            workdir,
            programs,
            checkpoints,
            logs,
            stop,
            clock,
            progress,
            is_primary,
            step,
            epoch_metrics,
            epoch_seconds,
            events,
        )
        loop.train(state)
    try:
        checkpoints.wait()  # the last save is complete, or its failure is reported here
    except Exception as error:
        raise loop.failure(error) from error
