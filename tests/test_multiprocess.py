"""Two processes on localhost stop, fail, refuse and launch as one run does.

Each case starts real `python -m vae_jax.main` processes (tests/several_processes.py); the number of
processes is fixed when JAX starts.
"""

import os
import signal
import time

import pytest
import several_processes as mp
from conftest import forced_devices_env

from vae_jax import launch


def _stopped_line(signum, step):
    name = signal.Signals(signum).name
    return (
        f"stopped by {name} at step {step}, with a checkpoint of that step; run the same command "
        "again to continue."
    )


def _stop_during_compilation(workdir, args, signum, targets):
    """Starts both processes and sends `signum` to `targets` while they compile: the agreed step
    is the end of the first training call, mid-epoch."""
    processes = mp.start(workdir, args)
    compiling = mp.MOMENTS["compilation"]
    mp.wait_until(lambda: compiling(workdir, processes[1]), processes, 300, "compilation")
    for i in targets:
        processes[i].popen.send_signal(signum)
    return processes, mp.finish(processes)


def test_a_stop_sent_to_one_or_both_processes_saves_one_step_and_resumes_exactly(tmp_path):
    args = ["--config.num_epochs=2"]
    straight = str(tmp_path / "straight")
    assert mp.finish(mp.start(straight, args)) == [0, 0]

    workdir = str(tmp_path / "stopped")
    # SIGTERM to process 1 only, as a scheduler taking one machine back.
    processes, statuses = _stop_during_compilation(workdir, args, signal.SIGTERM, [1])
    assert statuses == [143, 143], processes[0].text()[-2000:]
    step = int(processes[0].last_line().split(" at step ")[1].split(",")[0])
    assert 0 < step < 16  # inside the first epoch
    assert [p.last_line() for p in processes] == [_stopped_line(signal.SIGTERM, step)] * 2
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [str(step)]
    for p in processes:
        assert "Traceback" not in p.text() and "preemption_notifier" not in p.text()

    # Ctrl-C in a terminal: SIGINT to both.
    processes, statuses = _stop_during_compilation(workdir, args, signal.SIGINT, [0, 1])
    assert statuses == [130, 130], processes[0].text()[-2000:]
    assert "Resumed from the checkpoint at step" in processes[0].text()
    second = int(processes[0].last_line().split(" at step ")[1].split(",")[0])
    assert step < second
    assert [p.last_line() for p in processes] == [_stopped_line(signal.SIGINT, second)] * 2

    assert mp.finish(mp.start(workdir, args)) == [0, 0]
    assert mp.without_timings(mp.records(workdir)) == mp.without_timings(mp.records(straight))


@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_process_leaves_each_survivor_one_line_within_30_seconds(tmp_path, victim):
    workdir = str(tmp_path / "run")
    processes = mp.start(workdir, ["--config.num_epochs=100000"])
    metrics = os.path.join(workdir, "metrics.jsonl")
    mp.wait_until(lambda: os.path.exists(metrics), processes, 300, "the first epoch")
    mp.wait_until(
        lambda: launch.last_complete_checkpoint(workdir), processes, 60, "the first checkpoint"
    )
    processes[victim].popen.send_signal(signal.SIGKILL)
    killed = time.time()
    survivor = processes[1 - victim]
    status = survivor.popen.wait(timeout=60)
    assert time.time() - killed < 30
    mp.kill_all(processes)
    assert status == 1
    text = survivor.text()
    assert "Traceback" not in text and "Fatal Python error" not in text and "@ " not in text
    line = survivor.last_line()
    lost = "process 0, the coordinator, was lost" if victim == 0 else "process 1 was lost"
    assert line.startswith(f"error: process {1 - victim} stopped: {lost}"), line
    assert "the last complete checkpoint is step " in line
    assert "run the same commands again to resume" in line
    assert os.path.exists(os.path.join(workdir, f"log-process-{1 - victim}.txt"))


def test_processes_given_different_configs_refuse_to_start_naming_the_field(tmp_path):
    workdir = str(tmp_path / "run")
    port = mp.free_port()

    def per_process(i):
        rate = ["--config.learning_rate=0.002"] if i == 1 else []
        return rate + [
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
        ]

    processes = mp.start(workdir, per_process=per_process)
    assert mp.finish(processes, timeout=120) == [2, 2]
    assert processes[1].last_line() == (
        "error: process 1 differs from process 0: learning_rate=0.002 here but 0.001 on process "
        "0; start every process with the same flags, config file, plugins and vae_jax version."
    )
    assert processes[0].last_line().startswith("error: process(es) 1 were started with a ")
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_a_two_task_slurm_job_joins_without_address_flags(tmp_path):
    """The environment `srun --ntasks=2` sets on one node; JAX finds the coordinator in it."""
    job_id = mp.free_slurm_job_id()
    envs = [
        forced_devices_env(
            SLURM_JOB_ID=str(job_id),
            SLURM_STEP_ID="0",
            SLURM_STEP_NODELIST="localhost",
            SLURM_STEP_NUM_NODES="1",
            SLURM_NTASKS="2",
            SLURM_PROCID=str(i),
            SLURM_LOCALID=str(i),
        )
        for i in range(2)
    ]
    workdir = str(tmp_path / "slurm")
    processes = mp.start(workdir, ["--config.num_epochs=1"], per_process=lambda i: [], envs=envs)
    assert mp.finish(processes) == [0, 0], processes[1].text()[-2000:]
    assert len(mp.records(workdir)) == 1  # one run of two processes, written once
    assert os.path.exists(os.path.join(workdir, "log-process-1.txt"))
