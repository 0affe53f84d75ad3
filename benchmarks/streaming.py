"""Streaming against on-device data: time per training step, same model, same batches.

    python -m benchmarks.streaming [--repeats 5] [--batch_size 128] [--chunk_steps 64]

Runs `EpochRunner`, the code `python -m vae_jax.main` trains with, on the 50,000 training
images of binarized MNIST with the default model: once with the split on the device (the epoch
as one compiled scan) and once streamed (batches gathered on the host in the same order,
prefetched to the device by a background thread in chunks of `--chunk_steps` steps, each chunk
one compiled scan). Compilation excluded; variants interleaved; best epoch of `--repeats`.
Target: streamed step time <= 1.2x the on-device step time. Writes
benchmarks/results/streaming.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from vae_jax import data, models, objectives
from vae_jax.config import get_config
from vae_jax.engine import EpochRunner
from vae_jax.optim import build_optimizer
from vae_jax.rng import SHUFFLE_STREAM, stream_key
from vae_jax.step import create_train_state, make_train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--chunk_steps", type=int, default=64)
    parser.add_argument("--output", default="benchmarks/results/streaming.json")
    args = parser.parse_args()

    config = get_config()
    images = data.load_binarized_mnist().split("train")
    steps = images.shape[0] // args.batch_size
    model = models.build_model(config, images.shape[1:])
    optimizer = build_optimizer(config, steps)
    state = create_train_state(model, optimizer, images.shape[1:], config.latents, 0)
    step = make_train_step(objectives.make_elbo_loss(model), optimizer)
    shuffle_key = stream_key(state.key, SHUFFLE_STREAM)

    runners = {
        pipeline: EpochRunner(
            pipeline, step, images, args.batch_size, steps, shuffle_key, args.chunk_steps
        )
        for pipeline in ("device", "stream")
    }
    states = {name: jax.tree.map(lambda x: x.copy(), state) for name in runners}
    seconds = {name: [] for name in runners}
    for repeat in range(args.repeats + 1):  # the first epoch warms up caches and threads
        for name, runner in runners.items():
            first_step = repeat * steps
            runner.prepare(states[name], first_step, steps)
            started = time.perf_counter()
            states[name], _ = runner.run(states[name], first_step, steps)
            if repeat:
                seconds[name].append(time.perf_counter() - started)
    step_ms = {name: 1000 * min(times) / steps for name, times in seconds.items()}
    same = np.array_equal(
        np.asarray(jax.tree.leaves(states["device"].params)[0]),
        np.asarray(jax.tree.leaves(states["stream"].params)[0]),
    )
    report = {
        "benchmark": "streaming",
        "batch_size": args.batch_size,
        "chunk_steps": args.chunk_steps,
        "steps_per_epoch": steps,
        "repeats": args.repeats,
        "device": str(jax.devices()[0].device_kind),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "step_ms": step_ms,
        "median_epoch_seconds": {k: float(np.median(v)) for k, v in seconds.items()},
        "ratio_stream_over_device": step_ms["stream"] / step_ms["device"],
        "same_parameters_after_training": bool(same),
    }
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    print(
        f"{report['device']}, {report['cpu_count']} cores, jax {jax.__version__}; default MLP, "
        f"batch {args.batch_size}, chunks of {args.chunk_steps} steps, best of {args.repeats}"
    )
    for name, ms in step_ms.items():
        print(
            f"{name:<8} {ms:7.3f} ms/step  (median epoch {report['median_epoch_seconds'][name]:.3f} s)"
        )
    print(
        f"stream / device = {report['ratio_stream_over_device']:.3f} (target <= 1.2); "
        f"identical parameters after {args.repeats + 1} epochs: {same}"
    )


if __name__ == "__main__":
    main()
