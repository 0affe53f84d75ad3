"""The accelerator checks of issue 6 in one short command, for a GPU or TPU lent for minutes:

    python -m benchmarks.accelerator --output $OUT/accelerator.json

It compiles nine programs, times each five times and traces one of them once more (82 s on an
H200: docs/performance.md, "Accelerators"). It records, with the device and the package versions:

  peak          the device's matmul rate on an n³ product (n = 8192 on an accelerator, 2048 on
                a CPU), bf16 and f32 operands with f32 sums: the limits the rest is measured
                against;
  mlp           the default MLP's epoch (784-500-20, batch 128, 390 Adam steps = 49,920
                binarized-MNIST examples, scaled to 50,000) as `python -m vae_jax.main` runs it,
                in f32 and bf16, beside the typical per-step jitted loop. The target is under
                25 ms per epoch: a step must then cost no host dispatch at all;
  conv64        the dSprites network (experiments/beta_vae_dsprites.py: 64x64 images, four 4x4
                stride-2 convolutions of 32, 32, 64, 64 channels, a 256-wide dense layer, 10
                latents) at large batches, in bf16 and f32, on dSprites images rendered on the
                device: examples per second and its matrix-product FLOP/s as a fraction of the
                bf16 and f32 peaks (FLOPs counted from the layer shapes, as `benchmarks.run`);
  profile       the timed bf16 conv64 program at the largest batch, traced with `jax.profiler`:
                its ops ranked by time (on an accelerator the device's kernels, by the HLO op
                each runs).

Every figure is the best of `--repeats` timings of a compiled program, after a warm-up; the
variants compared with each other (the MLP's three, each batch's dtypes) are timed in turn,
round by round (`run.time_interleaved`), so that a slow spell touches all of them alike.

The project's packages are on the lent H200 image except ml_collections, which travels as a
wheel (see docs/performance.md, "Accelerators", for the whole device command).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import profile, run
from vae_jax import data
from vae_jax.data import dsprites

MLP_BATCH = 128
MLP_TARGET_SECONDS = 0.025  # issue 6: an epoch of 50,000 examples at batch 128 on an H100/H200
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "ml_collections", "numpy")


def environment() -> dict:
    """The device, its count and the versions of what the figures depend on."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    device = jax.devices()[0]
    return {
        "device": device.device_kind,
        "platform": device.platform,
        "device_count": jax.device_count(),
        "versions": versions,
    }


def dsprites_images(count: int, seed: int = 0) -> jax.Array:
    """`count` dSprites images (64, 64, 1) uint8, of factors drawn uniformly, rendered on the
    device: the conv64 model's training data, without the 737,280-image set."""
    rng = np.random.default_rng(seed)
    factors = np.stack([rng.integers(0, size, count) for size in dsprites.FACTOR_SIZES], axis=1)
    return jax.jit(dsprites.render)(jnp.asarray(factors))


def measure_mlp(images, images_on_device, steps: int, repeats: int) -> dict:
    """Seconds per 50,000-example epoch of the default MLP at batch 128: vae_jax in f32 and bf16,
    and the per-step jitted loop."""
    variants = {
        "vae_jax": run.prepare_vae_jax(
            "mlp", MLP_BATCH, "float32", images, images_on_device, steps
        ),
        "vae_jax_bf16": run.prepare_vae_jax(
            "mlp", MLP_BATCH, "bfloat16", images, images_on_device, steps
        ),
        "jax_loop": run.prepare_jax_loop("mlp", MLP_BATCH, images, images_on_device, steps),
    }
    scale = run.EPOCH_EXAMPLES / (steps * MLP_BATCH)
    result = {"batch_size": MLP_BATCH, "steps_timed": steps}
    timings = run.time_interleaved(variants, repeats)
    for name, timed in variants.items():
        seconds = min(timings[name])
        result[name] = {
            "seconds_per_epoch": seconds * scale,
            "ms_per_step": seconds / steps * 1e3,
            "compile_seconds": timed.compile_seconds,
        }
    result["target_seconds_per_epoch"] = MLP_TARGET_SECONDS
    result["meets_target"] = result["vae_jax"]["seconds_per_epoch"] < MLP_TARGET_SECONDS
    return result


