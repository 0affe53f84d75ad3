"""Training and evaluation: the train state, the jitted step, the epoch as one `lax.scan`.

The path of a batch: the training split lives on the device as uint8; each epoch, one compiled
call shuffles it with a key derived from the epoch number, then scans `train_step` over the
batches, gathering each batch by index on the device. The host sees the device only between
epochs: to evaluate the test split, log a line of metrics, draw PNG grids and start an
asynchronous checkpoint.

Randomness: one root key from `config.seed`; each stream (init, training noise, shuffling,
evaluation, pictures) folds in its own constant, and within a stream every draw folds in the step,
epoch or example index. A run is reproducible, and a resumed run draws exactly what the
uninterrupted run would have drawn.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import threading
import time
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from absl import logging

from vae_jax import checkpoint, data, models, objectives, outputs, parallel
from vae_jax.config import config_to_dict, validate_config
from vae_jax.data import stream
from vae_jax.errors import ConfigError, DivergenceError, Preempted, WorkdirError

# Key streams: fold_in(root, STREAM) then fold_in(stream, step / epoch / example index).
INIT_STREAM, TRAIN_STREAM, SHUFFLE_STREAM, EVAL_STREAM, PICTURES_STREAM, CRITIC_STREAM = range(6)


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, and nothing else.

    Attributes:
      step: int32 scalar, the number of updates applied so far.
      params: the model's variables.
      opt_state: the optimizer's state.
      key: typed PRNG key, the root of every draw (see the module docstring).
      critic: for objectives with a critic (FactorVAE), {'params', 'opt_state'} of the critic;
        None otherwise.
    """

    step: jax.Array
    params: dict
    opt_state: optax.OptState
    key: jax.Array
    critic: dict | None = None


def stream_key(root_key: jax.Array, stream: int) -> jax.Array:
    return jax.random.fold_in(root_key, stream)


def to_float(images: jax.Array) -> jax.Array:
    """uint8 pixels 0..255 -> float32 in [0, 1] (0 and 255 map to exactly 0 and 1)."""
    return images.astype(jnp.float32) * (1.0 / 255.0)


def burda_schedule(learning_rate, steps_per_epoch: int, num_stages: int = 8):
    r"""Burda et al. (2015)'s staircase: stage i = 0..7 runs 3^i epochs at rate lr * 10^(-i/7).

    .. math::
        \eta(t) = \eta_0 \, 10^{-i/7} \quad\text{for}\quad
        \textstyle\sum_{j<i} 3^j \le t / \text{steps per epoch} < \sum_{j \le i} 3^j

    3280 epochs in all; past them the last rate holds. `learning_rate` may be traced.
    """
    boundaries = np.cumsum([3**i for i in range(num_stages)])[:-1] * steps_per_epoch
    rates = learning_rate * jnp.asarray([10.0 ** (-i / 7) for i in range(num_stages)])

    def schedule(step):
        return rates[jnp.searchsorted(jnp.asarray(boundaries), step, side="right")]

    return schedule


def build_optimizer(config: ml_collections.ConfigDict, total_steps: int, learning_rate=None):
    """Adam (or AdamW) with the configured learning-rate schedule over `total_steps`.

    `learning_rate` overrides `config.learning_rate`; it may be traced (populations vmap over it).
    """
    rate = config.learning_rate if learning_rate is None else learning_rate
    if config.lr_schedule == "cosine":
        rate = optax.cosine_decay_schedule(rate, decay_steps=max(total_steps, 1))
    elif config.lr_schedule == "burda":
        rate = burda_schedule(rate, total_steps // config.num_epochs)
    elif config.lr_schedule == "warmup_cosine":
        # optax.warmup_cosine_decay_schedule(0, rate, ...) spelled out: its `peak_value == 0.0`
        # test cannot run on a traced rate (same schedule, same numbers).
        warmup = config.warmup_steps
        decay_steps = max(total_steps, warmup + 1)
        rate = optax.join_schedules(
            [
                optax.linear_schedule(0.0, rate, warmup),
                optax.cosine_decay_schedule(rate, decay_steps=decay_steps - warmup),
            ],
            [warmup],
        )
    if config.optimizer == "adamw":
        return optax.adamw(rate, eps=config.adam_eps, weight_decay=config.weight_decay)
    return optax.adam(rate, eps=config.adam_eps)


def create_train_state(
    model: models.VAE,
    optimizer,
    image_shape,
    latents: int,
    seed: int,
    sharding=None,
    critic: objectives.Critic | None = None,
):
    """A fresh train state: parameters drawn from the INIT stream of `seed` (a critic's from the
    CRITIC stream), placed by `sharding` (e.g. replicated over a mesh; None: the default
    device)."""

    def init():
        root_key = jax.random.key(seed)
        example_x = jnp.zeros((1, *image_shape), jnp.float32)
        example_z = jnp.zeros((1, latents), jnp.float32)
        params = model.init(stream_key(root_key, INIT_STREAM), example_x, example_z)
        critic_state = None
        if critic is not None:
            critic_params = critic.init(stream_key(root_key, CRITIC_STREAM))
            critic_state = {
                "params": critic_params,
                "opt_state": critic.optimizer.init(critic_params),
            }
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            key=root_key,
            critic=critic_state,
        )

    return jax.jit(init, out_shardings=sharding)()


