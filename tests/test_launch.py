"""Joining several processes and explaining a lost one, without starting any (launch.py).

The log texts below are the lines JAX's runtime wrote in this suite's two-process runs
(tests/test_multiprocess.py), cut to what the explanation reads.
"""

import os

import pytest

from vae_jax import launch

HEARTBEATS = (
    "E1203 19:10:02.417918 coordination_service.cc:1549] Use error polling to propagate the "
    "following error to all tasks: UNAVAILABLE: The following tasks are unhealthy (stopped "
    "sending heartbeats):\n1\nThe tasks have crashed. Check the task logs\n"
    "F1203 19:10:02.419900 client.h:80] Terminating process because the JAX distributed "
    "service detected fatal errors.\n    @     0x7faa270f0321  tsl::RPCState<>::OnCompleted()\n"
)
COORDINATOR = (
    "F1203 19:06:58.587777 client.h:80] Terminating process ... absl::Status: UNAVAILABLE: "
    "Failed to send RPC to coordination service. Either the leader task was "
    "preempted/died/restarted unexpectedly or this task is experiencing network issues.\n"
    "ValueError: UNKNOWN: Gloo AllGather failed: Read error [127.0.0.1]:7403: Connection reset "
    "by peer\n"
)
GLOO = (
    "ValueError: UNKNOWN: Gloo AllReduce failed: [external/gloo/gloo/transport/tcp/pair.cc:547] "
    "Connection closed by peer [127.0.0.1]:52926\n"
)


@pytest.mark.parametrize(
    "text, index, count, expected",
    [
        (HEARTBEATS, "0", 2, "process 1 was lost (it stopped answering)"),
        (HEARTBEATS.replace(":\n1\n", ":\n1, 3\n"), "0", 4, "processes 1, 3 were lost"),
        ("Task 2 heartbeat timeout. This indicates", "0", 4, "process 2 was lost"),
        (COORDINATOR, "1", 2, "process 0, the coordinator, was lost"),
        (GLOO, "0", 2, "process 1 was lost (its connection closed)"),
        (GLOO, "1", 2, "process 0, the coordinator, was lost (its connection closed)"),
        (GLOO, "2", 4, "a peer process was lost (its connection closed)"),
        ("nothing the runtime said", "0", 2, None),
    ],
)
def test_the_lost_process_is_named_from_the_runtimes_messages(text, index, count, expected):
    found = launch.lost_processes(text, index, count)
    assert found == expected or (expected and found.startswith(expected))


def test_the_failure_line_names_the_last_complete_checkpoint_and_the_log(tmp_path):
    for name in ("16", "32", "48.orbax-checkpoint-tmp-1764"):
        os.makedirs(tmp_path / "checkpoints" / name)
    line = launch.explain_failure(HEARTBEATS, -6, "0", 2, str(tmp_path))
    assert line == (
        "process 0 stopped: process 1 was lost (it stopped answering); the last complete "
        "checkpoint is step 32; run the same commands again to resume (details: "
        f"{tmp_path}/log-process-0.txt)."
    )


def test_a_worker_killed_without_a_word_from_the_runtime_says_by_what(tmp_path):
    line = launch.explain_failure("", -9, "1", 2, str(tmp_path))
    assert line.startswith(
        "process 1 stopped: it was killed by SIGKILL; no checkpoint had been completed; "
    )
    assert "failed with exit status 1;" in launch.explain_failure("", 1, "1", 2, str(tmp_path))


SLURM_TWO_TASKS = {
    "SLURM_JOB_ID": "77",
    "SLURM_STEP_ID": "0",
    "SLURM_STEP_NODELIST": "node[001-002]",
    "SLURM_NTASKS": "2",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
}


@pytest.mark.parametrize(
    "environ, expected",
    [
        (SLURM_TWO_TASKS, "slurm"),
        ({**SLURM_TWO_TASKS, "SLURM_NTASKS": "1"}, None),  # one task trains alone
        ({"SLURM_JOB_ID": "77", "SLURM_NTASKS": "2"}, None),  # the batch script, not srun
        ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3"}, "openmpi"),
        ({"OMPI_COMM_WORLD_SIZE": "1"}, None),
        ({}, None),
    ],
)
def test_cluster_environments_of_several_tasks_are_detected(environ, expected):
    assert launch.cluster_environment(environ) == expected


def test_the_process_index_and_count_are_read_before_jax_starts():
    assert launch.process_index_hint(3, {}) == "3"
    assert launch.process_index_hint(None, SLURM_TWO_TASKS) == "1"
    assert launch.process_index_hint(None, {"OMPI_COMM_WORLD_RANK": "2"}) == "2"
    assert launch.process_index_hint(None, {}).startswith("pid")
    assert launch.process_count_hint(None, SLURM_TWO_TASKS) == 2
    assert launch.process_count_hint(None, {"JAX_NUM_PROCESSES": "4"}) == 4
    assert launch.process_count_hint(None, {}) is None


def test_processes_that_never_all_joined_are_told_how_to_start():
    text = (
        "F1203 19:20:45.040551 client.h:80] Terminating process because the JAX distributed "
        "service detected fatal errors. absl::Status: DEADLINE_EXCEEDED: Deadline Exceeded\n\n"
        "RPC: /xla.coordination.CoordinationService/RegisterTask\n"
    )
    line = launch.explain_failure(text, -6, "1", 2, "runs/x")
    assert line.startswith(
        "process 1 stopped: all 2 processes did not join within --initialization_timeout_seconds;"
    )


def test_processes_that_differ_are_told_what_differs():
    from vae_jax import __version__, parallel

    first = {"code": "0.1.0+aaaa", "config": {"learning_rate": 0.001, "latents": 8}}
    here = {"code": "0.1.0+bbbb", "config": {"learning_rate": 0.002, "latents": 8}}
    assert parallel.differences(here, first) == (
        "learning_rate=0.002 here but 0.001 on process 0; "
        "vae_jax 0.1.0+bbbb here but 0.1.0+aaaa on process 0"
    )
    version = parallel.code_version()
    assert version.startswith(f"{__version__}+") and version == parallel.code_version()