def measure_conv64(
    images, batch_sizes, dtypes, repeats: int, peaks: dict
) -> tuple[list[dict], run.Timed | None]:
    """examples/s of the conv64 model per batch size and dtype, with its matrix-product FLOP/s
    as a fraction of each peak. Each timing is one pass over `images` (the steps that fit).
    Also returns the bf16 variant at the largest batch (None without bf16), for the profile."""
    _, train_flops = run.matmul_flops_per_example(
        run.model_config("conv64", MLP_BATCH), images.shape[1:]
    )
    results, largest_bf16 = [], None
    for batch_size in sorted(batch_sizes):
        steps = images.shape[0] // batch_size
        variants = {
            dtype: run.prepare_vae_jax("conv64", batch_size, dtype, images, images, steps)
            for dtype in dtypes
        }
        timings = run.time_interleaved(variants, repeats)
        for dtype, timed in variants.items():
            seconds = min(timings[dtype])
            per_second = steps * batch_size / seconds
            flops_per_second = per_second * train_flops
            results.append(
                {
                    "batch_size": batch_size,
                    "dtype": dtype,
                    "steps_timed": steps,
                    "examples_per_second": per_second,
                    "ms_per_step": seconds / steps * 1e3,
                    "compile_seconds": timed.compile_seconds,
                    "train_flops_per_example": train_flops,
                    "matmul_flops_per_second": flops_per_second,
                    "fraction_of_bf16_peak": flops_per_second / peaks["bf16"],
                    "fraction_of_f32_peak": flops_per_second / peaks["f32"],
                }
            )
            if dtype == "bfloat16":
                largest_bf16 = timed
    return results, largest_bf16


def profile_conv64(timed: run.Timed, images, row: dict, trace_dir: str, top: int) -> dict:
    """The timed bf16 conv64 program (`row` is its result) traced once more: its `top` ops by
    time per step. Tracing the program that was timed costs no second compilation."""
    traced = profile.profile_epoch(
        timed.program, timed.latest_state(), images, row["steps_timed"], trace_dir
    )
    return {
        "batch_size": row["batch_size"],
        "dtype": row["dtype"],
        "steps": row["steps_timed"],
        "ms_per_step_untraced": traced["step_us"] / 1e3,
        "events_from": traced["where"],
        "trace": traced["trace"],
        "ops": [
            {"op": name, "us_per_step": us, "calls_per_step": calls, "traced_at": traced_at}
            for name, us, calls, traced_at in traced["ops"][:top]
        ],
        "us_per_step_all_ops": sum(op[1] for op in traced["ops"]),
    }


def _print_report(report: dict) -> None:
    env = report["environment"]
    print(f"\n{env['device']} x{env['device_count']} ({env['platform']}), {env['versions']}")
    n = report["peak"]["n"]
    for dtype in ("bf16", "f32"):
        print(f"  matmul {n}^3 {dtype}: {report['peak'][dtype] / 1e12:.2f} TFLOP/s")
    mlp = report["mlp"]
    print(f"MLP, batch {mlp['batch_size']}, seconds per 50,000-example epoch:")
    for name in ("vae_jax", "vae_jax_bf16", "jax_loop"):
        row = mlp[name]
        print(
            f"  {name:<13} {row['seconds_per_epoch'] * 1e3:8.1f} ms ({row['ms_per_step']:.3f} ms "
            f"per step; compiled in {row['compile_seconds']:.1f} s)"
        )
    verdict = "met" if mlp["meets_target"] else "NOT met"
    print(f"  target: under {mlp['target_seconds_per_epoch'] * 1e3:.0f} ms: {verdict}")
    print("conv64 (dSprites network, 64x64):")
    for row in report["conv64"]:
        print(
            f"  batch {row['batch_size']:>5} {row['dtype']:<8} {row['examples_per_second']:>11,.0f}"
            f" examples/s  {row['matmul_flops_per_second'] / 1e12:7.2f} TFLOP/s = "
            f"{row['fraction_of_bf16_peak']:.1%} of bf16 peak, "
            f"{row['fraction_of_f32_peak']:.1%} of f32"
        )
    traced = report.get("profile")
    if traced:
        print(
            f"profile: conv64 bf16 batch {traced['batch_size']}, "
            f"{traced['ms_per_step_untraced']:.3f} ms per step untraced; "
            f"top ops ({traced['events_from']} events), us per step:"
        )
        for op in traced["ops"]:
            print(f"  {op['us_per_step']:>9.1f}  {op['op']}  <- {op['traced_at']}")


