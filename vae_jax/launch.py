"""How a command joins several processes, and what it says when one of them is lost.

Joining: flags, JAX's environment variables, or a cluster manager's (SLURM's `srun`, Open MPI's
`mpirun`) say that several processes train together; `jax.distributed.initialize()` then reads
the address, count and index from that environment itself.

Losing one: when a peer or the coordinator dies, JAX's runtime ends the survivors with a C++
abort (exit 134) and a page of stack dump that names nothing a user can act on. So with several
processes each command is a small watcher in front of the process that trains (the worker). The
worker's own lines (log lines, the progress bar, `error:` lines) reach the terminal unchanged;
the runtime's writes go to `<workdir>/log-process-<i>.txt`. When the worker ends the way one run
ends (done 0, refused 2, preempted 130 or 143) the watcher exits with its status; otherwise it
prints one `error:` line: which process was lost (as far as the runtime's messages tell), the
last complete checkpoint, and how to resume. Nothing here imports JAX, so the watcher stays
small.
"""

from __future__ import annotations

import faulthandler
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback

from vae_jax import stopping

__all__ = [
    "CLEAN_EXITS",
    "cluster_environment",
    "explain_failure",
    "is_worker",
    "last_complete_checkpoint",
    "keep_crash_reports_in_log",
    "log_path",
    "lost_processes",
    "hold_stops",
    "pass_on_early_stops",
    "release_stops",
    "process_count_hint",
    "process_index_hint",
    "become_worker",
    "supervise",
]

TERMINAL_ENV = "VAE_JAX_TERMINAL_FDS"  # "<stdout fd>,<stderr fd>": the watcher's terminal
CLEAN_EXITS = (0, 2, 130, 143)
PARENT_POLL_SECONDS = 0.5
LOG_TAIL_BYTES = 200_000


