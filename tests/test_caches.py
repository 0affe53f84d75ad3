"""The user-level cache directory and JAX's persistent compilation cache (caches.py)."""

import os
import subprocess
import sys

from vae_jax import caches


def test_the_cache_root_follows_the_users_settings(tmp_path):
    home = os.path.expanduser("~")
    assert caches.cache_root({}) == os.path.join(home, ".cache", "vae_jax")
    assert caches.cache_root({"XDG_CACHE_HOME": "/x"}) == "/x/vae_jax"
    assert caches.cache_root({caches.CACHE_ENV: str(tmp_path)}) == str(tmp_path)
    for off in ("off", "", "0"):
        assert caches.cache_root({caches.CACHE_ENV: off, "XDG_CACHE_HOME": "/x"}) is None


def test_a_command_fills_the_compilation_cache_and_a_rerun_loads_from_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env[caches.CACHE_ENV] = str(tmp_path / "cache")
    args = [
        sys.executable,
        "-m",
        "vae_jax.main",
        "--config.max_train_examples=512",
        "--config.max_eval_examples=200",
        "--config.hidden_sizes=(32,)",
        "--config.num_epochs=1",
        "--config.progress_bar=False",
        "--config.step_loop=scan",
    ]
    directory = tmp_path / "cache" / "compilation"
    first = subprocess.run(
        [*args, f"--workdir={tmp_path / 'a'}"], env=env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr[-2000:]
    entries = set(os.listdir(directory))
    assert len(entries) >= 3  # init, the epoch, evaluation, pictures
    second = subprocess.run(
        [*args, f"--workdir={tmp_path / 'b'}"], env=env, capture_output=True, text=True
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert set(os.listdir(directory)) == entries  # every program came from the cache

    env[caches.CACHE_ENV] = "off"
    off = subprocess.run(
        [*args, f"--workdir={tmp_path / 'c'}"], env=env, capture_output=True, text=True
    )
    assert off.returncode == 0 and set(os.listdir(directory)) == entries