def main(argv=None) -> dict:
    on_accelerator = jax.devices()[0].platform != "cpu"
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peak_size", type=int, default=8192 if on_accelerator else 2048)
    parser.add_argument(
        "--mlp_steps", type=int, default=390, help="steps per MLP timing (390 = one epoch)"
    )
    parser.add_argument(
        "--conv_batch_sizes", default="1024,4096" if on_accelerator else "64", help="conv64"
    )
    parser.add_argument("--conv_dtypes", default="bfloat16,float32", help="conv64")
    parser.add_argument(
        "--conv_images",
        type=int,
        default=49_152 if on_accelerator else 1_024,
        help="dSprites images rendered for the conv64 timings (each timing is one pass)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="trace the bf16 conv64 program at the largest batch",
    )
    parser.add_argument("--top", type=int, default=15, help="ops of the profile to keep")
    parser.add_argument("--trace_dir", default="benchmarks/results/accelerator_trace")
    parser.add_argument("--output", default="benchmarks/results/accelerator.json")
    args = parser.parse_args(argv)
    for flag in ("peak_size", "repeats", "top"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag}={getattr(args, flag)} must be at least 1")
    try:
        conv_batch_sizes = [int(b) for b in args.conv_batch_sizes.split(",")]
    except ValueError:
        parser.error(
            f"--conv_batch_sizes={args.conv_batch_sizes}: expected integers, e.g. 1024,4096"
        )
    if min(conv_batch_sizes) < 1 or max(conv_batch_sizes) > args.conv_images:
        parser.error(
            f"--conv_batch_sizes={args.conv_batch_sizes}: each must be in [1, --conv_images="
            f"{args.conv_images}]"
        )
    conv_dtypes = args.conv_dtypes.split(",")
    if not conv_dtypes or not set(conv_dtypes) <= {"bfloat16", "float32"}:
        parser.error(f"--conv_dtypes={args.conv_dtypes}: expected bfloat16 and/or float32")
    if not 1 <= args.mlp_steps <= 390:
        parser.error(f"--mlp_steps={args.mlp_steps} must be in [1, 390] (one epoch at batch 128)")
    try:  # before any work: the report must have somewhere to go
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    except OSError as error:
        parser.error(f"--output={args.output}: its folder cannot be created ({error.strerror})")

    started = time.perf_counter()
    report = {"environment": environment()}
    peak_flops = 2 * args.peak_size**3
    report["peak"] = {
        "n": args.peak_size,
        **{
            name: run.matmul_rate(
                args.peak_size,
                args.peak_size,
                args.peak_size,
                dtype,
                flops_per_timing=max(2e9, 50 * peak_flops) if on_accelerator else 2e9,
            )
            for name, dtype in (("bf16", jnp.bfloat16), ("f32", jnp.float32))
        },
    }
    mnist = data.load_binarized_mnist().split("train")
    report["mlp"] = measure_mlp(mnist, jax.device_put(mnist), args.mlp_steps, args.repeats)
    images64 = dsprites_images(args.conv_images)
    report["conv64"], largest_bf16 = measure_conv64(
        images64, conv_batch_sizes, conv_dtypes, args.repeats, report["peak"]
    )
    if args.profile and largest_bf16 is not None:
        row = [r for r in report["conv64"] if r["dtype"] == "bfloat16"][-1]
        report["profile"] = profile_conv64(largest_bf16, images64, row, args.trace_dir, args.top)
    report["seconds"] = time.perf_counter() - started
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    _print_report(report)
    print(f"wrote {args.output} ({report['seconds']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
