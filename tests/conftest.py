"""Shared helpers: a small, fast config on a prefix of the real bundled data."""

import hashlib
import os
import subprocess
import sys

import pytest

# Each `train_and_evaluate` traces fresh closures, so JAX's in-memory cache never serves one run's
# programs to the next, and most tests train several small runs of the same shapes. JAX's
# persistent compilation cache turns those repeats into loads, in this process and in the
# `python -m vae_jax...` subprocesses the tests start (they inherit the environment). Entries are
# keyed by the program, the compile options and the versions, so a stale one is never used; they
# live in the git-ignored .pytest_cache. Set before JAX is imported: JAX reads these at import.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(__file__)), ".pytest_cache", "jax_compilation"),
)
# vae_jax's own caches (decoded image folders) stay out of the user's home too.
os.environ.setdefault(
    "VAE_JAX_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(__file__)), ".pytest_cache", "vae_jax"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# From a fresh clone (CI) nothing is cached and compiling is most of the suite's time: LLVM's
# optimisation of the machine code XLA:CPU generates. Level 0 cuts a cold run by about a third
# and leaves a warm one as it was (docs/development.md): the tests' programs are small, and
# speed is measured by benchmarks/, never here. XLA's own passes (fusion,
# layouts, the convolution forms tests/test_models.py reads from the compiled HLO) run as usual.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

from vae_jax.config import get_config

TIMING_FIELDS = ("train_seconds", "examples_per_second")

# Figures that batched (vmapped) or differently split matrix products may round differently.
ELBO_FIELDS = (
    "train_elbo",
    "train_kl",
    "train_recon",
    "train_loss",
    "test_elbo",
    "test_kl",
    "test_recon",
)


def forced_devices_env(devices: int = 1, **extra) -> dict:
    """The environment of a subprocess that sees `devices` forced CPU devices, trains alone
    (no coordinator or cluster variables of this shell), and keeps the suite's flags."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    ).strip()
    for name in list(env):
        if name.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_")):
            del env[name]
    env.update(extra)
    return env


# A small conv model on a prefix of MNIST: the step loop's tests (scan, host and 'auto').
SMALL_CONV = {
    "model": "conv",
    "conv_features": (8, 16),
    "conv_hidden": 32,
    "max_train_examples": 256,
    "max_eval_examples": 100,
    "eval_batch_size": 100,
    "batch_size": 64,
    "num_image_examples": 0,
}


def small_config(**overrides):
    """The default config shrunk to train in about a second per epoch on a 2-core CPU."""
    config = get_config()
    config.max_train_examples = 1024
    config.max_eval_examples = 500
    config.batch_size = 128
    config.hidden_sizes = (64,)
    config.latents = 4
    config.num_epochs = 2
    config.eval_batch_size = 250
    config.num_image_examples = 8
    config.progress_bar = False
    # 'auto' measures both loops and may pick either, whose last bits differ; the suite's
    # separate runs compare exactly, so they scan (tests/test_step_loops.py tests 'auto').
    config.step_loop = "scan"
    for field, value in overrides.items():
        config[field] = value
    return config


def run_cli(*args, cwd, module="vae_jax.main"):
    """`python -m MODULE ARGS` in `cwd`, its output captured; never raises on failure."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def without_timings(records):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def snapshot(directory) -> dict:
    """Relative path -> sha256 of every file below `directory`."""
    digests = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def straight_and_resumed(config, tmp_path):
    """The records of `config` trained straight through, and trained for one epoch less then
    resumed to the end in the same workdir (timings dropped), for equality tests."""
    from vae_jax import train

    straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
    epochs = config.num_epochs
    config.num_epochs = epochs - 1
    train.train_and_evaluate(config, str(tmp_path / "resumed"))
    config.num_epochs = epochs
    resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
    return without_timings(straight), without_timings(resumed)


@pytest.fixture
def make_config():
    return small_config
