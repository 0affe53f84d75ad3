"""Where a training step's time goes: the compiled epoch traced with `jax.profiler`, its ops
ranked by time per step, each named with the model operation it came from.

    python -m benchmarks.profile                                # MLP, batch 128, f32
    python -m benchmarks.profile --dtype bfloat16 --batch_size 4096
    python -m benchmarks.profile --model conv --steps 20

It compiles the same program `python -m vae_jax.main` runs (`make_train_epoch` over
`--steps` steps), runs it once to warm up, times an untraced run (tracing has a cost), traces a
third, and sums the time of each HLO op: on CPU the host's events annotated with an `hlo_op`,
on an accelerator the kernels on the device's streams (`ranked_ops`). For each op (a fusion, a
library call such as `ynn_fusion`, a dot) it prints microseconds per step, its share of the
untraced step time, and the `op_name` of its HLO metadata, e.g.
`transpose(jvp(VAE.decode))/decoder/Dense_1/dot_general` for a weight gradient. The trace is
kept in `--trace_dir` for TensorBoard or Perfetto.

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

from benchmarks.run import jax_setup
from vae_jax import data
from vae_jax.step import make_train_epoch

# Events that wrap others (the executor, thread-pool waits, Python frames): not ops. Used only
# for a CPU trace whose op events carry no `hlo_op` annotation.
_WRAPPERS = re.compile(r"^(\$|ThunkExecutor|SlinkyThreadPool|PjRt|TfrtCpu|Execute|jit_)")


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the `op_name` of its metadata (where JAX traced it)."""
    names = {}
    for match in re.finditer(r"%([\w.\-]+) = .*?metadata=\{op_name=\"([^\"]+)\"", hlo_text):
        names[match.group(1)] = match.group(2).split("/while/body/closed_call/")[-1]
    return names


def _device_lanes(events: list[dict]) -> set:
    """(pid, tid) of the lanes where a device's own work is recorded, once: in each of the
    trace's device processes (`/device:GPU:0`, `/device:TPU:0`, ...) its `Stream ...` threads
    (a GPU's kernels), else its `XLA Ops` thread, else all of it. XProf adds lanes such as
    `XLA Modules` (one event per program) and, on a GPU, `XLA Ops` beside the streams: they span
    the same time again and would count it twice."""
    device_pids = {
        event["pid"]
        for event in events
        if event.get("ph") == "M"
        and event.get("name") == "process_name"
        and "/device:" in event.get("args", {}).get("name", "")
    }
    threads = {
        (event["pid"], event.get("tid")): event.get("args", {}).get("name", "")
        for event in events
        if event.get("ph") == "M"
        and event.get("name") == "thread_name"
        and event.get("pid") in device_pids
    }
    lanes = set()
    for pid in device_pids:
        streams = {lane for lane, name in threads.items() if lane[0] == pid and "Stream" in name}
        ops = {lane for lane, name in threads.items() if lane[0] == pid and name == "XLA Ops"}
        lanes |= streams or ops or {(pid, None)}  # None: every thread of that process
    return lanes


def _hlo_op(event: dict) -> str | None:
    return event.get("args", {}).get("hlo_op")


def ranked_ops(trace_file: str, steps: int) -> tuple[list[tuple[str, float, float]], str]:
    """([(op, microseconds per step, calls per step)] by time, where the events were).

    On an accelerator the ops are the device's events on its streams (kernels, named by the HLO
    op they run where the trace says so), since the host's events there only launch them. On
    CPU the host runs the ops: they are its events annotated with an `hlo_op` (the wrappers
    around them, such as `PjitFunction(...)` or `ThunkExecutor::Execute`, and Python's frames
    have none), or, in a trace without such annotations, its events less known wrappers.
    """
    with gzip.open(trace_file) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    lanes = _device_lanes(events)
    annotated = any(_hlo_op(event) for event in events if event.get("ph") == "X")
    total = collections.Counter()
    count = collections.Counter()
    for event in events:
        if event.get("ph") != "X":
            continue
        if lanes:
            pid = event.get("pid")
            if (pid, event.get("tid")) not in lanes and (pid, None) not in lanes:
                continue
            name = _hlo_op(event) or event["name"]
        elif annotated:
            name = _hlo_op(event)
            if not name:
                continue
        elif _WRAPPERS.match(event["name"]):
            continue
        else:
            name = event["name"]
        total[name] += event.get("dur", 0)
        count[name] += 1
    where = "device" if lanes else "host"
    return [(name, us / steps, count[name] / steps) for name, us in total.most_common()], where