def _records_to_float(records: jax.Array, render: Callable | None) -> jax.Array:
    """A batch of records (images, or what `render` turns into images) -> float images."""
    return to_float(records if render is None else render(records))


def make_train_step(
    objective: objectives.Objective | Callable,
    optimizer,
    dynamic_binarization: bool = False,
    render: Callable | None = None,
    skip_nonfinite: bool = False,
):
    """One update: (state, batch of records) -> (state, metrics of that batch).

    `objective` is an `objectives.Objective`, or just its loss function. With a critic, the
    model's update is followed, in the same step, by one update of the critic on the step's
    latents. Records are uint8 images, or, with `render`, what it turns into uint8 images on the device.
    With `skip_nonfinite`, an update whose loss or gradient is not finite is not applied (the
    parameters and optimizer state stay as they were, the step still counts) and the metrics
    gain `skipped` = 1 for it.

    The step's key is fold_in(TRAIN stream, step): independent of everything but the seed and
    the step, so a resumed run continues with the same draws.
    """

    if not isinstance(objective, objectives.Objective):
        objective = objectives.Objective(objective)
    critic = objective.critic

    def train_step(state: TrainState, images: jax.Array):
        step_key = jax.random.fold_in(stream_key(state.key, TRAIN_STREAM), state.step)
        if critic is None:
            loss_key, binarize_key = jax.random.split(step_key)
        else:
            loss_key, binarize_key, critic_key = jax.random.split(step_key, 3)
        x = _records_to_float(images, render)
        if dynamic_binarization:
            x = jax.random.bernoulli(binarize_key, x).astype(jnp.float32)
        loss_args = (x, loss_key, state.step)
        if critic is not None:
            loss_args += (state.critic["params"],)
        grads, metrics = jax.grad(objective.loss, has_aux=True)(state.params, *loss_args)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new = {"params": optax.apply_updates(state.params, updates), "opt_state": opt_state}
        all_grads = [grads]
        if critic is not None:
            latents = metrics.pop("latents")
            critic_grads, critic_metrics = jax.grad(critic.loss, has_aux=True)(
                state.critic["params"], latents, critic_key
            )
            critic_updates, critic_opt_state = critic.optimizer.update(
                critic_grads, state.critic["opt_state"], state.critic["params"]
            )
            new["critic"] = {
                "params": optax.apply_updates(state.critic["params"], critic_updates),
                "opt_state": critic_opt_state,
            }
            metrics = {**metrics, **critic_metrics}
            all_grads.append(critic_grads)
        if skip_nonfinite:
            finite = jnp.isfinite(metrics["loss"]) & jnp.all(
                jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(all_grads)])
            )
            old = {name: getattr(state, name) for name in new}
            new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
            metrics = {**metrics, "skipped": (~finite).astype(jnp.float32)}
        return state.replace(step=state.step + 1, **new), metrics

    return train_step


