"""Kill it at any moment, lose nothing: preemption, damaged state, full disks, locks, edge cases."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import run_cli, small_config, without_timings

from vae_jax import checkpoint, drawing, models, objectives, train
from vae_jax import config as config_lib
from vae_jax import workdir as workdir_lib
from vae_jax.engine import EpochRunner
from vae_jax.errors import ConfigError, DivergenceError, Preempted, WorkdirError
from vae_jax.optim import build_optimizer
from vae_jax.step import create_train_state


def _straight(tmp_path, **overrides):
    return train.train_and_evaluate(small_config(**overrides), str(tmp_path / "straight"))


def _signal_after_calls(monkeypatch, calls: int, signum=signal.SIGTERM):
    """Makes the process receive `signum` right after the `calls`-th training call."""
    original = EpochRunner.run
    count = {"calls": 0}

    def run(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        count["calls"] += 1
        if count["calls"] == calls:
            os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(EpochRunner, "run", run)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_epoch_saves_a_checkpoint_that_resumes_exactly(tmp_path, monkeypatch, signum):
    config = small_config(num_epochs=3, steps_per_call=3)  # 8 steps an epoch: calls of 3, 3, 2
    straight = _straight(tmp_path, num_epochs=3, steps_per_call=3)
    workdir = str(tmp_path / "preempted")
    _signal_after_calls(monkeypatch, calls=5, signum=signum)  # inside epoch 2, at step 14
    with pytest.raises(Preempted) as stop:
        train.train_and_evaluate(config, workdir)
    assert stop.value.step == 14 and stop.value.signum == signum
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["14", "8"]
    assert signal.getsignal(signal.SIGTERM) is not None  # handlers restored
    monkeypatch.undo()
    resumed = train.train_and_evaluate(config, workdir)
    assert without_timings(resumed) == without_timings(straight)


def test_stream_pipeline_stops_between_chunks(tmp_path, monkeypatch):
    config = small_config(num_epochs=2, pipeline="stream", stream_chunk_steps=2)
    straight = _straight(tmp_path, num_epochs=2, pipeline="stream", stream_chunk_steps=2)
    workdir = str(tmp_path / "preempted")
    original = EpochRunner.program
    calls = {"n": 0}

    def program(self, state, num_steps):
        compiled = original(self, state, num_steps)

        def run(*args):
            calls["n"] += 1
            if calls["n"] == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return compiled(*args)

        return run

    monkeypatch.setattr(EpochRunner, "program", program)
    with pytest.raises(Preempted) as stop:
        train.train_and_evaluate(config, workdir)
    assert stop.value.step == 4  # after the second chunk of two steps, mid-epoch
    monkeypatch.undo()
    assert without_timings(train.train_and_evaluate(config, workdir)) == without_timings(straight)


def test_cli_sigterm_stops_within_bounded_time_and_resumes(tmp_path):
    args = [
        sys.executable,
        "-m",
        "vae_jax.main",
        "--workdir",
        str(tmp_path / "run"),
        "--config.max_train_examples=2048",
        "--config.max_eval_examples=500",
        "--config.hidden_sizes=(64,)",
        "--config.latents=4",
        "--config.num_image_examples=0",
        "--config.progress_bar=False",
        "--config.steps_per_call=4",
        "--config.num_epochs=1000",
    ]
    process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.stat().st_size > 0):
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    sent = time.time()
    _, stderr = process.communicate(timeout=60)
    assert time.time() - sent < 10  # one call of 4 steps, a checkpoint, and out
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "stopped by SIGTERM at step" in stderr and "Traceback" not in stderr
    stopped_at = int(stderr.split("stopped by SIGTERM at step ")[1].split(",")[0])
    assert str(stopped_at) in os.listdir(tmp_path / "run" / "checkpoints")


def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    straight = _straight(tmp_path, num_epochs=3)
    workdir = tmp_path / "run"
    train.train_and_evaluate(small_config(num_epochs=2), str(workdir))
    manifest = workdir / "checkpoints" / "16" / "state" / "manifest.ocdbt"
    manifest.write_bytes(manifest.read_bytes()[:3])
    resumed = train.train_and_evaluate(small_config(num_epochs=3), str(workdir))
    assert without_timings(resumed) == without_timings(straight)
    kept = [n for n in os.listdir(workdir / "checkpoints") if n.startswith("16.unreadable-")]
    assert len(kept) == 1  # renamed aside, never deleted
    assert len((workdir / "checkpoints" / kept[0] / "state" / "manifest.ocdbt").read_bytes()) == 3


def test_partial_checkpoint_directory_is_never_taken_for_complete(tmp_path):
    straight = _straight(tmp_path, num_epochs=3)
    workdir = tmp_path / "run"
    train.train_and_evaluate(small_config(num_epochs=1), str(workdir))
    # As left by a kill during the write of step 16: Orbax writes to a temporary name first.
    shutil.copytree(
        workdir / "checkpoints" / "8", workdir / "checkpoints" / "16.orbax-checkpoint-tmp-7"
    )
    resumed = train.train_and_evaluate(small_config(num_epochs=3), str(workdir))
    assert without_timings(resumed) == without_timings(straight)


def _mount_tmpfs(path, size):
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.decode().strip()}")


def test_full_disk_gives_a_clear_error_and_keeps_the_last_checkpoint(tmp_path):
    disk = tmp_path / "small_disk"
    _mount_tmpfs(disk, "3m")  # room for a few checkpoints of this model, not fifty
    try:
        with pytest.raises(WorkdirError) as error:
            train.train_and_evaluate(small_config(num_epochs=50, max_to_keep=50), str(disk / "run"))
        message = str(error.value)
        copy = tmp_path / "copy"
        shutil.copytree(
            disk / "run", copy, ignore=shutil.ignore_patterns("*.orbax-checkpoint-tmp*")
        )
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    assert "cannot write to the workdir: No space left on device" in message, message
    assert "Traceback" not in message and "tensorstore" not in message.lower()
    # The step named as intact is a complete checkpoint that restores, and training goes on.
    last = int(message.split("checkpoint (step ")[1].split(")")[0])
    assert last >= 8 and str(last) in os.listdir(copy / "checkpoints")
    resumed = train.train_and_evaluate(small_config(num_epochs=50, max_steps=last + 8), str(copy))
    assert resumed[-1]["step"] == last + 8


@pytest.mark.parametrize("population", [1, 2], ids=["single", "population"])
def test_cli_full_disk_is_one_line_naming_the_intact_checkpoint(tmp_path, population):
    """What the user sees: the run's own INFO lines, then exactly one error line and exit 2; no
    traceback, no Orbax or TensorStore message."""
    disk = tmp_path / "small_disk"
    _mount_tmpfs(disk, "4m")  # a checkpoint or two of this model fit, fifty do not
    args = [
        "--workdir",
        str(disk / "run"),
        "--config.max_train_examples=1024",
        "--config.batch_size=128",
        "--config.hidden_sizes=(64,)",
        "--config.latents=4",
        "--config.max_eval_examples=250",
        "--config.num_image_examples=4",
        "--config.num_epochs=50",
        "--config.max_to_keep=50",
        "--config.progress_bar=False",
        f"--config.population_size={population}",
    ]
    try:
        result = run_cli(*args, cwd=tmp_path)
        complete = sorted(int(n) for n in os.listdir(disk / "run" / "checkpoints") if n.isdigit())
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    assert result.returncode == 2, result.stderr
    others = [line for line in result.stderr.splitlines() if not line.startswith("I")]
    assert len(others) == 1, result.stderr
    assert others[0].startswith("error: cannot write to the workdir: No space left on device")
    assert complete and f"the last complete checkpoint (step {complete[-1]}) is intact" in others[0]
    assert "Traceback" not in result.stderr and "orbax" not in result.stderr.lower()


def test_a_failed_picture_write_is_reported_even_when_the_save_in_flight_fails_too(
    tmp_path, monkeypatch
):
    # A full disk fails the asynchronous checkpoint save and, meanwhile, the next picture. The
    # picture's error is raised first; the failed save must neither replace it (from the
    # checkpoint store's exit) nor be named as intact. Made deterministic: the save of step 8
    # writes nothing and fails when waited for, the pictures of epoch 2 fail.
    def save_that_fails_later(self, step, state, config, extra=None):
        def fail():
            raise ValueError(
                "RESOURCE_EXHAUSTED: Error writing local file: No space left on device "
                "[os_error_code='28']"
            )

        self._manager.wait_until_finished = fail

    real_save_png = drawing.save_png

    def save_png(path, grid):
        if "epoch_002" in path:
            raise OSError(28, "No space left on device", path)
        real_save_png(path, grid)

    monkeypatch.setattr(checkpoint.CheckpointStore, "save", save_that_fails_later)
    monkeypatch.setattr(drawing, "save_png", save_png)
    workdir = tmp_path / "run"
    with pytest.raises(WorkdirError) as error:
        train.train_and_evaluate(small_config(num_epochs=3), str(workdir))
    message = str(error.value)
    assert message.startswith("cannot write to the workdir: No space left on device"), message
    assert "epoch_002" in message and "no checkpoint had been completed" in message, message
    epochs = [r["epoch"] for r in workdir_lib.MetricsLog(str(workdir / "metrics.jsonl")).read()]
    assert epochs == [1, 2]  # what was written before the failure stays


@pytest.mark.parametrize("error_in_flight", [True, False])
def test_checkpoint_store_exit_keeps_the_error_in_flight_or_raises_the_failed_save(
    tmp_path, error_in_flight
):
    closed = []

    class FailingManager:
        def wait_until_finished(self):
            raise ValueError("save failed")

        def close(self):
            closed.append(True)

    expected, message = (KeyError, "the first error") if error_in_flight else (ValueError, "save")
    with (
        pytest.raises(expected, match=message),
        checkpoint.CheckpointStore(str(tmp_path / "checkpoints"), max_to_keep=2) as store,
    ):
        store._manager.close()
        store._manager = FailingManager()
        if error_in_flight:
            raise KeyError("the first error")
    assert closed == [True]  # released either way


def test_write_failure_of_metrics_is_a_clear_error(tmp_path, monkeypatch):
    def refuse(self, record):
        raise OSError(28, "No space left on device", self.path)

    monkeypatch.setattr(workdir_lib.MetricsLog, "append", refuse)
    with pytest.raises(WorkdirError, match="cannot write to the workdir: No space left on device"):
        train.train_and_evaluate(small_config(num_epochs=1), str(tmp_path / "run"))


def test_nan_policy_skip_skips_bad_updates_and_counts_them(tmp_path, monkeypatch):
    make_elbo_loss = objectives.make_elbo_loss

    def poisoned_elbo_loss(model, beta, kl_warmup_steps=0):
        loss_fn = make_elbo_loss(model, beta, kl_warmup_steps)

        def poisoned(params, x, key, step):
            loss, metrics = loss_fn(params, x, key, step)
            bad = jnp.where((step == 3) | (step == 10), jnp.nan, 0.0)
            return loss + bad, {**metrics, "loss": loss + bad}

        return poisoned

    monkeypatch.setattr(objectives, "make_elbo_loss", poisoned_elbo_loss)
    records = train.train_and_evaluate(small_config(nan_policy="skip"), str(tmp_path / "run"))
    assert [r["skipped_steps"] for r in records] == [1, 1]
    assert all(np.isfinite(r["train_elbo"]) and np.isfinite(r["test_elbo"]) for r in records)
    with pytest.raises(DivergenceError, match="at step 4 "):
        train.train_and_evaluate(small_config(), str(tmp_path / "stop"))


def test_second_run_on_a_locked_workdir_is_refused(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    with (
        workdir_lib.WorkdirLock(str(workdir)),
        pytest.raises(WorkdirError, match=rf"is in use by another run \(process {os.getpid()}\)"),
    ):
        train.train_and_evaluate(small_config(num_epochs=1), str(workdir))
    assert not (workdir / "metrics.jsonl").exists()
    train.train_and_evaluate(small_config(num_epochs=1), str(workdir))  # free again


def test_cli_second_run_refuses_while_the_first_goes_on(tmp_path):
    base = [
        sys.executable,
        "-m",
        "vae_jax.main",
        "--workdir",
        str(tmp_path / "run"),
        "--config.max_train_examples=1024",
        "--config.hidden_sizes=(64,)",
        "--config.progress_bar=False",
    ]
    first = subprocess.Popen([*base, "--config.num_epochs=1000"], stderr=subprocess.PIPE, text=True)
    try:
        metrics = tmp_path / "run" / "metrics.jsonl"
        deadline = time.time() + 120
        while not (metrics.exists() and metrics.stat().st_size > 0):
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.2)
        second = subprocess.run(base, capture_output=True, text=True, timeout=120, check=False)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"is in use by another run (process {first.pid})" in second.stderr
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()


def test_start_fresh_moves_an_incompatible_run_aside(tmp_path):
    workdir = tmp_path / "run"
    old = train.train_and_evaluate(small_config(num_epochs=1), str(workdir))
    with pytest.raises(WorkdirError, match="--start_fresh"):
        train.train_and_evaluate(small_config(num_epochs=1, latents=3), str(workdir))
    new = train.train_and_evaluate(
        small_config(num_epochs=1, latents=3), str(workdir), start_fresh=True
    )
    assert new[0]["test_elbo"] != old[0]["test_elbo"]
    (previous,) = [p for p in workdir.iterdir() if p.name.startswith("previous-")]
    with open(previous / "metrics.jsonl") as f:
        assert [json.loads(line) for line in f] == old
    assert (previous / "checkpoints" / "8").is_dir()


def test_checkpoint_from_before_the_critic_field_restores(tmp_path):
    """Checkpoints written before TrainState had `critic` hold no such entry; they resume."""
    config = small_config()
    model = models.build_model(config, (28, 28, 1))
    optimizer = build_optimizer(config, 100)
    state = create_train_state(model, optimizer, (28, 28, 1), config.latents, 3)
    state = state.replace(step=jnp.asarray(17, jnp.int32))
    storable = checkpoint.to_storable(state)
    legacy_tree = {name: getattr(storable, name) for name in ("step", "params", "opt_state", "key")}
    with ocp.CheckpointManager(str(tmp_path / "checkpoints")) as manager:
        manager.save(  # the format as it was written then
            17,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(legacy_tree),
                meta=ocp.args.JsonSave({"config": config_lib.config_to_dict(config)}),
            ),
        )
        manager.wait_until_finished()
    with checkpoint.CheckpointStore(str(tmp_path / "checkpoints"), 3) as store:
        fresh = create_train_state(model, optimizer, (28, 28, 1), config.latents, 0)
        restored, step, _ = store.restore_latest(fresh, config)
    assert step == 17 and restored.critic is None
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(storable), jax.tree.leaves(checkpoint.to_storable(restored))
        )
    )


def test_resume_ignores_settings_that_neither_objective_reads():
    saved = config_lib.config_to_dict(config_lib.get_config())
    current = config_lib.get_config()
    current.factor_gamma = saved["factor_gamma"] + 25.0  # e.g. a default changed since
    current.capacity_max = 50.0
    assert config_lib.resume_incompatibilities(saved, current) == []
    current.objective = "factor_vae"  # now the resuming run reads factor_gamma
    assert config_lib.resume_incompatibilities(saved, current) == [
        f"factor_gamma={saved['factor_gamma']!r} in the checkpoint, {current.factor_gamma!r} now",
        "objective='vae' in the checkpoint, 'factor_vae' now",
    ]
    current.objective = "vae"
    current.latents = 7  # every objective reads the model
    assert config_lib.resume_incompatibilities(saved, current) == [
        f"latents={saved['latents']!r} in the checkpoint, 7 now"
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        {"latents": 1},
        {"batch_size": 1, "max_train_examples": 5, "max_eval_examples": 3},
        {"batch_size": 64, "max_train_examples": 64},  # a data set of exactly one batch
        {
            "model": "conv",
            "conv_features": (8,),
            "latents": 1,
            "batch_size": 2,
            "max_train_examples": 4,
            "max_eval_examples": 2,
        },
    ],
)
def test_valid_edge_cases_train(tmp_path, overrides):
    records = train.train_and_evaluate(small_config(num_epochs=1, **overrides), str(tmp_path / "r"))
    assert np.isfinite(records[-1]["test_elbo"])


def test_one_pixel_images_train_the_mlp_and_odd_sizes_are_refused_for_conv(tmp_path):
    path = tmp_path / "pixels.npz"
    rng = np.random.default_rng(0)
    np.savez(
        path,
        train=rng.integers(0, 2, (64, 1, 1)).astype(np.uint8) * 255,
        test=rng.integers(0, 2, (16, 1, 1)).astype(np.uint8) * 255,
    )
    config = small_config(
        dataset=f"npz:{path}",
        max_train_examples=0,
        max_eval_examples=0,
        batch_size=16,
        num_epochs=1,
        latents=1,
    )
    records = train.train_and_evaluate(config, str(tmp_path / "mlp"))
    assert np.isfinite(records[-1]["test_elbo"]) and records[-1]["test_recon"] > 0
    odd = tmp_path / "odd.npz"
    np.savez(odd, train=np.zeros((8, 27, 27), np.uint8), test=np.zeros((4, 27, 27), np.uint8))
    with pytest.raises(ConfigError, match="sides must be divisible by 4; the images are 27x27"):
        train.train_and_evaluate(
            small_config(
                dataset=f"npz:{odd}",
                model="conv",
                batch_size=4,
                max_train_examples=0,
                max_eval_examples=0,
            ),
            str(tmp_path / "conv"),
        )


def test_fault_injection_two_random_kills():
    """The short version of `python tests/fault_injection.py --kills 20` (its output is in the
    issue notes): SIGKILL at random instants, rerun, identical metrics."""
    script = os.path.join(os.path.dirname(__file__), "fault_injection.py")
    result = subprocess.run(
        [sys.executable, script, "--kills", "2", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "2 of 2 killed runs finished with metrics identical" in result.stdout
