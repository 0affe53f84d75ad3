"""`python -m vae_jax.main` end to end, as a user runs it, on a small subset of the real data."""

import json
import os

from conftest import run_cli

SMALL = [
    "--config.max_train_examples=512",
    "--config.max_eval_examples=256",
    "--config.batch_size=64",
    "--config.hidden_sizes=(64,)",
    "--config.latents=2",
    "--config.num_image_examples=8",
]


def test_smoke_run_leaves_a_complete_workdir_and_resumes(tmp_path):
    workdir = tmp_path / "runs"
    first = run_cli("--workdir", "runs", *SMALL, "--config.num_epochs=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "epoch 1/1 step 8" in first.stderr and "step/s" in first.stderr  # log and progress
    visible = sorted(n for n in os.listdir(workdir) if not n.startswith("."))  # .lock stays
    assert visible == [
        "checkpoints",
        "config.json",
        "images",
        "metrics.jsonl",
        "run.json",
        "tensorboard",
    ]
    with open(workdir / "config.json") as f:
        assert json.load(f)["latents"] == 2
    with open(workdir / "run.json") as f:
        run_info = json.load(f)
    assert (run_info["image_shape"], run_info["kind"]) == ([28, 28, 1], "single")

    second = run_cli("--workdir", "runs", *SMALL, "--config.num_epochs=2", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "Resumed from the checkpoint at step 8" in second.stderr
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in records] == [(1, 8), (2, 16)]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["16", "8"]
    assert sorted(os.listdir(workdir / "images")) == [
        "reconstructions_epoch_001.png",
        "reconstructions_epoch_002.png",
        "samples_epoch_001.png",
        "samples_epoch_002.png",
    ]


def test_corrupt_checkpoint_is_one_line_without_traceback(tmp_path):
    assert (
        run_cli("--workdir", "runs", *SMALL, "--config.num_epochs=1", cwd=tmp_path).returncode == 0
    )
    manifest = tmp_path / "runs" / "checkpoints" / "8" / "state" / "manifest.ocdbt"
    manifest.write_bytes(manifest.read_bytes()[:3])
    result = run_cli("--workdir", "runs", *SMALL, "--config.num_epochs=2", cwd=tmp_path)
    assert result.returncode == 2
    assert "error: the checkpoint" in result.stderr and "cannot be read" in result.stderr
    assert "Traceback" not in result.stderr and "tensorstore_spec" not in result.stderr
    assert manifest.read_bytes() != b"" and len(manifest.read_bytes()) == 3  # left as it was


def test_a_bundled_config_trains_by_name_from_any_directory(tmp_path):
    """`--config=<name>` is experiments/<name>.py, wherever the command runs (the wheel holds
    the configs as vae_jax.experiments)."""
    result = run_cli(
        "--workdir",
        "runs",
        "--config=autoencoder_mnist",
        *SMALL,
        "--config.num_epochs=1",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "runs" / "config.json") as f:
        assert json.load(f)["objective"] == "ae"  # what experiments/autoencoder_mnist.py sets


def test_an_unknown_config_name_is_one_line_with_the_names(tmp_path):
    result = run_cli("--workdir", "runs", "--config=conv_mnsit", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(
        "error: --config='conv_mnsit' is neither a config file nor the name of one; did you "
        "mean 'conv_mnist'? Choose a file or one of: "
    )
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_both_commands_print_flag_errors_the_same_way(tmp_path):
    for module, flag in (
        ("vae_jax.main", "--heartbeat_timeout_seconds=abc"),
        ("vae_jax.evaluate", "--iwae_samples=abc"),
    ):
        result = run_cli("--workdir", "w", flag, cwd=tmp_path, module=module)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        name, value = flag[2:].split("=")
        assert result.stderr.strip().splitlines()[-1] == (
            f"error: flag --{name}={value}: invalid literal for int() with base 10: '{value}'"
        )
