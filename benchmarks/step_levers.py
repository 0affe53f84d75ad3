"""The choices inside the compiled epoch program, each timed against the others in one run:

    python -m benchmarks.step_levers [--output benchmarks/results/step_levers.json]

  mlp    the default MLP's epoch (784-500-20, batch 128, 390 Adam steps, f32) as
         `step.make_train_epoch` compiles it: unmasked; masked for short calls by a branch per
         step ('cond'), by keeping the old state ('select') or by a branch per 32 steps and
         selects inside ('chunks'), as `engine.EpochRunner` calls it (`num_valid` traced, here
         a full epoch); and with `lax.scan` unrolled by 2, 5 and 10.
         On a GPU a branch reads its predicate back to the host each step and a scan's loop
         each iteration, which is latency the CPU does not have;
  conv   the dSprites network (experiments/beta_vae_dsprites.py on 64x64 images rendered on the
         device) with the decoder's transposed convolutions as four phase convolutions (the
         default on GPUs and TPUs) or as `lax.conv_transpose` ('native'), in bf16 and f32.
         On a CPU both run the CPU's own form, so only an accelerator tells them apart.

Every figure is the best of `--repeats` timings of a compiled program after a warm-up, the
variants of a table timed in turn, round by round (`run.time_interleaved`). Each row also
gives the mean loss of its last timed call (`final_loss`): rows that compute the same thing
agree.
"""

from __future__ import annotations

import argparse
import json
import os

import jax

from benchmarks import accelerator, run
from vae_jax import convolutions, data

MLP_VARIANTS = {  # name: (masking or None for unmasked, unroll)
    "unmasked": (None, 1),
    "cond": ("cond", 1),
    "select": ("select", 1),
    "chunks": ("chunks", 1),
    "unmasked_unroll2": (None, 2),
    "unmasked_unroll5": (None, 5),
    "unmasked_unroll10": (None, 10),
    "select_unroll5": ("select", 5),
}


def prepare(model, batch_size, dtype, images, steps, masking=None, unroll=1, form="phase"):
    """One epoch program of `steps` steps, compiled with the transposed convolutions' `form`,
    as a `run.Timed` (`run.prepare_vae_jax`: what `python -m vae_jax.main` runs)."""
    with convolutions.transposed_form(form):
        return run.prepare_vae_jax(model, batch_size, dtype, images, images, steps, masking, unroll)


def timed_rows(variants: dict, repeats: int, per_call_examples: int) -> list[dict]:
    timings = run.time_interleaved(variants, repeats)
    rows = []
    for name, timed in variants.items():
        seconds = min(timings[name])
        rows.append(
            {
                "variant": name,
                "seconds_per_call": seconds,
                "examples_per_second": per_call_examples / seconds,
                **timed.details(),
            }
        )
    return rows


def measure_mlp(steps: int, repeats: int, names) -> list[dict]:
    images = jax.device_put(data.load_binarized_mnist().split("train"))
    variants = {
        name: prepare("mlp", 128, "float32", images, steps, *MLP_VARIANTS[name]) for name in names
    }
    rows = timed_rows(variants, repeats, steps * 128)
    for row in rows:
        row["ms_per_50k_epoch"] = 1e3 * run.EPOCH_EXAMPLES / row["examples_per_second"]
    return rows


def measure_conv(batch_size: int, num_images: int, dtypes, repeats: int) -> list[dict]:
    images = accelerator.dsprites_images(num_images)
    steps = num_images // batch_size
    variants = {
        f"{form}_{dtype}": prepare("conv64", batch_size, dtype, images, steps, form=form)
        for dtype in dtypes
        for form in ("phase", "native")
    }
    return timed_rows(variants, repeats, steps * batch_size)


def main(argv=None) -> dict:
    on_accelerator = jax.devices()[0].platform != "cpu"
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="mlp,conv", help="mlp and/or conv")
    parser.add_argument("--mlp_steps", type=int, default=390)
    parser.add_argument(
        "--mlp_variants", default=",".join(MLP_VARIANTS), help="which of " + ",".join(MLP_VARIANTS)
    )
    parser.add_argument("--conv_batch_size", type=int, default=4096 if on_accelerator else 32)
    parser.add_argument("--conv_images", type=int, default=49_152 if on_accelerator else 128)
    parser.add_argument("--conv_dtypes", default="bfloat16,float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default="benchmarks/results/step_levers.json")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts or not parts <= {"mlp", "conv"}:
        parser.error(f"--parts={args.parts}: expected mlp and/or conv")
    if not 1 <= args.conv_batch_size <= args.conv_images:
        parser.error(f"--conv_batch_size={args.conv_batch_size} must be in [1, --conv_images]")
    variants = args.mlp_variants.split(",")
    if not set(variants) <= set(MLP_VARIANTS):
        parser.error(f"--mlp_variants={args.mlp_variants}: expected some of {list(MLP_VARIANTS)}")
    if not 1 <= args.mlp_steps <= 390:
        parser.error(f"--mlp_steps={args.mlp_steps} must be in [1, 390]")
    if not set(args.conv_dtypes.split(",")) <= {"bfloat16", "float32"}:
        parser.error(f"--conv_dtypes={args.conv_dtypes}: expected bfloat16 and/or float32")
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be at least 1")
    try:  # before any work: the report must have somewhere to go
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    except OSError as error:
        parser.error(f"--output={args.output}: its folder cannot be created ({error.strerror})")
    report = {"environment": accelerator.environment(), "xla_flags": os.environ.get("XLA_FLAGS")}
    if "mlp" in parts:
        report["mlp"] = measure_mlp(args.mlp_steps, args.repeats, variants)
    if "conv" in parts:
        report["conv"] = measure_conv(
            args.conv_batch_size, args.conv_images, args.conv_dtypes.split(","), args.repeats
        )
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    env = report["environment"]
    print(f"{env['device']} ({env['platform']}), XLA_FLAGS={report['xla_flags']}")
    for part in ("mlp", "conv"):
        for row in report.get(part, []):
            extra = f"  {row['ms_per_50k_epoch']:7.1f} ms/epoch" if part == "mlp" else ""
            print(
                f"  {part:4} {row['variant']:18} {row['seconds_per_call'] * 1e3:9.2f} ms/call "
                f"{row['examples_per_second']:>12,.0f} examples/s{extra}  loss {row['final_loss']:.4f}"
            )
    print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main()
