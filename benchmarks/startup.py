"""Seconds from launching `python -m vae_jax.main` to its first training call.

    python -m benchmarks.startup [--config.<field>=<value> ...]

Four launches of the same small run, each timed from `Popen` to the log line "First training
call done" (and to the command's exit):

  no cache      VAE_JAX_CACHE_DIR=off: every program compiled
  cold cache    a fresh cache directory: compiled, and stored
  warm cache    a new workdir, the programs loaded from the cache
  rerun         the same command again with one more epoch: a resume, from the cache

An untimed launch first brings the libraries into the file cache. The compilation cache lives in
a temporary directory; the user's own is not touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

RUN = [
    "--config.progress_bar=False",
    "--config.max_train_examples=6400",
    "--config.max_eval_examples=1000",
]


def launch(workdir: str, cache: str, epochs: int, extra: list[str]) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["VAE_JAX_CACHE_DIR"] = cache
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "vae_jax.main", f"--workdir={workdir}", *RUN, *extra]
        + [f"--config.num_epochs={epochs}"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    first = float("nan")
    for line in process.stderr:
        if first != first and "First training call done" in line:
            first = time.perf_counter() - started
    if process.wait() != 0:
        raise SystemExit(f"the run in {workdir} failed")
    return first, time.perf_counter() - started


def main() -> None:
    extra = sys.argv[1:]
    with tempfile.TemporaryDirectory() as root:
        cache = os.path.join(root, "cache")
        cases = [
            ("no cache", os.path.join(root, "a"), "off", 1),
            ("cold cache", os.path.join(root, "b"), cache, 1),
            ("warm cache", os.path.join(root, "c"), cache, 1),
            ("rerun (resume)", os.path.join(root, "c"), cache, 2),
        ]
        # Untimed: the first launch after a while also reads the libraries from disk.
        launch(os.path.join(root, "warm-up"), "off", 1, extra)
        print(f"{'':16} {'first call, s':>14} {'command, s':>11}")
        for name, workdir, where, epochs in cases:
            first, total = launch(workdir, where, epochs, extra)
            print(f"{name:16} {first:14.1f} {total:11.1f}", flush=True)


if __name__ == "__main__":
    main()