def make_train_epoch(
    train_step: Callable,
    batch_size: int,
    steps_per_epoch: int,
    num_steps: int,
    batch_sharding=None,
):
    """Runs `num_steps` updates of one epoch as a single `lax.scan`.

    Returns `train_epoch(state, images) -> (state, per-step metrics)`, where images is the whole
    (N, H, W, C) uint8 training split on the device. The epoch's order is a permutation drawn from
    fold_in(SHUFFLE stream, epoch); batch b of the epoch is its slice [b*B, (b+1)*B), and the
    remainder N mod B is dropped. The call starts at batch `state.step % steps_per_epoch`, so a
    run resumed mid-epoch sees the batches it would have seen; a call never crosses an epoch end.
    With `batch_sharding`, each gathered batch is split over the devices (data parallelism).
    """

    def train_epoch(state: TrainState, images: jax.Array):
        epoch = state.step // steps_per_epoch
        first_batch = state.step % steps_per_epoch
        order_key = jax.random.fold_in(stream_key(state.key, SHUFFLE_STREAM), epoch)
        order = jax.random.permutation(order_key, images.shape[0])

        def body(state, batch_offset):
            start = (first_batch + batch_offset) * batch_size
            indices = jax.lax.dynamic_slice_in_dim(order, start, batch_size)
            batch = images[indices]
            if batch_sharding is not None:
                batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
            return train_step(state, batch)

        return jax.lax.scan(body, state, jnp.arange(num_steps))

    return train_epoch


def make_host_loop_epoch(
    train_step: Callable, batch_size: int, steps_per_epoch: int, num_steps: int, batch_sharding=None
):
    """`make_train_epoch` with the steps called one by one from the host instead of scanned.

    The same batches in the same order: the epoch's permutation comes from one compiled call,
    then each compiled step gathers batch `state.step % steps_per_epoch` of it. Returns
    `(compile(state, images) -> run)` where `run(state, images) -> (state, stacked metrics)`.
    For models whose steps take milliseconds the per-step dispatch is negligible, and it keeps
    XLA:CPU's convolutions out of loop bodies, where they run several times slower.
    """

    def epoch_order(state: TrainState, images: jax.Array) -> jax.Array:
        order_key = jax.random.fold_in(
            stream_key(state.key, SHUFFLE_STREAM), state.step // steps_per_epoch
        )
        return jax.random.permutation(order_key, images.shape[0])

    def one_step(state: TrainState, images: jax.Array, order: jax.Array):
        start = (state.step % steps_per_epoch) * batch_size
        batch = images[jax.lax.dynamic_slice_in_dim(order, start, batch_size)]
        if batch_sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        return train_step(state, batch)

    def compile_programs(state, images):
        order_program = jax.jit(epoch_order).lower(state, images).compile()
        order = jax.ShapeDtypeStruct((images.shape[0],), jnp.int32)
        step_program = jax.jit(one_step, donate_argnums=0).lower(state, images, order).compile()

        def run(state, images):
            order = order_program(state, images)
            metrics = []
            for _ in range(num_steps):
                state, step_metrics = step_program(state, images, order)
                metrics.append(step_metrics)
            return state, jax.tree.map(lambda *values: jnp.stack(values), *metrics)

        return run

    return compile_programs


def make_host_loop_chunk(train_step: Callable):
    """`make_train_chunk` with the steps called one by one: `compile(state, batches) -> run`."""

    def compile_programs(state, batches):
        example = jax.ShapeDtypeStruct(batches.shape[1:], batches.dtype)
        step_program = jax.jit(train_step, donate_argnums=0).lower(state, example).compile()

        def run(state, batches):
            metrics = []
            for index in range(batches.shape[0]):
                state, step_metrics = step_program(state, batches[index])
                metrics.append(step_metrics)
            return state, jax.tree.map(lambda *values: jnp.stack(values), *metrics)

        return run

    return compile_programs


def choose_step_loop(config: ml_collections.ConfigDict) -> str:
    """'scan' or 'host': the config's choice; 'auto' is 'scan' for every model and backend.

    The conv model's step, too, runs fastest scanned on CPU, now that its convolutions'
    gradients are written in the form XLA:CPU runs well inside loops (`convolutions.py`):
    2,485 against 2,032 examples per second at batch 128 called per step. 'host' stays for
    programs whose ops XLA runs slower in loop bodies (jax-ml/jax#12868)."""
    if config.step_loop != "auto":
        return config.step_loop
    return "scan"


def make_train_chunk(train_step: Callable):
    """Streaming: `train_chunk(state, batches) -> (state, per-step metrics)` scans the step over
    (num_steps, B, ...) batches that the host gathered in the epoch's order."""

    def train_chunk(state: TrainState, batches: jax.Array):
        return jax.lax.scan(train_step, state, batches)

    return train_chunk


