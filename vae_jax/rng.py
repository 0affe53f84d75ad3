"""The key streams every draw of a run comes from.

One root key, `jax.random.key(config.seed)`; each stream folds in its own constant, and within a
stream every draw folds in the step, epoch or example index. So a run is reproducible, a resumed
run draws exactly what the uninterrupted run would have drawn, and no draw depends on how many
devices or processes share the work.
"""

from __future__ import annotations

import jax

__all__ = [
    "INIT_STREAM",
    "TRAIN_STREAM",
    "SHUFFLE_STREAM",
    "EVAL_STREAM",
    "PICTURES_STREAM",
    "CRITIC_STREAM",
    "root_key",
    "stream_key",
]

# fold_in(root, STREAM), then fold_in(stream key, step / epoch / example index). The values are
# part of the on-disk contract: changing one changes every resumed run.
INIT_STREAM, TRAIN_STREAM, SHUFFLE_STREAM, EVAL_STREAM, PICTURES_STREAM, CRITIC_STREAM = range(6)


def root_key(seed: int) -> jax.Array:
    """The typed root key of a run with `seed`."""
    return jax.random.key(seed)


def stream_key(root: jax.Array, stream: int) -> jax.Array:
    """The key of one stream of `root` (one of the *_STREAM constants)."""
    return jax.random.fold_in(root, stream)
