"""Optimizers and learning-rate schedules, built from the config.

Every learning rate may be a traced value: populations vmap over it, so one compiled program
serves any sweep of rates.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

__all__ = ["burda_schedule", "build_optimizer"]


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
