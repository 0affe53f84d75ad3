"""Where a training step's time goes: the compiled epoch traced with `jax.profiler`, its ops
ranked by time per step, each named with the model operation it came from.

    python -m benchmarks.profile                                # MLP, batch 128, f32
    python -m benchmarks.profile --dtype bfloat16 --batch_size 4096
    python -m benchmarks.profile --model conv --steps 20

It compiles the same program `python -m vae_jax.main` runs (`train.make_train_epoch` over
`--steps` steps), runs it once to warm up, traces a second run, and sums the trace's complete
events by name. It also times an untraced run, since tracing has a cost. For each XLA op (a fusion, a library call such as `ynn_fusion`, a dot) it prints
microseconds per step, its share of the untraced step time, and the `op_name` of its HLO metadata,
e.g. `transpose(jvp(VAE.decode))/decoder/Dense_1/dot_general` for a weight gradient. The trace
is kept in `--trace_dir` for TensorBoard or Perfetto.

On CPU the per-op events need XLA's `--xla_cpu_enable_xprof_traceme`, which this module adds to
XLA_FLAGS before JAX starts.
"""

from __future__ import annotations

import os

if "--xla_cpu_enable_xprof_traceme" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
    ).strip()

import argparse
import collections
import glob
import gzip
import json
import re
import time

import jax

from benchmarks.run import _jax_setup
from vae_jax import data, train

# Events that wrap others (the executor, thread-pool waits, Python frames): not ops.
_WRAPPERS = re.compile(r"^(\$|ThunkExecutor|SlinkyThreadPool|PjRt|TfrtCpu|Execute|jit_)")


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the `op_name` of its metadata (where JAX traced it)."""
    names = {}
    for match in re.finditer(r"%([\w.\-]+) = .*?metadata=\{op_name=\"([^\"]+)\"", hlo_text):
        names[match.group(1)] = match.group(2).split("/while/body/closed_call/")[-1]
    return names


def ranked_ops(trace_file: str, steps: int) -> list[tuple[str, float, float]]:
    """[(event name, microseconds per step, calls per step)] of the trace's ops, by time."""
    with gzip.open(trace_file) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    total = collections.Counter()
    count = collections.Counter()
    for event in events:
        if event.get("ph") != "X" or _WRAPPERS.match(event["name"]):
            continue
        total[event["name"]] += event.get("dur", 0)
        count[event["name"]] += 1
    return [(name, us / steps, count[name] / steps) for name, us in total.most_common()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mlp", choices=("mlp", "conv"))
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=100, help="steps in the traced program")
    parser.add_argument("--top", type=int, default=25, help="ops to print")
    parser.add_argument("--trace_dir", default="benchmarks/results/profile")
    args = parser.parse_args()

    images = data.load_binarized_mnist().split("train")
    images_on_device = jax.device_put(images)
    _, state, step = _jax_setup(args.model, args.batch_size, args.dtype, images)
    steps_per_epoch = images.shape[0] // args.batch_size
    if not 1 <= args.steps <= steps_per_epoch:
        parser.error(f"--steps={args.steps} must be in [1, {steps_per_epoch}] at this batch size")
    program = (
        jax.jit(
            train.make_train_epoch(step, args.batch_size, steps_per_epoch, args.steps),
            donate_argnums=0,
        )
        .lower(state, images_on_device)
        .compile()
    )
    names = op_names(program.as_text())
    state, metrics = program(state, images_on_device)  # warm-up
    jax.block_until_ready(metrics)
    started = time.perf_counter()  # untraced: tracing itself costs time
    state, metrics = program(state, images_on_device)
    jax.block_until_ready(metrics)
    step_us = (time.perf_counter() - started) / args.steps * 1e6

    trace_dir = os.path.abspath(args.trace_dir)
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        state, metrics = program(state, images_on_device)
        jax.block_until_ready(metrics)
    trace_files = sorted(
        glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True),
        key=os.path.getmtime,
    )
    if not trace_files:
        raise SystemExit(f"error: jax.profiler wrote no perfetto_trace.json.gz under {trace_dir}")
    ranked = ranked_ops(trace_files[-1], args.steps)

    print(
        f"{args.model}, batch {args.batch_size}, {args.dtype}, {args.steps} steps on "
        f"{jax.devices()[0].device_kind} (jax {jax.__version__}): {step_us / 1e3:.3f} ms per "
        "step untraced. Share: of that step time (ops on different threads may overlap)."
    )
    print(f"{'us/step':>9} {'share':>6} {'calls':>5}  op  <- where JAX traced it")
    for name, us, calls in ranked[: args.top]:
        print(f"{us:>9.1f} {us / step_us:>6.1%} {calls:>5.1f}  {name}  <- {names.get(name, '')}")
    listed = sum(us for _, us, _ in ranked[: args.top])
    everything = sum(us for _, us, _ in ranked)
    print(f"{listed:>9.1f} {listed / step_us:>6.1%}        the {args.top} ops above")
    print(f"{everything:>9.1f} {everything / step_us:>6.1%}        all {len(ranked)} ops")
    print(f"trace: {trace_files[-1]}")


if __name__ == "__main__":
    main()
