"""Decoded image folders kept as uint8 arrays, so a folder is decoded once, not at every start.

Decoding is the slow part of an `images:` data set (Pillow takes about a millisecond per JPEG);
every start, resume and evaluation of a run would pay it again. The arrays go to
`<cache root>/images/<key>.npz` (`caches.cache_root`: `VAE_JAX_CACHE_DIR`, else
`$XDG_CACHE_HOME/vae_jax`, else `~/.cache/vae_jax`; `VAE_JAX_CACHE_DIR=off` turns caching off).
The key hashes the folder's absolute path, every file's relative path, size, modification time
and label, and the image size, so adding, removing, replacing or touching a file, or another
`image_size`, makes a new entry. A cache that cannot be written (read-only, full disk) costs
one warning; the run goes on with the decoded arrays.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from absl import logging

from vae_jax import caches
from vae_jax.atomic import atomic_write

__all__ = ["folder_key", "load", "store", "entry_path"]

FORMAT = 1  # bump when the decoded arrays would change for the same files


def folder_key(root: Path, files: dict, image_size: int) -> str:
    """A digest of everything the decoded arrays depend on (see the module docstring)."""
    digest = hashlib.sha256(f"v{FORMAT} {root.resolve()} {image_size}\n".encode())
    for split in sorted(files):
        for path, label in files[split]:
            stat = path.stat()
            relative = path.relative_to(root).as_posix()
            digest.update(
                f"{split}\0{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n".encode()
            )
    return digest.hexdigest()[:32]


def entry_path(key: str) -> str | None:
    root = caches.cache_root()
    return None if root is None else os.path.join(root, "images", f"{key}.npz")


def load(key: str) -> dict[str, np.ndarray] | None:
    """The cached splits ('train', 'test', ...) of `key`, or None."""
    path = entry_path(key)
    if path is None or not os.path.exists(path):
        return None
    try:
        with np.load(path) as stored:
            return {name: stored[name] for name in stored.files}
    except (OSError, ValueError, KeyError):  # a damaged entry is decoded again
        return None


def store(key: str, splits: dict[str, np.ndarray]) -> None:
    path = entry_path(key)
    if path is None:
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_write(path, "wb") as f:
            np.savez(f, **splits)
    except OSError as error:
        logging.warning("Could not cache the decoded images in %s (%s); going on.", path, error)