def profile_epoch(program, state, images, steps: int, trace_dir: str) -> dict:
    """Times compiled `program(state, images)` (an epoch of `steps` steps) untraced after a
    warm-up, then traces one more call with `jax.profiler` and ranks its ops.

    Returns {"step_us", "ops": [(op, us per step, calls per step, where JAX traced it)], "where",
    "trace"}. `program` must donate nothing that is used again: each call gets the last state.
    """
    names = op_names(program.as_text())
    state, metrics = program(state, images)  # warm-up
    jax.block_until_ready(metrics)
    started = time.perf_counter()  # untraced: tracing itself costs time
    state, metrics = program(state, images)
    jax.block_until_ready(metrics)
    step_us = (time.perf_counter() - started) / steps * 1e6

    trace_dir = os.path.abspath(trace_dir)
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        state, metrics = program(state, images)
        jax.block_until_ready(metrics)
    trace_files = sorted(
        glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True),
        key=os.path.getmtime,
    )
    if not trace_files:
        raise SystemExit(f"error: jax.profiler wrote no perfetto_trace.json.gz under {trace_dir}")
    ranked, where = ranked_ops(trace_files[-1], steps)
    ops = [(name, us, calls, names.get(name, "")) for name, us, calls in ranked]
    return {"step_us": step_us, "ops": ops, "where": where, "trace": trace_files[-1]}


def print_profile(profile: dict, top: int) -> None:
    step_us, ops = profile["step_us"], profile["ops"]
    print(f"{'us/step':>9} {'share':>6} {'calls':>5}  op  <- where JAX traced it")
    for name, us, calls, traced_at in ops[:top]:
        print(f"{us:>9.1f} {us / step_us:>6.1%} {calls:>5.1f}  {name}  <- {traced_at}")
    listed = sum(op[1] for op in ops[:top])
    everything = sum(op[1] for op in ops)
    print(f"{listed:>9.1f} {listed / step_us:>6.1%}        the {top} ops above")
    print(f"{everything:>9.1f} {everything / step_us:>6.1%}        all {len(ops)} ops")
    print(f"trace: {profile['trace']}")


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
    _, state, step = jax_setup(args.model, args.batch_size, args.dtype, images)
    steps_per_epoch = images.shape[0] // args.batch_size
    if not 1 <= args.steps <= steps_per_epoch:
        parser.error(f"--steps={args.steps} must be in [1, {steps_per_epoch}] at this batch size")
    program = (
        jax.jit(
            make_train_epoch(step, args.batch_size, steps_per_epoch, args.steps),
            donate_argnums=0,
        )
        .lower(state, images_on_device)
        .compile()
    )
    profile = profile_epoch(program, state, images_on_device, args.steps, args.trace_dir)
    print(
        f"{args.model}, batch {args.batch_size}, {args.dtype}, {args.steps} steps on "
        f"{jax.devices()[0].device_kind} (jax {jax.__version__}): "
        f"{profile['step_us'] / 1e3:.3f} ms per step untraced. Share: of that step time "
        f"(ops on different threads{' or streams' if profile['where'] == 'device' else ''} "
        "may overlap)."
    )
    print_profile(profile, args.top)


if __name__ == "__main__":
    main()
