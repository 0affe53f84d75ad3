"""The workdir and its files besides checkpoints: config.json, run.json, metrics.jsonl, the lock.

Files are written so that a crash never leaves a torn one: whole files by write-then-rename,
metric lines appended and flushed one at a time. A failed write becomes one `WorkdirError` that
names the operating system's reason and the checkpoint that is intact (`write_failure`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Sequence

try:
    import fcntl
except ImportError:  # Windows: `WorkdirLock` keeps a lock file of its own instead
    fcntl = None

import ml_collections

from vae_jax import config as config_lib
from vae_jax.atomic import atomic_write
from vae_jax.errors import ConfigError, WorkdirError

__all__ = [
    "CONFIG_FILE",
    "RUN_FILE",
    "prepare_workdir",
    "write_json_atomic",
    "read_json",
    "MetricsLog",
    "WorkdirLock",
    "move_run_aside",
    "write_failure",
    "write_run_info",
    "read_run_info",
    "import_recorded_plugins",
    "load_workdir_config",
]

CONFIG_FILE = "config.json"  # the resolved config, as `config.config_to_dict` writes it
# What the config alone does not say: the image shape, the kind of run, the code version. Older
# workdirs lack it; readers fall back to the data set for the shape.
RUN_FILE = "run.json"


def prepare_workdir(workdir: str) -> str:
    """Creates the workdir if needed and proves it writable; returns its absolute path."""
    path = os.path.abspath(workdir)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise WorkdirError(
            f"--workdir {workdir!r} cannot be used: {error.strerror or error} "
            f"({error.filename or path}). Give a directory you can write to."
        ) from error
    return path


def write_json_atomic(path: str, value) -> None:
    """Writes `value` as JSON to `path` via a temporary file and a rename."""
    with atomic_write(path) as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")


class MetricsLog:
    """`metrics.jsonl`: one JSON object per finished epoch, in step order (and one for the part
    of an epoch where `max_steps` ended training)."""

    def __init__(self, path: str):
        self.path = path

    def read(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        records = []
        with open(self.path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn last line from a crash: everything after it is rewritten
        return records

    def rewind(self, step: int, *, drop_at_step: bool = False) -> int:
        """Keeps only the records up to `step` (the restored checkpoint's), and drops a torn last
        line; returns how many records went. The dropped epochs are trained again from that
        checkpoint and logged again, identically. `drop_at_step` also drops the record at
        `step` itself: the line of an epoch that `max_steps` ended early, which training on
        past `step` replaces by the whole epoch's line."""
        records = self.read()
        kept = [
            r
            for r in records
            if r.get("step", 0) < step or (r.get("step", 0) == step and not drop_at_step)
        ]
        if os.path.exists(self.path):
            with open(self.path) as f:
                if f.read() != "".join(json.dumps(r) + "\n" for r in kept):
                    self._rewrite(kept)
        return len(records) - len(kept)

    def _rewrite(self, records: list[dict]) -> None:
        with atomic_write(self.path) as f:
            for record in records:
                f.write(json.dumps(record) + "\n")

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


class WorkdirLock:
    """An exclusive lock on a workdir for the length of a run, so that two runs never
    interleave their checkpoints and metrics: `workdir/.lock`, which names the holder's pid.

    Where the system has `flock` (Linux, macOS: kind "flock") the lock is an flock on that file:
    the system releases it when the process ends, however it ends, so a killed run never leaves
    it stale. Where it has not (Windows: kind "file") the file itself is the lock, created
    exclusively and removed on release; one left by a run that was killed names a process that
    no longer runs, and is taken over. Both kinds refuse a second run with the same message.

    Args:
      workdir: the run's directory, which exists.
      kind: "flock" or "file"; None for `default_kind`, which tests set to "file" to run the
        Windows code on Linux.
    """

    KINDS = ("flock", "file")
    default_kind = "flock" if fcntl is not None else "file"
    STALE_EMPTY_SECONDS = 10.0  # an empty lock file this old was left by a crash at creation

    def __init__(self, workdir: str, kind: str | None = None):
        kind = kind or self.default_kind
        if kind not in self.KINDS or (kind == "flock" and fcntl is None):
            raise ValueError(f"lock kind {kind!r} is not available here; use 'file'.")
        self.workdir, self.kind = workdir, kind
        self.path = os.path.join(workdir, ".lock")
        self._file = None

    def __enter__(self):
        self._lock_flock() if self.kind == "flock" else self._lock_file()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.kind == "flock":
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
        elif self._holder(self.path) == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)

    def _refuse(self, holder, hint: str = ""):
        raise WorkdirError(
            f"--workdir {self.workdir!r} is in use by another run (process {holder}); wait "
            f"for it to finish, or use another workdir.{hint}"
        ) from None

    def _lock_flock(self) -> None:
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            self._refuse(holder)
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def _lock_file(self) -> None:
        """Creates the lock file exclusively; a stale one is moved out of the way once."""
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder(self.path)
                if not self._stale(holder):
                    self._refuse(
                        holder or "unknown",
                        f" If no run is going on, delete {self.path} and run again.",
                    )
                self._remove_stale(holder)
                continue
            with os.fdopen(descriptor, "w") as f:
                f.write(f"{os.getpid()}\n")
            return
        self._refuse("unknown")

    def _stale(self, holder: int | None) -> bool:
        """Whether the lock's holder is gone (a pid file that names no running process, or one
        left empty by a crash right after it was created)."""
        if holder is None:
            try:
                return time.time() - os.path.getmtime(self.path) > self.STALE_EMPTY_SECONDS
            except FileNotFoundError:
                return True
        return not self.process_running(holder)

    def _remove_stale(self, holder: int | None) -> None:
        """Moves the stale lock aside and deletes it, unless another run took the lock between
        our look and the move: then its lock goes back in place."""
        aside = f"{self.path}.stale-{os.getpid()}"
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return  # another run removed it first
        if self._holder(aside) == holder:
            os.remove(aside)
        else:
            os.replace(aside, self.path)

    @staticmethod
    def _holder(path: str) -> int | None:
        """The pid a lock file names, or None (no file, empty, or not a pid)."""
        try:
            with open(path) as f:
                text = f.read().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    @staticmethod
    def process_running(pid: int) -> bool:
        """Whether process `pid` runs on this machine (os.kill(pid, 0) would end it on Windows,
        so there the process is opened and asked for its exit code)."""
        if os.name == "nt":
            import ctypes

            kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
            handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
            if not handle:
                return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: it runs, as another user
            code = ctypes.c_ulong()
            ok = kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
            kernel32.CloseHandle(handle)
            return bool(ok) and code.value == 259  # STILL_ACTIVE
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # another user's process
        return True


