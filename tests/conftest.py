"""Shared helpers: a small, fast config on a prefix of the real bundled data."""

import subprocess
import sys

import pytest

from vae_jax.config import get_config

TIMING_FIELDS = ("train_seconds", "examples_per_second")


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
    for field, value in overrides.items():
        config[field] = value
    return config


def run_cli(*args, cwd):
    """`python -m vae_jax.main ARGS` in `cwd`, its output captured; never raises on failure."""
    return subprocess.run(
        [sys.executable, "-m", "vae_jax.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def without_timings(records):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


@pytest.fixture
def make_config():
    return small_config
