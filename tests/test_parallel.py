"""Data parallelism on forced CPU devices and across processes on localhost (gloo).

Each case runs in subprocesses: the number of devices is fixed when JAX starts. Forced CPU
devices are for correctness only (they are slower than one device).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from conftest import forced_devices_env

SMALL = [
    "--config.max_train_examples=2048",
    "--config.max_eval_examples=1000",
    "--config.hidden_sizes=(128,)",
    "--config.latents=8",
    "--config.num_image_examples=8",
    "--config.progress_bar=False",
    "--config.num_epochs=1",
]


def _run(args, devices=1, timeout=300):
    return subprocess.run(
        [sys.executable, *args],
        env=forced_devices_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STEP_CHECK = textwrap.dedent(
    """
    import json, jax, jax.numpy as jnp, numpy as np
    from vae_jax import data, models, objectives, parallel
    from vae_jax.config import get_config
    from vae_jax.optim import build_optimizer
    from vae_jax.step import create_train_state, make_train_step
    config = get_config()
    config.hidden_sizes, config.latents = (64,), 4
    images = data.load_binarized_mnist().split("train")[:64]
    model = models.build_model(config, (28, 28, 1))
    optimizer = build_optimizer(config, 10)
    step = make_train_step(objectives.make_elbo_loss(model), optimizer)

    def one_step(devices):
        mesh = parallel.data_mesh(devices)
        state = create_train_state(model, optimizer, (28, 28, 1), 4, 0,
                                   sharding=parallel.replicated(mesh))
        batch = jax.device_put(images, parallel.batch_sharding(mesh))
        state, metrics = jax.jit(step)(state, batch)
        return state, metrics

    sharded, m8 = one_step(jax.devices())
    single, m1 = one_step(jax.devices()[:1])
    diffs = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(single.params))]
    print(json.dumps({"devices": jax.device_count(), "max_param_diff": max(diffs),
                      "loss8": float(m8["loss"]), "loss1": float(m1["loss"]),
                      "sharded_batch_devices": len(jax.device_put(
                          images, parallel.batch_sharding(parallel.data_mesh())).sharding.device_set)}))
    """
)


def test_data_parallel_step_equals_the_single_device_step():
    result = _run(["-c", STEP_CHECK], devices=8)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8 and report["sharded_batch_devices"] == 8
    assert abs(report["loss8"] - report["loss1"]) < 1e-3
    # An extra mean (or sum) over devices would change the update by a factor of 8.
    assert report["max_param_diff"] < 1e-5, report


def test_one_epoch_on_eight_devices_matches_one_device(tmp_path):
    runs = {}
    for devices in (1, 8):
        workdir = str(tmp_path / f"d{devices}")
        result = _run(["-m", "vae_jax.main", "--workdir", workdir, *SMALL], devices=devices)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[devices] = _metrics(workdir)
    assert abs(runs[8][0]["test_elbo"] - runs[1][0]["test_elbo"]) < 0.05
    assert runs[8][0]["step"] == runs[1][0]["step"] == 16


def test_batch_that_does_not_split_over_the_devices_is_refused(tmp_path):
    result = _run(
        ["-m", "vae_jax.main", "--workdir", str(tmp_path / "r"), *SMALL, "--config.batch_size=12"],
        devices=8,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "batch_size=12 must be divisible by the 8 devices" in result.stderr


def _start_processes(workdir, devices_per_process, extra=()):
    port = _free_port()
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vae_jax.main",
                "--workdir",
                workdir,
                *SMALL,
                *extra,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            env=forced_devices_env(devices_per_process),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


def _wait_all(processes, timeout):
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=timeout))
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            raise
    return outputs


# Two devices per process: the batch is split over processes and over devices within each
# (one device per process is the same code with a trivial inner split).
@pytest.mark.parametrize("devices_per_process", [2])
def test_two_processes_match_one_and_checkpoint_and_resume(tmp_path, devices_per_process):
    single = str(tmp_path / "single")
    result = _run(["-m", "vae_jax.main", "--workdir", single, *SMALL])
    assert result.returncode == 0, result.stderr[-3000:]

    workdir = str(tmp_path / "two")
    processes = _start_processes(workdir, devices_per_process)
    outputs = _wait_all(processes, timeout=300)
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    first = _metrics(workdir)
    assert len(first) == 1  # written by process 0 only, once
    assert abs(first[0]["test_elbo"] - _metrics(single)[0]["test_elbo"]) < 0.05
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["16"]

    processes = _start_processes(workdir, devices_per_process, extra=["--config.num_epochs=2"])
    outputs = _wait_all(processes, timeout=300)
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    assert "Resumed from the checkpoint at step 16" in outputs[0][1]
    assert [(r["epoch"], r["step"]) for r in _metrics(workdir)] == [(1, 16), (2, 32)]