def move_run_aside(workdir: str) -> str | None:
    """Moves a previous run's outputs into `workdir/previous-<UTC time>/` (nothing is deleted);
    returns that directory, or None when there was nothing to move."""
    names = [
        n
        for n in ("checkpoints", "metrics.jsonl", "members", "images", CONFIG_FILE, RUN_FILE)
        if os.path.exists(os.path.join(workdir, n))
    ]
    if not names:
        return None
    destination = os.path.join(workdir, time.strftime("previous-%Y%m%dT%H%M%S", time.gmtime()))
    os.makedirs(destination)
    for name in names:
        os.rename(os.path.join(workdir, name), os.path.join(destination, name))
    return destination


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def write_failure(
    error: BaseException, workdir: str, complete_steps: Sequence[int]
) -> WorkdirError:
    """The error for a failed write: the operating system's reason, and which checkpoint is
    intact (`complete_steps`, read from disk by the caller: saves are asynchronous, so the last
    one started may be the one that failed)."""
    text = str(error).strip()
    code = re.search(r"os_error_code='?(\d+)", text)
    reason = (
        getattr(error, "strerror", None)
        or (os.strerror(int(code.group(1))) if code else None)
        or text.splitlines()[0].split(" [")[0][:300]
    )
    where = getattr(error, "filename", None) or workdir
    kept = (
        f"the last complete checkpoint (step {complete_steps[-1]}) is intact"
        if complete_steps
        else "no checkpoint had been completed"
    )
    return WorkdirError(
        f"cannot write to the workdir: {reason} ({where}); {kept}. Free space or fix the "
        "permissions and run the same command again to resume."
    )


def write_run_info(
    workdir: str, *, image_shape, kind: str, population_size: int, step_loop: dict | None = None
) -> None:
    """Writes run.json: what a reader needs beyond config.json to rebuild the model, and the
    step loop the run trains with (`step_loops.settle`), which resuming keeps."""
    from vae_jax import __version__, plugins

    info = {
        "image_shape": [int(n) for n in image_shape],
        "kind": kind,
        "population_size": int(population_size),
        "plugins": plugins.imported(),
        "vae_jax_version": __version__,
    }
    if step_loop:
        info["step_loop"] = step_loop
    write_json_atomic(os.path.join(workdir, RUN_FILE), info)


def import_recorded_plugins(workdir: str) -> None:
    """Imports the plugins run.json says the workdir was trained with (none for older ones).

    Raises:
      PluginError: one of them cannot be imported.
    """
    from vae_jax import plugins

    recorded = read_run_info(workdir).get("plugins", [])
    plugins.import_all(recorded, why=f" (the workdir {workdir} was trained with it)")


def read_run_info(workdir: str) -> dict:
    """run.json's contents, or {} for a workdir written before it existed."""
    path = os.path.join(workdir, RUN_FILE)
    return read_json(path) if os.path.isfile(path) else {}


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with, from its config.json, validated.

    Raises:
      WorkdirError: no config.json, or one with fields this version does not know.
      ConfigError: the saved config does not validate.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise WorkdirError(
            f"{workdir!r} has no {CONFIG_FILE}, so it is not a vae_jax workdir; train one with "
            f"`python -m vae_jax.main --workdir {workdir}`."
        )
    import_recorded_plugins(workdir)  # their fields and names join the schema first
    saved = read_json(path)
    config = config_lib.get_config()
    unknown = sorted(set(saved) - set(config))
    if unknown:
        raise WorkdirError(
            f"{path} has fields this version does not know: {', '.join(unknown)}; use the "
            "vae_jax version that trained it."
        )
    for field, value in saved.items():
        config[field] = tuple(value) if isinstance(value, list) else value
    try:
        config_lib.validate_config(config)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return config
