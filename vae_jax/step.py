"""Device-side training programs: the train state, one update, and the loops that run updates.

The path of a batch: the training split lives on the device as uint8; each epoch, one compiled
call shuffles it with a key derived from the epoch number, then scans `train_step` over the
batches, gathering each batch by index on the device (`make_train_epoch`). Streaming runs the
same step over batches the host gathered (`make_train_chunk`). Everything here is pure and
traced; the host loop (`loop.py`) only calls it.

Keys come from `rng`: the step's key is fold_in(TRAIN stream, step) and the epoch's order is
drawn from fold_in(SHUFFLE stream, epoch), so a resumed run continues with the same draws.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from vae_jax import models, objectives, rng
from vae_jax.errors import DataError

__all__ = [
    "TrainState",
    "create_train_state",
    "to_float",
    "records_to_float",
    "make_train_step",
    "make_train_epoch",
    "make_train_chunk",
    "make_host_loop_epoch",
    "make_host_loop_chunk",
    "masks_in_chunks",
    "MASK_CHUNK",
]


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


def to_float(images: jax.Array) -> jax.Array:
    """uint8 pixels 0..255 -> float32 in [0, 1] (0 and 255 map to exactly 0 and 1).

    Raises:
      DataError (at trace time): records of another dtype. Dividing floats that are already in
        [0, 1] by 255 would train silently on values <= 0.004; `data.from_arrays` and the data
        sources make uint8 records of every input.
    """
    if images.dtype != jnp.uint8:
        raise DataError(
            f"image records of dtype {images.dtype} reached the pixel conversion, which takes "
            "uint8 0..255; build the data set with vae_jax.data.from_arrays (it accepts uint8 or "
            "floats in [0, 1])."
        )
    return images.astype(jnp.float32) * (1.0 / 255.0)


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
        root_key = rng.root_key(seed)
        example_x = jnp.zeros((1, *image_shape), jnp.float32)
        example_z = jnp.zeros((1, latents), jnp.float32)
        params = model.init(rng.stream_key(root_key, rng.INIT_STREAM), example_x, example_z)
        critic_state = None
        if critic is not None:
            critic_params = critic.init(rng.stream_key(root_key, rng.CRITIC_STREAM))
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


def records_to_float(records: jax.Array, render: Callable | None) -> jax.Array:
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
        step_key = jax.random.fold_in(rng.stream_key(state.key, rng.TRAIN_STREAM), state.step)
        if critic is None:
            loss_key, binarize_key = jax.random.split(step_key)
        else:
            loss_key, binarize_key, critic_key = jax.random.split(step_key, 3)
        x = records_to_float(images, render)
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


# Steps per branch of 'chunks' masking: a GPU reads one predicate per chunk back to the host
# (about 25 us each on an H200), and a short call computes at most MASK_CHUNK - 1 extra steps.
MASK_CHUNK = 32


def _masked_scan(update, state, num_steps, num_valid, masking, unroll, chunk=MASK_CHUNK):
    """`lax.scan` of `update(state, offset)` over offsets 0..num_steps-1 where the steps from
    `num_valid` on leave the state as is and give zero metrics.

    'cond' branches per step and skips the work; 'select' does every step's work and keeps the
    old state; 'chunks' branches per `chunk` steps and selects inside a chunk. A GPU reads each
    branch's predicate back to the host (per step: 10 ms of a 35 ms epoch of the default MLP on
    an H200), while 'select' makes a 2-step call of an epoch-long program cost the epoch; so
    'auto' takes chunks on GPUs and branches per step on CPUs, where selecting the whole state
    is the dearer, and on TPUs, which branch on the device (docs/performance.md, "The masked
    step")."""

    def unless_past_valid(run, state, offsets):  # run(state, offsets) or the state kept
        metrics = jax.eval_shape(run, state, offsets)[1]
        skip = jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metrics)
        first = offsets if offsets.ndim == 0 else offsets[0]
        return jax.lax.cond(first < num_valid, run, lambda s, _: (s, skip), state, offsets)

    def by_cond(state, offset):
        return unless_past_valid(update, state, offset)

    def by_select(state, offset):
        new_state, metrics = update(state, offset)
        keep = functools.partial(jnp.where, offset < num_valid)
        zeros = jax.tree.map(jnp.zeros_like, metrics)
        return jax.tree.map(keep, new_state, state), jax.tree.map(keep, metrics, zeros)

    def per_step(body):
        return lambda state: jax.lax.scan(body, state, jnp.arange(num_steps), unroll=unroll)

    def by_chunks(state):
        size = min(chunk, num_steps)
        offsets = jnp.arange(-(-num_steps // size) * size).reshape(-1, size)

        def run(state, offsets):
            return jax.lax.scan(by_select, state, offsets, unroll=unroll)

        state, metrics = jax.lax.scan(functools.partial(unless_past_valid, run), state, offsets)
        return state, jax.tree.map(lambda m: m.reshape(-1, *m.shape[2:])[:num_steps], metrics)

    scans = {"cond": per_step(by_cond), "select": per_step(by_select), "chunks": by_chunks}
    if masking != "auto":
        return scans[masking](state)
    return jax.lax.platform_dependent(
        state, cpu=scans["cond"], tpu=scans["cond"], default=scans["chunks"]
    )


def masks_in_chunks(platform: str) -> bool:
    """Whether masking='auto' masks in chunks of MASK_CHUNK steps on `platform` (a GPU), or per
    step (a CPU, and a TPU, whose branches run on the device without a read-back)."""
    return platform not in ("cpu", "tpu")


def make_train_epoch(
    train_step: Callable,
    batch_size: int,
    steps_per_epoch: int,
    num_steps: int,
    batch_sharding=None,
    *,
    unroll: int = 1,
    masking: str = "auto",
    mask_chunk: int = MASK_CHUNK,
):
    """Runs `num_steps` updates of one epoch as a single `lax.scan`.

    Returns `train_epoch(state, images) -> (state, per-step metrics)`, where images is the whole
    (N, H, W, C) uint8 training split on the device. The epoch's order is a permutation drawn from
    fold_in(SHUFFLE stream, epoch); batch b of the epoch is its slice [b*B, (b+1)*B), and the
    remainder N mod B is dropped. The call starts at batch `state.step % steps_per_epoch`, so a
    run resumed mid-epoch sees the batches it would have seen; a call never crosses an epoch end.
    With `batch_sharding`, each gathered batch is split over the devices (data parallelism).
    Given `num_valid` (a traced count), only the first `num_valid` steps update the state and
    the rest return zero metrics, so one program serves every call up to `num_steps` long.
    `masking` says how (`_masked_scan`): 'cond', 'select', 'chunks' (of `mask_chunk` steps), or
    'auto' for the fastest on each platform. `unroll` is `lax.scan`'s: steps per iteration.
    """
    if masking not in ("auto", "cond", "select", "chunks"):
        raise ValueError(f"masking={masking!r}: expected 'auto', 'cond', 'select' or 'chunks'")

    def train_epoch(state: TrainState, images: jax.Array, num_valid=None):
        epoch = state.step // steps_per_epoch
        first_batch = state.step % steps_per_epoch
        order_key = jax.random.fold_in(rng.stream_key(state.key, rng.SHUFFLE_STREAM), epoch)
        order = jax.random.permutation(order_key, images.shape[0])

        def update(state, batch_offset):
            start = (first_batch + batch_offset) * batch_size
            indices = jax.lax.dynamic_slice_in_dim(order, start, batch_size)
            batch = images[indices]
            if batch_sharding is not None:
                batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
            return train_step(state, batch)

        if num_valid is None:
            return jax.lax.scan(update, state, jnp.arange(num_steps), unroll=unroll)
        return _masked_scan(update, state, num_steps, num_valid, masking, unroll, mask_chunk)

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
            rng.stream_key(state.key, rng.SHUFFLE_STREAM), state.step // steps_per_epoch
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

        def run(state, images, num_steps=num_steps):  # the compiled step serves any length
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

        def run(state, batches, num_steps=None):  # the first num_steps of a padded chunk
            metrics = []
            for index in range(batches.shape[0] if num_steps is None else num_steps):
                state, step_metrics = step_program(state, batches[index])
                metrics.append(step_metrics)
            return state, jax.tree.map(lambda *values: jnp.stack(values), *metrics)

        return run

    return compile_programs


def make_train_chunk(train_step: Callable, masking: str = "auto"):
    """Streaming: `train_chunk(state, batches, num_valid=None) -> (state, per-step metrics)`
    scans the step over (num_steps, B, ...) batches that the host gathered in the epoch's order.
    Given `num_valid` (traced), the steps from it on are masked as in `make_train_epoch`: the
    loader pads a shorter chunk, and one program serves every chunk."""

    def train_chunk(state: TrainState, batches: jax.Array, num_valid=None):
        if num_valid is None:
            return jax.lax.scan(train_step, state, batches)

        def update(state, offset):
            return train_step(state, batches[offset])

        return _masked_scan(update, state, batches.shape[0], num_valid, masking, 1)

    return train_chunk
