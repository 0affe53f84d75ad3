"""Fault injection: SIGKILL a run at random instants, rerun it, and compare with an unbroken run.

    python tests/fault_injection.py [--kills 20] [--seed 0]

Runs `python -m vae_jax.main` on a small config once without interruption (the reference), then
`--kills` times: starts the same command in a fresh workdir, waits until it starts writing the
workdir, kills it with SIGKILL at an instant drawn uniformly over the reference's working time
from there (so kills land during compilation, a training call, evaluation, PNG or metric writes,
or an asynchronous checkpoint write), runs the same command again to completion, and checks that
the final metrics.jsonl equals the reference in every field but the timings. Prints one line per
kill and exits non-zero if any differs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

CONFIG = [
    "--config.max_train_examples=4096",
    "--config.max_eval_examples=500",
    "--config.hidden_sizes=(64,)",
    "--config.latents=4",
    "--config.num_epochs=8",
    "--config.steps_per_call=8",
    "--config.num_image_examples=8",
    "--config.progress_bar=False",
]
TIMINGS = ("train_seconds", "examples_per_second")


def _command(workdir: str) -> list[str]:
    return [sys.executable, "-m", "vae_jax.main", "--workdir", workdir, *CONFIG]


def _metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


def _on_disk(workdir: str) -> str:
    """What the kill left: complete checkpoints, partial ones, metric lines."""
    checkpoints = os.path.join(workdir, "checkpoints")
    names = sorted(os.listdir(checkpoints), key=len) if os.path.isdir(checkpoints) else []
    complete = sorted((n for n in names if n.isdigit()), key=int)
    partial = [n for n in names if "tmp" in n]
    metrics = os.path.join(workdir, "metrics.jsonl")
    lines = 0
    if os.path.exists(metrics):
        with open(metrics) as f:
            lines = f.read().count("\n")
    return f"checkpoints {complete or '-'}, partial {len(partial)}, metric lines {lines}"


def _wait_for_start(process, workdir: str) -> float:
    """Waits until the run writes config.json (its checks passed, the workdir is being
    written); returns the seconds that took."""
    started = time.perf_counter()
    marker = os.path.join(workdir, "config.json")
    while not os.path.exists(marker) and process.poll() is None:
        time.sleep(0.01)
    return time.perf_counter() - started


def _start(workdir: str):
    return subprocess.Popen(_command(workdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(kills: int, seed: int) -> int:
    rng = random.Random(seed)
    scratch = tempfile.mkdtemp(prefix="vae_jax_faults_")
    try:
        reference_dir = os.path.join(scratch, "reference")
        process = _start(reference_dir)
        startup = _wait_for_start(process, reference_dir)
        started = time.perf_counter()
        if process.wait() != 0:
            raise SystemExit("the reference run failed")
        working = time.perf_counter() - started  # compile, train, evaluate, write, checkpoint
        reference = _metrics(reference_dir)
        print(
            f"reference: {len(reference)} epochs; {startup:.1f} s to start, then {working:.1f} s "
            f"compiling, training and writing; final test_elbo {reference[-1]['test_elbo']:.4f}"
        )
        failures = 0
        for trial in range(1, kills + 1):
            workdir = os.path.join(scratch, f"trial{trial}")
            instant = rng.uniform(0.0, 0.9 * working)
            process = _start(workdir)
            _wait_for_start(process, workdir)
            time.sleep(instant)
            finished_before = process.poll() is not None
            process.send_signal(signal.SIGKILL)
            process.wait()
            left = _on_disk(workdir)
            rerun = subprocess.run(_command(workdir), capture_output=True, text=True, check=False)
            same = rerun.returncode == 0 and _metrics(workdir) == reference
            failures += not same
            status = "ok" if same else f"DIFFERS (exit {rerun.returncode}) {rerun.stderr[-300:]}"
            note = " (had already finished)" if finished_before else ""
            print(
                f"kill {trial:2d} at start + {instant:5.2f} s{note}: left {left}; rerun {status}",
                flush=True,
            )
        print(
            f"{kills - failures} of {kills} killed runs finished with metrics identical to the "
            "uninterrupted run"
        )
        return 1 if failures else 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.exit(run(args.kills, args.seed))


if __name__ == "__main__":
    main()
