"""The workdir lock where the system has no fcntl (Windows): a lock file naming its holder's pid,
taken over once its holder is gone. Forced on Linux through `WorkdirLock`'s public `kind`."""

import os
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import small_config

from vae_jax import train
from vae_jax import workdir as workdir_lib
from vae_jax.errors import WorkdirError

HOLD = textwrap.dedent(
    """
    import sys, time
    from vae_jax.workdir import WorkdirLock
    with WorkdirLock(sys.argv[1], kind="file"):
        print("locked", flush=True)
        time.sleep(600)
    """
)


def exited_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(process.stdout)


def test_a_second_lock_is_refused_and_a_released_one_is_gone(tmp_path):
    lock_file = tmp_path / ".lock"
    with workdir_lib.WorkdirLock(str(tmp_path), kind="file"):
        assert lock_file.read_text() == f"{os.getpid()}\n"
        with (
            pytest.raises(WorkdirError) as refused,
            workdir_lib.WorkdirLock(str(tmp_path), kind="file"),
        ):
            pass
    assert str(refused.value) == (
        f"--workdir {str(tmp_path)!r} is in use by another run (process {os.getpid()}); wait for "
        f"it to finish, or use another workdir. If no run is going on, delete {lock_file} and "
        "run again."
    )
    assert not lock_file.exists()
    with workdir_lib.WorkdirLock(str(tmp_path), kind="file"):  # free again
        pass


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    (tmp_path / ".lock").write_text(f"{exited_pid()}\n")
    with workdir_lib.WorkdirLock(str(tmp_path), kind="file"):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
    assert sorted(os.listdir(tmp_path)) == []  # nothing of the stale lock is left


def test_an_empty_lock_file_is_a_run_starting_until_it_is_old(tmp_path):
    lock_file = tmp_path / ".lock"
    lock_file.write_text("")
    with (
        pytest.raises(WorkdirError, match=r"in use by another run \(process unknown\)"),
        workdir_lib.WorkdirLock(str(tmp_path), kind="file"),
    ):
        pass
    old = time.time() - 2 * workdir_lib.WorkdirLock.STALE_EMPTY_SECONDS
    os.utime(lock_file, (old, old))
    with workdir_lib.WorkdirLock(str(tmp_path), kind="file"):
        pass


def test_another_process_holds_the_lock_until_it_is_killed(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with (
            pytest.raises(WorkdirError, match=rf"in use by another run \(process {holder.pid}\)"),
            workdir_lib.WorkdirLock(str(tmp_path), kind="file"),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
    with workdir_lib.WorkdirLock(str(tmp_path), kind="file"):  # the killed run's lock is stale
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"


def test_a_run_refuses_a_workdir_locked_by_file(tmp_path, monkeypatch):
    monkeypatch.setattr(workdir_lib.WorkdirLock, "default_kind", "file")
    workdir = tmp_path / "run"
    workdir.mkdir()
    with (
        workdir_lib.WorkdirLock(str(workdir)),
        pytest.raises(
            WorkdirError, match=rf"is in use by another run \(process {os.getpid()}\)"
        ) as refused,
    ):
        train.train_and_evaluate(small_config(num_epochs=1), str(workdir))
    assert "If no run is going on, delete" in str(refused.value)  # the file kind's message
    assert not (workdir / "metrics.jsonl").exists()


def test_the_package_imports_and_locks_without_fcntl(tmp_path):
    """As on Windows: `import fcntl` fails, and the lock is the file kind."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["fcntl"] = None  # `import fcntl` now raises ImportError
        from vae_jax import main, workdir
        assert workdir.WorkdirLock.default_kind == "file", workdir.WorkdirLock.default_kind
        with workdir.WorkdirLock(sys.argv[1]):
            print(open(sys.argv[1] + "/.lock").read().strip() == str(__import__("os").getpid()))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "True\n", "")


def test_flock_is_refused_where_there_is_none(monkeypatch, tmp_path):
    monkeypatch.setattr(workdir_lib, "fcntl", None)
    with pytest.raises(ValueError, match="lock kind 'flock' is not available here; use 'file'"):
        workdir_lib.WorkdirLock(str(tmp_path), kind="flock")
