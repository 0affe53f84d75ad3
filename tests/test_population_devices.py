"""Populations over several devices: the member axis split over forced CPU devices.

Each case runs in subprocesses: the number of devices is fixed when JAX starts. Forced CPU
devices share this machine's cores, so they test correctness only, not speed. One case runs two
processes on localhost (gloo), the mesh spanning both.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import ELBO_FIELDS, forced_devices_env, without_timings

SMALL = [
    "--config.max_train_examples=512",
    "--config.max_eval_examples=256",
    "--config.hidden_sizes=(32,)",
    "--config.latents=4",
    "--config.batch_size=64",
    "--config.learning_rate=3e-3",
    "--config.progress_bar=False",
    "--config.num_image_examples=8",
]


def run_python(args, devices: int):
    return subprocess.run(
        [sys.executable, *args],
        env=forced_devices_env(devices),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def train(workdir, devices: int, size: int, epochs: int, *extra):
    """Trains (or resumes) a population with the command line; its records per member."""
    result = run_python(
        [
            "-m",
            "vae_jax.main",
            f"--workdir={workdir}",
            f"--config.population_size={size}",
            f"--config.num_epochs={epochs}",
            *SMALL,
            *extra,
        ],
        devices,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return member_records(workdir, size)


def member_records(workdir, size: int) -> list[list[dict]]:
    records = []
    for k in range(size):
        with open(os.path.join(workdir, "members", str(k), "metrics.jsonl")) as f:
            records.append([json.loads(line) for line in f])
    return records


def assert_members_close(records, reference):
    """Every member's epochs and steps exactly, its figures to rtol 1e-4; returns the largest
    relative difference."""
    assert len(records) == len(reference)
    largest = 0.0
    for k, (member, single) in enumerate(zip(records, reference)):
        assert [(r["epoch"], r["step"]) for r in member] == [
            (r["epoch"], r["step"]) for r in single
        ]
        for got, want in zip(member, single):
            for field in ELBO_FIELDS:
                assert np.isfinite(got[field]) and got[field] != 0.0
                np.testing.assert_allclose(
                    got[field], want[field], rtol=1e-4, err_msg=f"member {k} {field}"
                )
                largest = max(largest, abs(got[field] - want[field]) / abs(want[field]))
    return largest


@pytest.fixture(scope="module")
def eight_members(tmp_path_factory):
    """Eight seeds for two epochs, on 1 device and on 4: {devices: (workdir, records)}."""
    runs = {}
    for devices in (1, 4):
        workdir = str(tmp_path_factory.mktemp(f"eight_on_{devices}"))
        runs[devices] = workdir, train(workdir, devices, 8, 2)
    return runs


def test_eight_members_on_four_devices_equal_one_device(eight_members):
    one, four = eight_members[1][1], eight_members[4][1]
    assert_members_close(four, one)
    assert len({r[-1]["test_elbo"] for r in four}) == 8  # eight different models


PLACEMENT = textwrap.dedent(
    """
    import json, sys
    import jax
    sys.path.insert(0, "tests")
    from conftest import small_config
    from vae_jax import population
    placed = {}
    for size in (8, 2):
        job = population.build_job(small_config(population_size=size, hidden_sizes=(32,)))
        leaf = jax.tree.leaves(job.initial_state.params)[0]
        placed[size] = {
            "devices": len(leaf.sharding.device_set),
            "shard_members": sorted({s.data.shape[0] for s in leaf.addressable_shards}),
            "key_devices": len(job.initial_state.key.sharding.device_set),
            "mesh": dict(leaf.sharding.mesh.shape),
        }
    print(json.dumps(placed))
    """
)


def test_the_member_axis_is_split_over_the_devices():
    result = run_python(["-c", PLACEMENT], 4)
    assert result.returncode == 0, result.stderr[-3000:]
    placed = json.loads(result.stdout.strip().splitlines()[-1])
    # Eight members: 4 groups of one device, each holding 2 members with whole batches.
    assert placed["8"] == {
        "devices": 4,
        "shard_members": [2],
        "key_devices": 4,
        "mesh": {"members": 4, "data": 1},
    }
    # Two members: 2 groups of two devices; each device holds its member's whole parameters.
    assert placed["2"] == {
        "devices": 4,
        "shard_members": [1],
        "key_devices": 4,
        "mesh": {"members": 2, "data": 2},
    }


def test_two_members_split_their_batches_over_four_devices(tmp_path):
    one = train(str(tmp_path / "one"), 1, 2, 1)
    four = train(str(tmp_path / "four"), 4, 2, 1)
    assert_members_close(four, one)


def test_a_resumed_run_on_four_devices_is_the_straight_run(eight_members, tmp_path):
    _, straight = eight_members[4]
    workdir = str(tmp_path / "resumed")
    first = train(workdir, 4, 8, 1)
    resumed = train(workdir, 4, 8, 2)
    for member_first, member_resumed, member_straight in zip(first, resumed, straight):
        assert without_timings(member_resumed) == without_timings(member_straight)  # bit for bit
        assert member_resumed[0] == member_first[0]  # epoch 1 kept, not redone


def test_a_one_device_workdir_resumes_on_four_devices(eight_members, tmp_path):
    finished, straight = eight_members[1]
    workdir = str(tmp_path / "moved")
    # As if the one-device run had stopped after epoch 1.
    shutil.copytree(finished, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "16"))
    resumed = train(workdir, 4, 8, 2)
    assert [member[0] for member in resumed] == [member[0] for member in straight]
    assert_members_close(resumed, straight)


FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "old_workdirs", "population")
# The fixture's config (tests/fixtures/old_workdirs/make_fixtures.py), as flags.
FIXTURE_FLAGS = [
    "--config.max_train_examples=1024",
    "--config.max_eval_examples=500",
    "--config.eval_batch_size=250",
    "--config.hidden_sizes=(16,)",
    "--config.latents=2",
    "--config.num_epochs=2",
    "--config.num_image_examples=4",
    "--config.images_every_epochs=100",
    "--config.max_to_keep=1",
    "--config.progress_bar=False",
    "--config.step_loop=scan",
    "--config.objective=beta_vae",
    "--config.population_size=2",
    "--config.population_betas=(1.0,2.0)",
]


def test_an_old_population_workdir_resumes_on_four_devices(tmp_path):
    """The committed workdir of an earlier version, written on one device."""
    resumed = {}
    for devices in (1, 4):
        workdir = str(tmp_path / f"on_{devices}")
        shutil.copytree(FIXTURE, workdir)
        result = run_python(["-m", "vae_jax.main", f"--workdir={workdir}", *FIXTURE_FLAGS], devices)
        assert result.returncode == 0, result.stderr[-3000:]
        resumed[devices] = member_records(workdir, 2)
    fixture = member_records(FIXTURE, 2)
    for k in range(2):
        assert resumed[4][k][0] == fixture[k][0]  # epoch 1 kept
        assert [r["step"] for r in resumed[4][k]] == [8, 16]
    assert_members_close(resumed[4], resumed[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_split_every_members_batch_between_them(eight_members, tmp_path):
    """Three members on 2 processes of 2 devices: a (1, 4) mesh, so every batch is split over
    both processes, and both read every member's figures."""
    workdir, port = str(tmp_path / "two"), free_port()
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vae_jax.main",
                f"--workdir={workdir}",
                "--config.population_size=3",
                "--config.num_epochs=2",
                *SMALL,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            env=forced_devices_env(2),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        errors = [p.communicate(timeout=300)[1] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    for p, err in zip(processes, errors):
        assert p.returncode == 0, err[-3000:]
    assert_members_close(member_records(workdir, 3), eight_members[1][1][:3])


def test_a_batch_size_the_devices_cannot_split_is_one_line(tmp_path):
    result = run_python(
        [
            "-m",
            "vae_jax.main",
            f"--workdir={tmp_path / 'w'}",
            "--config.population_size=3",
            "--config.num_epochs=1",
            *SMALL,
            "--config.batch_size=50",
        ],
        4,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for part in ("batch_size=50", "population_size=3", "4 devices", "multiple of 4"):
        assert part in lines[0]
    assert not os.path.exists(tmp_path / "w" / "checkpoints")
