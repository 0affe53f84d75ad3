"""Several `python -m vae_jax.main` processes on localhost (gloo), for tests and the fault table.

    python tests/several_processes.py

prints, for process 1 and then process 0 (the coordinator) killed with SIGKILL at three moments
(during compilation, mid-epoch, during a checkpoint save), each survivor's exit status, seconds
from the kill to its exit, and its terminal's last line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time

from conftest import forced_devices_env

from vae_jax import launch

SMALL = [
    "--config.max_train_examples=2048",
    "--config.max_eval_examples=500",
    "--config.hidden_sizes=(64,)",
    "--config.latents=8",
    "--config.num_image_examples=8",
    "--config.progress_bar=False",
    "--config.steps_per_call=2",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_slurm_job_id() -> int:
    """A SLURM job id whose coordinator port is free here: JAX takes the port 61440 + (job id
    mod 4096), above Linux's ephemeral range, so a free port cannot simply be asked for."""
    for job_id in random.sample(range(2**12), 64):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 61440 + job_id))
            except OSError:
                continue
            return job_id
    raise RuntimeError("no free port in 61440-65535")


@dataclasses.dataclass
class Process:
    popen: subprocess.Popen
    terminal: str  # the file its stdout and stderr go to

    def text(self) -> str:
        with open(self.terminal) as f:
            return f.read()

    def last_line(self) -> str:
        lines = [line for line in self.text().splitlines() if line.strip()]
        return lines[-1] if lines else ""


def start(workdir: str, args=(), *, n: int = 2, per_process=None, envs=None) -> list[Process]:
    """Starts n processes of one run; `per_process(i)` gives process i's own flags (default: the
    coordinator address, the count and the index), `envs[i]` its environment."""
    port = free_port()
    if per_process is None:

        def per_process(i):
            return [
                f"--coordinator_address=127.0.0.1:{port}",
                f"--num_processes={n}",
                f"--process_id={i}",
            ]

    processes = []
    for i in range(n):
        terminal = f"{workdir}.terminal{i}.txt"
        with open(terminal, "w") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "vae_jax.main", f"--workdir={workdir}", *SMALL, *args]
                + per_process(i),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=envs[i] if envs else forced_devices_env(),
            )
        processes.append(Process(popen, terminal))
    return processes


def wait_until(condition, processes, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            kill_all(processes)
            raise TimeoutError(f"{what} did not happen in {timeout} s")
        if any(p.popen.poll() is not None for p in processes):
            raise RuntimeError(f"a process ended before {what}: " + processes[0].text()[-3000:])
        time.sleep(0.05)


def finish(processes, timeout: float = 300) -> list[int]:
    try:
        return [p.popen.wait(timeout=timeout) for p in processes]
    finally:
        kill_all(processes)


def kill_all(processes) -> None:
    for p in processes:
        if p.popen.poll() is None:
            p.popen.kill()


def records(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


TIMINGS = ("train_seconds", "examples_per_second", "eval_seconds")


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


def checkpoint_in_progress(workdir: str) -> bool:
    directory = os.path.join(workdir, "checkpoints")
    return os.path.isdir(directory) and any(not n.isdigit() for n in os.listdir(directory))


MOMENTS = {
    # After joining, before the first training call ends: compiling.
    "compilation": lambda workdir, p: (
        "Compiled the" not in p.text() and "Data binarized_mnist" in p.text()
    ),
    # Past the first complete checkpoint, so that the line has one to name.
    "mid-epoch": lambda workdir, p: (
        launch.last_complete_checkpoint(workdir) is not None and not checkpoint_in_progress(workdir)
    ),
    "checkpoint save": lambda workdir, p: (
        launch.last_complete_checkpoint(workdir) is not None and checkpoint_in_progress(workdir)
    ),
}


def kill_at(moment: str, victim: int, root: str) -> dict:
    """One row of the fault table: SIGKILL process `victim` at `moment`."""
    workdir = os.path.join(root, f"{moment.replace(' ', '_')}_{victim}")
    # Large enough that a checkpoint save is long enough to land in.
    args = [
        "--config.num_epochs=200",
        "--config.hidden_sizes=(1024,1024)",
        "--config.checkpoint_every_epochs=1",
    ]
    processes = start(workdir, args)
    ready = MOMENTS[moment]
    wait_until(lambda: ready(workdir, processes[victim]), processes, 300, moment)
    processes[victim].popen.send_signal(signal.SIGKILL)
    killed = time.time()
    survivor = processes[1 - victim]
    status = survivor.popen.wait(timeout=120)
    seconds = time.time() - killed
    kill_all(processes)
    return {
        "killed": victim,
        "moment": moment,
        "status": status,
        "seconds": round(seconds, 1),
        "line": survivor.last_line(),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        for victim in (1, 0):
            for moment in MOMENTS:
                print(json.dumps(kill_at(moment, victim, root)), flush=True)


if __name__ == "__main__":
    main()
