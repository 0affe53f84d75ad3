"""What a run leaves in its workdir besides checkpoints: config.json, metrics.jsonl, PNG grids.

Files are written so that a crash never leaves a torn one: whole files by write-then-rename,
metric lines appended and flushed one at a time.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw

from vae_jax.errors import WorkdirError


def prepare_workdir(workdir: str) -> str:
    """Creates the workdir if needed and proves it writable; returns its absolute path."""
    path = os.path.abspath(workdir)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise WorkdirError(
            f"--workdir {workdir!r} cannot be used: {error.strerror or error} "
            f"({error.filename or path}). Give a directory you can write to."
        ) from error
    return path


def write_json_atomic(path: str, value) -> None:
    """Writes `value` as JSON to `path` via a temporary file and a rename."""
    directory = os.path.dirname(path)
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


class MetricsLog:
    """`metrics.jsonl`: one JSON object per finished epoch, in step order."""

    def __init__(self, path: str):
        self.path = path

    def read(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        records = []
        with open(self.path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn last line from a crash: everything after it is rewritten
        return records

    def rewind(self, step: int) -> int:
        """Keeps only the records up to `step` (the restored checkpoint's), and drops a torn last
        line; returns how many records went. The dropped epochs are trained again from that
        checkpoint and logged again, identically."""
        records = self.read()
        kept = [r for r in records if r.get("step", 0) <= step]
        if os.path.exists(self.path):
            with open(self.path) as f:
                if f.read() != "".join(json.dumps(r) + "\n" for r in kept):
                    self._rewrite(kept)
        return len(records) - len(kept)

    def _rewrite(self, records: list[dict]) -> None:
        directory = os.path.dirname(self.path)
        with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(f.name, self.path)

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


def image_grid(images: np.ndarray, columns: int) -> np.ndarray:
    """Tiles (N, H, W, C) images in [0, 1] into one (rows*(H+1)+1, columns*(W+1)+1, C) uint8
    image with 1-pixel gray borders; missing tiles stay gray."""
    count, height, width, channels = images.shape
    rows = max(1, math.ceil(count / columns))
    grid = np.full((rows * (height + 1) + 1, columns * (width + 1) + 1, channels), 128, np.uint8)
    pixels = np.clip(np.rint(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = 1 + row * (height + 1), 1 + column * (width + 1)
        grid[top : top + height, left : left + width] = pixels[index]
    return grid


def save_png(path: str, grid: np.ndarray) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    with tempfile.NamedTemporaryFile(dir=directory, delete=False, suffix=".png") as f:
        image.save(f, format="PNG")
    os.replace(f.name, path)


def save_reconstructions(path: str, inputs: np.ndarray, reconstructions: np.ndarray) -> None:
    """Each input followed by its reconstruction, in pairs along rows of 8 pairs."""
    pairs = np.stack([inputs, reconstructions], axis=1).reshape((-1, *inputs.shape[1:]))
    save_png(path, image_grid(pairs, columns=16))


def save_samples(path: str, samples: np.ndarray) -> None:
    save_png(path, image_grid(samples, columns=8))


# Ten well-separated colours (Tableau 10), cycled for more classes.
_PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def latent_scatter(means: np.ndarray, labels: np.ndarray, size: int = 320) -> np.ndarray:
    """An RGB scatter plot of the first two latent dimensions, a dot per example coloured by its
    label, on a square symmetric about the origin; with one latent, the second axis is zero."""
    points = np.asarray(means, np.float64)[:, :2]
    if points.shape[1] == 1:
        points = np.concatenate([points, np.zeros_like(points)], axis=1)
    extent = max(float(np.percentile(np.abs(points), 99)) if len(points) else 1.0, 1e-6) * 1.05
    margin = 8
    pixels = np.clip((points / extent + 1) / 2 * (size - 2 * margin) + margin, 0, size - 1)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    middle = size // 2
    draw.line([(margin, middle), (size - margin, middle)], fill=(210, 210, 210))
    draw.line([(middle, margin), (middle, size - margin)], fill=(210, 210, 210))
    for (x, y), label in zip(pixels, np.asarray(labels)):
        colour = _PALETTE[int(label) % len(_PALETTE)]
        draw.ellipse([x - 2, size - 1 - y - 2, x + 2, size - 1 - y + 2], fill=colour)
    return np.asarray(canvas)


def save_latent_scatter(path: str, means: np.ndarray, labels: np.ndarray) -> None:
    save_png(path, latent_scatter(means, labels))


class WorkdirLock:
    """An exclusive lock on a workdir for the length of a run, so that two runs never
    interleave their checkpoints and metrics. It is an `flock` on `workdir/.lock`: the system
    releases it when the process ends, however it ends, so a killed run never leaves it stale."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, ".lock")
        self._file = None

    def __enter__(self):
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise WorkdirError(
                f"--workdir {self.workdir!r} is in use by another run (process {holder}); wait "
                "for it to finish, or use another workdir."
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()
        return self

    def __exit__(self, *exc_info) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def move_run_aside(workdir: str) -> str | None:
    """Moves a previous run's outputs into `workdir/previous-<UTC time>/` (nothing is deleted);
    returns that directory, or None when there was nothing to move."""
    names = [
        n
        for n in ("checkpoints", "metrics.jsonl", "images", "config.json")
        if os.path.exists(os.path.join(workdir, n))
    ]
    if not names:
        return None
    destination = os.path.join(workdir, time.strftime("previous-%Y%m%dT%H%M%S", time.gmtime()))
    os.makedirs(destination)
    for name in names:
        os.rename(os.path.join(workdir, name), os.path.join(destination, name))
    return destination
