"""Where vae_jax keeps what it can make again but should not have to: compiled programs.

One user-level directory, shared by every workdir: `$VAE_JAX_CACHE_DIR`, else
`$XDG_CACHE_HOME/vae_jax`, else `~/.cache/vae_jax`. `VAE_JAX_CACHE_DIR=off` (or empty) turns the
caches off. Compiled programs go to `<root>/compilation` through JAX's persistent compilation
cache, so a rerun of the same command (a resume, a smoke test, an evaluation) loads its programs
instead of compiling them; JAX keys each entry by the program, the compile options, the device
and the versions, so a stale entry is never used. A `JAX_COMPILATION_CACHE_DIR` the user set
wins. Nothing here imports JAX until the cache is switched on.
"""

from __future__ import annotations

import os

__all__ = ["CACHE_ENV", "cache_root", "enable_compilation_cache"]

CACHE_ENV = "VAE_JAX_CACHE_DIR"
OFF = ("", "off", "0", "none")


def cache_root(environ=os.environ) -> str | None:
    """vae_jax's cache directory, or None when the user turned the caches off."""
    if CACHE_ENV in environ:
        value = environ[CACHE_ENV].strip()
        return None if value.lower() in OFF else os.path.abspath(os.path.expanduser(value))
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vae_jax")


def enable_compilation_cache(environ=os.environ) -> str | None:
    """Turns on JAX's persistent compilation cache for this process; returns its directory.

    Every program is kept, however quickly it compiled (JAX's default keeps only those over
    1 s): a command compiles a handful, and the small ones add up at start-up. A directory that
    cannot be created leaves the cache off; the run goes on."""
    import jax

    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return environ["JAX_COMPILATION_CACHE_DIR"]  # JAX read it at import
    root = cache_root(environ)
    if root is None:
        return None
    directory = os.path.join(root, "compilation")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return directory
