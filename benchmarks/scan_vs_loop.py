"""Training throughput: the epoch as one compiled `lax.scan` against Python loops of jitted steps.

    python -m benchmarks.scan_vs_loop [--repeats 5] [--batch_size 128]

All three variants run the same `make_train_step` (default model: MLP 784-500-20, Adam 1e-3,
f32) over the 50,000 training images of binarized MNIST, one epoch of 390 steps at batch 128:

  scan         make_train_epoch: shuffle, gather and 390 steps in one compiled call (what
               `python -m vae_jax.main` runs);
  loop_device  a Python loop calling the jitted step 390 times, batches gathered from the
               device-resident split (one dispatch per step);
  loop_host    the typical loop: shuffle in NumPy and feed each host batch to the jitted step
               (one dispatch and one host-to-device copy per step).

Compilation is excluded. Variants run interleaved, `--repeats` epochs each, and the best epoch
counts, so that a noisy neighbour hurts every variant alike. Prints a table and writes JSON to
benchmarks/results/scan_vs_loop.json. Ratios are the figures to compare across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

from benchmarks import run
from vae_jax import data


def prepare_loop_host(batch_size: int, images, num_steps: int) -> run.Timed:
    """The typical loop: shuffle in NumPy and feed each host batch to the jitted step."""
    _, state, step = run.jax_setup("mlp", batch_size, "float32", images)
    jit_step = jax.jit(step, donate_argnums=0)
    rng = np.random.default_rng(0)
    carried = {}
    carried["state"], metrics = jit_step(state, images[:batch_size])  # compiles
    jax.block_until_ready(metrics)

    def run_epoch() -> float:
        order, state = rng.permutation(images.shape[0]), carried["state"]
        started = time.perf_counter()
        for b in range(num_steps):
            state, metrics = jit_step(state, images[order[b * batch_size : (b + 1) * batch_size]])
        jax.block_until_ready(metrics)
        carried["state"] = state
        return time.perf_counter() - started

    return run.Timed(run_epoch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per variant")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--output", default="benchmarks/results/scan_vs_loop.json")
    args = parser.parse_args()

    images = data.load_binarized_mnist().split("train")
    images_on_device = jax.device_put(images)
    batch = args.batch_size
    steps = images.shape[0] // batch
    # The same variants as benchmarks.run's vae_jax and jax_loop rows, plus the host-fed loop.
    variants = {
        "scan": run.prepare_vae_jax("mlp", batch, "float32", images, images_on_device, steps),
        "loop_device": run.prepare_jax_loop("mlp", batch, images, images_on_device, steps),
        "loop_host": prepare_loop_host(batch, images, steps),
    }
    seconds = run.time_interleaved(variants, args.repeats)

    examples = steps * batch
    results = {
        name: {
            "best_epoch_seconds": min(times),
            "median_epoch_seconds": float(np.median(times)),
            "examples_per_second": examples / min(times),
            "steps_per_second": steps / min(times),
        }
        for name, times in seconds.items()
    }
    report = {
        "benchmark": "scan_vs_loop",
        "model": "mlp 784-500-20, bernoulli, adam 1e-3, f32",
        "batch_size": batch,
        "steps_per_epoch": steps,
        "examples_per_epoch": examples,
        "repeats": args.repeats,
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.devices()[0].platform,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
        "results": results,
        "speedup_scan_over_loop_device": results["loop_device"]["best_epoch_seconds"]
        / results["scan"]["best_epoch_seconds"],
        "speedup_scan_over_loop_host": results["loop_host"]["best_epoch_seconds"]
        / results["scan"]["best_epoch_seconds"],
    }
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)

    print(
        f"{report['device']} ({report['platform']}, {report['cpu_count']} cores), jax {jax.__version__}"
    )
    print(
        f"default MLP, batch {batch}, {examples} examples per epoch, best of {args.repeats} epochs"
    )
    print(f"{'variant':<12} {'s/epoch':>9} {'median':>9} {'examples/s':>11} {'steps/s':>9}")
    for name, r in results.items():
        print(
            f"{name:<12} {r['best_epoch_seconds']:>9.3f} {r['median_epoch_seconds']:>9.3f} "
            f"{r['examples_per_second']:>11.0f} {r['steps_per_second']:>9.1f}"
        )
    print(
        f"scan speed-up: {report['speedup_scan_over_loop_device']:.2f}x over loop_device, "
        f"{report['speedup_scan_over_loop_host']:.2f}x over loop_host"
    )


if __name__ == "__main__":
    main()
