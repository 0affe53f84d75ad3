"""The host-side arithmetic of an epoch's metrics: the finite check, the record a metrics.jsonl
line holds, the log line's summary, and the JSON form of an unfinished epoch's step metrics.

Everything here takes host arrays and returns plain values; nothing is compiled.
"""

from __future__ import annotations

import numpy as np

from vae_jax.errors import DivergenceError

__all__ = ["check_finite", "epoch_record", "summary", "headline", "as_json"]


def check_finite(step_metrics: dict, first_step: int, epoch: int, last_checkpoint, learning_rate):
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
        f"{values}; {kept}. Lower learning_rate (now {learning_rate}) or check the data."
    )


def epoch_record(epoch, step, steps, epoch_metrics, eval_metrics, split, seconds, config, size=1):
    """The metrics.jsonl line of a finished epoch, from its per-step training metrics.

    `size` models trained in `seconds`, so examples_per_second counts all of their examples."""
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
        "examples_per_second": steps * config.batch_size * size / seconds,
    }
    if config.nan_policy == "skip":
        record["skipped_steps"] = int(np.sum(~used))
    return record


def summary(record: dict, split: str) -> str:
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


def headline(record: dict, split: str) -> str:
    """The field a progress bar shows: the ELBO, or an autoencoder's reconstruction loss."""
    return f"{split}_elbo" if f"{split}_elbo" in record else f"{split}_recon"


def as_json(epoch_metrics: dict) -> dict:
    """Per-step float32 metrics as JSON lists; float32 -> Python float -> float32 is exact."""
    return {k: [float(x) for x in np.concatenate(v)] for k, v in epoch_metrics.items() if v}