def cluster_environment(environ=os.environ) -> str | None:
    """The cluster manager that started several processes of this command, or None.

    Only what `jax.distributed.initialize()` detects by itself, and only with more than one
    task: one task of a SLURM allocation trains alone, as on a workstation."""
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    if all(name in environ for name in slurm) and int(environ["SLURM_NTASKS"]) > 1:
        return "slurm"  # what `srun` sets for each task; the batch script itself has no step
    if int(environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "openmpi"
    return None


def process_index_hint(process_id: int | None, environ=os.environ) -> str:
    """This process's index before JAX is joined (it names the log file): the flag, or what
    JAX or the cluster manager set, or the operating system's process id."""
    if process_id is not None:
        return str(process_id)
    for name in ("JAX_PROCESS_ID", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"):
        if environ.get(name, "").isdigit():
            return environ[name]
    return f"pid{os.getpid()}"


def process_count_hint(num_processes: int | None, environ=os.environ) -> int | None:
    """How many processes train together, before JAX is joined (for the failure line)."""
    if num_processes is not None:
        return num_processes
    for name in ("JAX_NUM_PROCESSES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if environ.get(name, "").isdigit():
            return int(environ[name])
    return None


def log_path(workdir: str, index: str) -> str:
    return os.path.join(os.path.abspath(workdir), f"log-process-{index}.txt")


def is_worker(environ=os.environ) -> bool:
    return TERMINAL_ENV in environ


def last_complete_checkpoint(workdir: str) -> int | None:
    """The newest checkpoint Orbax finished: it renames a checkpoint to its plain step number
    only once every process's part is written."""
    try:
        names = os.listdir(os.path.join(workdir, "checkpoints"))
    except OSError:
        return None
    steps = [int(name) for name in names if name.isdigit()]
    return max(steps) if steps else None


def _named(numbers: list[str]) -> str:
    numbers = sorted(set(numbers), key=int)
    if len(numbers) == 1:
        return f"process {numbers[0]} was lost"
    return f"processes {', '.join(numbers)} were lost"


def lost_processes(log_text: str, index: str, num_processes: int | None) -> str | None:
    """Who was lost, as the runtime's messages in a worker's log tell: the coordinator's list
    of tasks that stopped sending heartbeats, a coordinator that stopped answering, or a peer
    whose collective connection closed (with two processes, that is the other one)."""
    unhealthy = re.findall(r"stopped sending heartbeats\):\s*([0-9][0-9,\s]*)", log_text)
    single = re.findall(r"Task (\d+) heartbeat timeout", log_text)
    if unhealthy or single:
        numbers = re.findall(r"\d+", unhealthy[-1]) if unhealthy else single[-1:]
        return f"{_named(numbers)} (it stopped answering)"
    if re.search(
        r"leader task was preempted/died|Failed to send RPC to coordination service", log_text
    ):
        return "process 0, the coordinator, was lost"
    if re.search(r"Connection (?:closed|reset) by peer", log_text):
        if num_processes == 2 and index in ("0", "1"):
            peer = 1 - int(index)  # process 0 also runs the coordination service
            who = "process 0, the coordinator," if peer == 0 else "process 1"
            return f"{who} was lost (its connection closed)"
        return "a peer process was lost (its connection closed)"
    return None


def explain_failure(
    log_text: str, status: int, index: str, num_processes: int | None, workdir: str
) -> str:
    """The one line for a worker that ended abnormally with `status` (negative: a signal)."""
    if re.search(r"DEADLINE_EXCEEDED[^\n]*\n+RPC: \S*RegisterTask", log_text):
        count = f"all {num_processes}" if num_processes else "all the"
        return (
            f"process {index} stopped: {count} processes did not join within "
            "--initialization_timeout_seconds; start every one with the same "
            "--coordinator_address and --num_processes and a distinct --process_id, and check "
            f"that process 0's machine and port are reachable (details: {log_path(workdir, index)})."
        )
    cause = lost_processes(log_text, index, num_processes)
    if cause is None:
        cause = (
            f"it was killed by {signal.Signals(-status).name}"
            if status < 0
            else f"it failed with exit status {status}"
        )
    step = last_complete_checkpoint(workdir)
    kept = (
        f"the last complete checkpoint is step {step}"
        if step is not None
        else "no checkpoint had been completed"
    )
    return (
        f"process {index} stopped: {cause}; {kept}; run the same commands again to resume "
        f"(details: {log_path(workdir, index)})."
    )


def _read_tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - LOG_TAIL_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def supervise(
    argv: list[str], workdir: str, process_id: int | None, num_processes: int | None
) -> int:
    """Runs this command again as the worker and watches it; returns the exit status."""
    index = process_index_hint(process_id)
    path = log_path(workdir, index)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        log = open(path, "ab")
    except OSError as error:
        print(f"error: cannot write {path}: {error.strerror}; fix --workdir.", file=sys.stderr)
        return 2
    terminal = (os.dup(1), os.dup(2))
    env = dict(os.environ, **{TERMINAL_ENV: f"{terminal[0]},{terminal[1]}"})
    # The worker starts with stops blocked, so one sent before it can hold them stays pending.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
    with log:
        # Its own session: a Ctrl-C reaches the worker once, passed on from here.
        worker = subprocess.Popen(
            [sys.executable, "-m", "vae_jax.main", *argv[1:]],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            pass_fds=terminal,
            start_new_session=True,
        )
    for fd in terminal:
        os.close(fd)
    hang_up = (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()  # none on Windows
    for signum in (*_STOPS, *hang_up):
        signal.signal(signum, lambda signum, frame: worker.send_signal(signum))
    for signum in stopping.early_stops():
        worker.send_signal(signum)
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    status = worker.wait()
    if status in CLEAN_EXITS:
        return status
    print(
        "error: " + explain_failure(_read_tail(path), status, index, num_processes, workdir),
        file=sys.stderr,
    )
    return 1


def become_worker() -> None:
    """In the worker: its own lines go to the watcher's terminal, an unexpected exception's
    traceback to the log (then exit at once: a survivor must not wait for a dead peer at the
    shutdown barrier), and it ends when the watcher does (a scheduler's SIGKILL reaches the
    watcher only)."""
    out, err = (int(fd) for fd in os.environ[TERMINAL_ENV].split(","))
    sys.stdout = os.fdopen(out, "w", buffering=1)
    sys.stderr = os.fdopen(err, "w", buffering=1)
    sys.excepthook = _log_and_exit
    watched = os.getppid()
    threading.Thread(target=_end_with_parent, args=(watched,), daemon=True).start()


_STOPS = (signal.SIGTERM, signal.SIGINT)


def _defer_stop(signum, frame) -> None:
    del frame
    stopping.note_early_stop(signum)


def _to_jax(signum, frame) -> None:
    del frame
    stopping.note_early_stop(signum)
    os.kill(os.getpid(), signal.SIGTERM)


def hold_stops() -> None:
    """From the command's first line, a SIGTERM or SIGINT is kept until the command knows whether
    it trains alone (`release_stops`) or with others: the watcher passes it on to the worker,
    the worker to JAX's preemption service once that watches SIGTERM (`pass_on_early_stops`).
    Ending one process at start-up would leave the others waiting for it to join."""
    for signum in _STOPS:
        signal.signal(signum, _defer_stop)
    if hasattr(signal, "pthread_sigmask"):  # not on Windows
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)  # the watcher started it blocked


def release_stops() -> None:
    """Training alone: the usual handlers again, and a stop that came meanwhile acts now."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in stopping.early_stops():
        os.kill(os.getpid(), signum)


def pass_on_early_stops() -> None:
    """After `jax.distributed.initialize`: a SIGTERM or SIGINT that came during start-up becomes
    the SIGTERM JAX's preemption service acts on, and Ctrl-C keeps doing so until the loop
    takes it over."""
    signal.signal(signal.SIGINT, _to_jax)
    if stopping.early_stops():
        os.kill(os.getpid(), signal.SIGTERM)


def keep_crash_reports_in_log() -> None:
    """Python's report of a fatal signal (a C++ abort) goes to the log, not the terminal: absl
    enabled it on the terminal's stream, and the watcher says what happened in one line."""
    faulthandler.enable(file=sys.__stderr__)


def _log_and_exit(kind, value, trace) -> None:
    with open(2, "w", closefd=False) as log:
        traceback.print_exception(kind, value, trace, file=log)
        log.flush()
    sys.stderr.flush()
    os._exit(130 if issubclass(kind, KeyboardInterrupt) else 1)


def _end_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)