def eval_inputs(records, indices, key, render=None, binarize: bool = False):
    """(float inputs, per-example keys) of evaluation examples `indices`.

    Example i's key is fold_in(key, i); with `binarize` (dynamically binarized training) its
    pixels are one fixed Bernoulli draw from fold_in(that key, 1), the same every epoch and for
    any batch size, so every evaluation scores the same binary data.
    """
    example_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)
    x = _records_to_float(records, render)
    if binarize:
        binarize_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(example_keys, 1)
        x = jax.vmap(jax.random.bernoulli)(binarize_keys, x).astype(jnp.float32)
    return x, example_keys


def make_evaluate(
    model: models.VAE,
    batch_size: int,
    num_examples: int,
    render: Callable | None = None,
    binarize: bool = False,
    batch_sharding=None,
    variational: bool = True,
):
    """Mean single-sample ELBO terms over a whole split: `evaluate(params, images, key) -> dict`.

    For a non-`variational` model (an autoencoder) the only term is the reconstruction loss
    from the encoder's mean (`objectives.deterministic_terms`).

    `images` is the split padded to a multiple of `batch_size` (see `pad_to_multiple`); the first
    `num_examples` count. Example i's draws come from fold_in(key, i), so the figures do not
    depend on the evaluation batch size. With `binarize` (for dynamically binarized training),
    each grayscale example is scored as one fixed Bernoulli draw of its pixels, the same every
    epoch, so the figure is a log-likelihood bound of binary data rather than a cross-entropy.
    """

    terms_fn = objectives.elbo_terms if variational else objectives.deterministic_terms
    names = ("elbo", "kl", "recon") if variational else ("recon",)

    def evaluate(params, images: jax.Array, key: jax.Array) -> dict:
        num_batches = images.shape[0] // batch_size
        batches = images.reshape((num_batches, batch_size, *images.shape[1:]))

        def body(totals, batch_index):
            indices = batch_index * batch_size + jnp.arange(batch_size)
            batch = batches[batch_index]
            if batch_sharding is not None:
                batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
            x, example_keys = eval_inputs(batch, indices, key, render, binarize)
            terms = terms_fn(model, params, x, example_keys)
            weight = (indices < num_examples).astype(jnp.float32)
            return {k: totals[k] + jnp.sum(weight * terms[k]) for k in totals}, None

        zeros = {k: jnp.zeros((), jnp.float32) for k in names}
        totals, _ = jax.lax.scan(body, zeros, jnp.arange(num_batches))
        return {k: v / num_examples for k, v in totals.items()}

    return evaluate


def make_pictures(model: models.VAE, num_samples: int):
    """`pictures(params, images, key) -> (reconstructions, samples, latent means)`.

    Reconstructions and samples are E[x|z] in [0, 1]; the latent means are the encoder's means
    of the images, for a scatter plot coloured by label.

    Reconstructions decode the posterior mean of each image; samples decode z ~ N(0, I) drawn
    from `key`, the same every epoch so that grids are comparable across epochs.
    """

    def pictures(params, images: jax.Array, key: jax.Array):
        mean, _ = model.apply(params, to_float(images), method="encode")
        reconstructions = objectives.likelihood_mean(*model.apply(params, mean, method="decode"))
        z = jax.random.normal(key, (num_samples, mean.shape[-1]))
        samples = objectives.likelihood_mean(*model.apply(params, z, method="decode"))
        return reconstructions, samples, mean

    return pictures


def pad_to_multiple(images: np.ndarray, multiple: int) -> np.ndarray:
    padding = (-images.shape[0]) % multiple
    if padding == 0:
        return images
    return np.concatenate([images, np.zeros((padding, *images.shape[1:]), images.dtype)])


def _first_examples(images: np.ndarray, limit: int) -> np.ndarray:
    return images if limit == 0 else images[:limit]


def _check_finite(step_metrics: dict, first_step: int, epoch: int, last_checkpoint, config):
    """Raises DivergenceError naming the first step whose loss or terms are not finite."""
    bad = ~np.isfinite(step_metrics["loss"])
    if not bad.any():
        return
    offset = int(np.argmax(bad))
    values = ", ".join(f"{name}={float(v[offset]):.6g}" for name, v in sorted(step_metrics.items()))
    kept = (
        f"the last good checkpoint (step {last_checkpoint}) is kept"
        if last_checkpoint
        else "no checkpoint had been written"
    )
    raise DivergenceError(
        f"the training loss became non-finite at step {first_step + offset + 1} (epoch {epoch}): "
        f"{values}; {kept}. Lower learning_rate (now {config.learning_rate}) or check the data."
    )


def _load_splits(config: ml_collections.ConfigDict):
    """The data set and its training and evaluation records, checked against the batch size."""
    dataset = data.load_dataset(config.dataset, config.image_size, config.data_dir)
    train_records = _first_examples(dataset.split("train"), config.max_train_examples)
    eval_records = _first_examples(dataset.split(config.eval_split), config.max_eval_examples)
    num_train = len(train_records)
    if config.batch_size > num_train:
        raise ConfigError(
            f"batch_size={config.batch_size} is larger than the training split of "
            f"{config.dataset!r} ({num_train} examples); allowed: 1 to {num_train}."
        )
    return dataset, train_records, eval_records


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
    ):
        self.mesh = parallel.data_mesh() if mesh is None else mesh
        self.pipeline = pipeline
        self.step_loop = step_loop
        self.train_step = train_step
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.record_spec = (train_records.shape[1:], train_records.dtype)
        self._programs = {}
        if pipeline == "device":
            # Small data: a full copy on every device; each device gathers its part of a batch.
            self.train_on_device = parallel.put_replicated(train_records, self.mesh)
        else:
            self.loader = stream.StreamingLoader(
                train_records,
                batch_size,
                steps_per_epoch,
                shuffle_key,
                chunk_steps,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
                place=lambda chunk: parallel.put_process_batches(chunk, self.mesh, 1),
            )
            self.chunk_steps = chunk_steps

    def program(self, state, num_steps: int):
        """The compiled program for `num_steps` steps: compiled once, before it is timed."""
        if num_steps not in self._programs:
            started = time.perf_counter()
            if self.pipeline == "device":
                make = make_train_epoch if self.step_loop == "scan" else make_host_loop_epoch
                fn = make(
                    self.train_step,
                    self.batch_size,
                    self.steps_per_epoch,
                    num_steps,
                    parallel.batch_sharding(self.mesh),
                )
                example = self.train_on_device
            else:
                fn = (make_train_chunk if self.step_loop == "scan" else make_host_loop_chunk)(
                    self.train_step
                )
                shape, dtype = self.record_spec
                example = jax.ShapeDtypeStruct(
                    (num_steps, self.batch_size, *shape),
                    dtype,
                    sharding=parallel.batch_sharding(self.mesh, leading_axes=1),
                )
            if self.step_loop == "scan":
                program = jax.jit(fn, donate_argnums=0).lower(state, example).compile()
            else:
                program = fn(state, example)
            self._programs[num_steps] = program
            logging.info(
                "Compiled the %d-step %s program (%s loop) in %.2f s.",
                num_steps,
                self.pipeline,
                self.step_loop,
                time.perf_counter() - started,
            )
        return self._programs[num_steps]

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
            return state, jax.device_get(step_metrics)
        chunks = []
        for batches in self.loader.epoch(first_step, num_steps):
            state, chunk_metrics = self.program(state, batches.shape[0])(state, batches)
            chunks.append(chunk_metrics)
            if should_stop():
                break
        chunks = jax.device_get(chunks)
        return state, {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


class _Pictures:
    """The PNG grids of every epoch, and the latent scatter when the split has labels."""

    def __init__(self, config, model, dataset, eval_records, root_key):
        count = min(config.num_image_examples, len(eval_records))
        # Evenly spaced over the split: binarized MNIST's test split is sorted by digit.
        self.indices = np.linspace(0, len(eval_records) - 1, count).astype(int)
        records = eval_records[self.indices]
        render = dataset.render
        self.inputs = np.asarray(records if render is None else jax.jit(render)(records))
        labels = dataset.labels.get(config.eval_split)
        self.labels = None if labels is None else labels[self.indices]
        self.enabled = count > 0
        self.draw = jax.jit(make_pictures(model, count))
        self.key = stream_key(root_key, PICTURES_STREAM)

    def save(self, images_dir: str, epoch: int, params, write: bool = True) -> None:
        """Draws the grids (every process takes part: the parameters span all of them) and,
        if `write`, saves them."""
        if not self.enabled:
            return
        reconstructions, samples, means = jax.device_get(self.draw(params, self.inputs, self.key))
        if not write:
            return
        outputs.save_reconstructions(
            os.path.join(images_dir, f"reconstructions_epoch_{epoch:03d}.png"),
            self.inputs.astype(np.float32) / 255.0,
            reconstructions,
        )
        outputs.save_samples(os.path.join(images_dir, f"samples_epoch_{epoch:03d}.png"), samples)
        if self.labels is not None:
            outputs.save_latent_scatter(
                os.path.join(images_dir, f"latents_epoch_{epoch:03d}.png"), means, self.labels
            )


def _start_outputs(
    config, workdir: str, restored_step: int, is_primary: bool = True
) -> outputs.MetricsLog:
    """Writes config.json and rewinds metrics.jsonl to the restored checkpoint (the primary
    process only: the others just read)."""
    metrics_log = outputs.MetricsLog(os.path.join(workdir, "metrics.jsonl"))
    if not is_primary:
        return metrics_log
    outputs.write_json_atomic(os.path.join(workdir, "config.json"), config_to_dict(config))
    dropped = metrics_log.rewind(restored_step)
    if restored_step:
        logging.info("Resumed from the checkpoint at step %d.", restored_step)
    if dropped:
        logging.info(
            "Dropped %d metric records past step %d; they will be redone.", dropped, restored_step
        )
    return metrics_log


class _StopSignals:
    """Turns SIGTERM and SIGINT into a request to stop at the next call boundary (in the main
    thread; elsewhere signals cannot be caught and nothing changes)."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        del frame
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C does not wait
        self.signum = signum
        logging.warning(
            "Got %s: stopping at the next step boundary with a checkpoint.",
            signal.Signals(signum).name,
        )

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _write_failure(error: BaseException, workdir: str, checkpoints=None) -> WorkdirError:
    """The error for a failed write: the operating system's reason, and which checkpoint is
    intact (read from disk: saves are asynchronous, so the last one started may be the one that
    failed)."""
    text = str(error).strip()
    code = re.search(r"os_error_code='?(\d+)", text)
    reason = (
        getattr(error, "strerror", None)
        or (os.strerror(int(code.group(1))) if code else None)
        or text.splitlines()[0].split(" [")[0][:300]
    )
    where = getattr(error, "filename", None) or workdir
    complete = checkpoints.complete_steps() if checkpoints is not None else []
    kept = (
        f"the last complete checkpoint (step {complete[-1]}) is intact"
        if complete
        else "no checkpoint had been completed"
    )
    return WorkdirError(
        f"cannot write to the workdir: {reason} ({where}); {kept}. Free space or fix the "
        "permissions and run the same command again to resume."
    )


def _epoch_record(epoch, step, steps, epoch_metrics, eval_metrics, split, seconds, config):
    """The metrics.jsonl line of a finished epoch, from its per-step training metrics."""
    values = {k: np.concatenate(v) for k, v in epoch_metrics.items()}
    skipped = values.pop("skipped", np.zeros_like(values["loss"]))
    used = skipped == 0
    if not used.any():
        raise DivergenceError(
            f"every update of epoch {epoch} had a non-finite loss or gradient and was skipped "
            f"(nan_policy='skip'); lower learning_rate (now {config.learning_rate})."
        )
    record = {
        "epoch": epoch,
        "step": step,
        **{f"train_{k}": float(np.mean(v[used])) for k, v in sorted(values.items())},
        **{f"{split}_{k}": float(v) for k, v in sorted(eval_metrics.items())},
        "train_seconds": seconds,
        "examples_per_second": steps * config.batch_size / seconds,
    }
    if config.nan_policy == "skip":
        record["skipped_steps"] = int(np.sum(~used))
    return record


def _summary(record: dict, split: str) -> str:
    """'train_elbo -100.12, test_elbo -101.35 (recon 80.10, kl 21.25)', or the recon for an
    autoencoder."""
    if f"{split}_elbo" not in record:
        return (
            f"train_recon {record['train_recon']:.2f}, {split}_recon {record[f'{split}_recon']:.2f}"
        )
    return (
        f"train_elbo {record['train_elbo']:.2f}, {split}_elbo {record[f'{split}_elbo']:.2f} "
        f"(recon {record[f'{split}_recon']:.2f}, kl {record[f'{split}_kl']:.2f})"
    )


def _as_json(epoch_metrics: dict) -> dict:
    """Per-step float32 metrics as JSON lists; float32 -> Python float -> float32 is exact."""
    return {k: [float(x) for x in np.concatenate(v)] for k, v in epoch_metrics.items() if v}


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, start_fresh: bool = False
) -> list[dict]:
    """Trains, or resumes training, as `config` says, and writes everything into `workdir`.

    Args:
      config: see `vae_jax.config.get_config`.
      workdir: where config.json, metrics.jsonl, images/ and checkpoints/ live.
      start_fresh: move a previous run in `workdir` aside (to `previous-<time>/`) instead of
        resuming it.

    Returns:
      The records of metrics.jsonl after the run: one per finished epoch.

    Raises:
      VaeJaxError (or a subclass): a problem the user can fix, found before anything was changed
        in the workdir (or, for a diverging run, before the bad state was saved).
      Preempted: SIGTERM or SIGINT arrived; a checkpoint of the step reached was saved.
    """
    validate_config(config)
    workdir = outputs.prepare_workdir(workdir)
    dataset, train_records, eval_records = _load_splits(config)
    steps_per_epoch = len(train_records) // config.batch_size
    schedule_steps = config.num_epochs * steps_per_epoch
    total_steps = min(schedule_steps, config.max_steps) if config.max_steps else schedule_steps
    mesh = parallel.data_mesh()
    if config.batch_size % mesh.size:
        raise ConfigError(
            f"batch_size={config.batch_size} must be divisible by the {mesh.size} devices, which "
            f"split every batch; allowed: multiples of {mesh.size}."
        )
    is_primary = jax.process_index() == 0  # one process writes metrics, pictures, config.json
    if (
        config.dtype == "bfloat16"
        and jax.default_backend() == "cpu"
        and models.cpu_has_bf16_units() is False
    ):
        logging.warning(
            "dtype='bfloat16' on a CPU without bf16 units (no avx512_bf16, amx_bf16 or bf16 in "
            "/proc/cpuinfo): XLA computes the bf16 products in float32 with conversions, so "
            "this run is slower than with dtype='float32' (the MLP's epoch took 1.4-1.5x as "
            "long on such a CPU). It trains correctly; use float32 here for speed."
        )

    model = models.build_model(config, dataset.image_shape)
    objective = objectives.make_objective(config, model)
    optimizer = build_optimizer(config, schedule_steps)
    initial_state = create_train_state(
        model,
        optimizer,
        dataset.image_shape,
        config.latents,
        config.seed,
        sharding=parallel.replicated(mesh),
        critic=objective.critic,
    )
    with contextlib.ExitStack() as cleanup:  # unlocks and closes checkpoints on every exit
        if is_primary:
            cleanup.enter_context(outputs.WorkdirLock(workdir))
            if start_fresh:
                moved_to = outputs.move_run_aside(workdir)
                if moved_to:
                    logging.info("Moved the previous run aside to %s.", moved_to)
        checkpoints = cleanup.enter_context(
            checkpoint.CheckpointStore(os.path.join(workdir, "checkpoints"), config.max_to_keep)
        )
        state, restored_step, extra = checkpoints.restore_latest(initial_state, config)
        # Every check has passed: from here on the workdir is written.
        try:
            metrics_log = _start_outputs(config, workdir, restored_step, is_primary)
        except OSError as error:
            raise _write_failure(error, workdir, checkpoints) from error
        if restored_step >= total_steps:
            logging.info(
                "Already trained to step %d of %d; raise num_epochs to go on.",
                restored_step,
                total_steps,
            )
            return metrics_log.read()

        train_step = make_train_step(
            objective,
            optimizer,
            config.dynamic_binarization,
            dataset.render,
            skip_nonfinite=config.nan_policy == "skip",
        )
        pipeline = choose_pipeline(config, train_records)
        logging.info(
            "Data %s: %d training examples, %s pipeline, %s loop.",
            dataset.name,
            len(train_records),
            pipeline,
            choose_step_loop(config),
        )
        runner = EpochRunner(
            pipeline,
            train_step,
            train_records,
            config.batch_size,
            steps_per_epoch,
            stream_key(state.key, SHUFFLE_STREAM),
            config.stream_chunk_steps,
            mesh,
            choose_step_loop(config),
        )
        # Evaluation batches are split over the devices too: round their size up to a multiple.
        eval_batch_size = (
            -(-min(config.eval_batch_size, len(eval_records)) // mesh.size) * mesh.size
        )
        eval_on_device = parallel.put_replicated(
            pad_to_multiple(eval_records, eval_batch_size), mesh
        )
        evaluate = jax.jit(
            make_evaluate(
                model,
                eval_batch_size,
                len(eval_records),
                dataset.render,
                binarize=config.dynamic_binarization,
                batch_sharding=parallel.batch_sharding(mesh),
                variational=objectives.is_variational(config.objective),
            )
        )
        eval_key = stream_key(state.key, EVAL_STREAM)
        pictures = _Pictures(config, model, dataset, eval_records, state.key)

        split = config.eval_split
        step = last_checkpoint = restored_step
        # The unfinished epoch a mid-epoch checkpoint left: its steps' metrics and training time.
        epoch_metrics = {
            k: [np.asarray(v, np.float32)] for k, v in extra.get("epoch_metrics", {}).items()
        }
        epoch_seconds = float(extra.get("epoch_train_seconds", 0.0))
        calls_per_epoch = config.steps_per_call or steps_per_epoch
        progress = tqdm.tqdm(
            total=total_steps,
            initial=step,
            unit="step",
            dynamic_ncols=True,
            disable=not (config.progress_bar and is_primary),
            desc="training",
        )
        with _StopSignals() as stop, progress:
            while step < total_steps:
                epoch = step // steps_per_epoch + 1
                epoch_end = min(epoch * steps_per_epoch, total_steps)
                num_steps = min(epoch_end - step, calls_per_epoch)
                runner.prepare(state, step, num_steps)  # compilation stays out of the timing

                started = time.perf_counter()
                state, call_metrics = runner.run(state, step, num_steps, lambda: stop.requested)
                epoch_seconds += time.perf_counter() - started
                done = len(call_metrics["loss"])

                if config.nan_policy == "stop":
                    _check_finite(call_metrics, step, epoch, last_checkpoint, config)
                for name, values in call_metrics.items():
                    epoch_metrics.setdefault(name, []).append(np.asarray(values, np.float32))
                step += done
                progress.update(done)

                if step < epoch_end:  # stopped inside the epoch: keep its metrics with the state
                    if stop.requested:
                        extra = {
                            "epoch_metrics": _as_json(epoch_metrics),
                            "epoch_train_seconds": epoch_seconds,
                        }
                        _save(checkpoints, step, state, config, extra, workdir, last_checkpoint)
                        raise Preempted(stop.signum, step)
                    continue

                eval_metrics = jax.device_get(evaluate(state.params, eval_on_device, eval_key))
                if not all(math.isfinite(float(v)) for v in eval_metrics.values()):
                    raise DivergenceError(
                        f"the {split} ELBO became non-finite after step {step} (epoch {epoch}): "
                        f"{eval_metrics}; the last good checkpoint (step {last_checkpoint}) is kept. "
                        f"Lower learning_rate (now {config.learning_rate})."
                    )
                record = _epoch_record(
                    epoch,
                    step,
                    step - (epoch - 1) * steps_per_epoch,
                    epoch_metrics,
                    eval_metrics,
                    split,
                    epoch_seconds,
                    config,
                )
                try:
                    if is_primary:
                        metrics_log.append(record)
                    if epoch % config.images_every_epochs == 0 or step == total_steps:
                        pictures.save(
                            os.path.join(workdir, "images"), epoch, state.params, is_primary
                        )
                except OSError as error:
                    raise _write_failure(error, workdir, checkpoints) from error
                epoch_metrics, epoch_seconds = {}, 0.0

                if (
                    epoch % config.checkpoint_every_epochs == 0
                    or step == total_steps
                    or stop.requested
                ):
                    _save(checkpoints, step, state, config, None, workdir, last_checkpoint)
                    last_checkpoint = step
                headline = f"{split}_elbo" if f"{split}_elbo" in record else f"{split}_recon"
                progress.set_postfix({headline: f"{record[headline]:.2f}"})
                logging.info(
                    "epoch %d/%d step %d: %s nats; %.2f s, %.0f examples/s",
                    epoch,
                    math.ceil(total_steps / steps_per_epoch),
                    step,
                    _summary(record, split),
                    record["train_seconds"],
                    record["examples_per_second"],
                )
                if stop.requested and step < total_steps:
                    raise Preempted(stop.signum, step)
        try:
            checkpoints.wait()  # the last save is complete, or its failure is reported here
        except Exception as error:
            raise _write_failure(error, workdir, checkpoints) from error
        return metrics_log.read()


def _save(checkpoints, step, state, config, extra, workdir, last_checkpoint) -> None:
    """Starts a checkpoint save; an earlier save's failure (e.g. a full disk) surfaces here."""
    try:
        checkpoints.save(step, state, config, extra)
        if extra is not None:  # a preemption: the process ends right after, so wait for it
            checkpoints.wait()
    except Exception as error:
        raise _write_failure(error, workdir, checkpoints) from error
