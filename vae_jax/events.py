"""TensorBoard event files beside metrics.jsonl, written without TensorFlow (tensorboardX).

`metrics.jsonl` stays the record a resume trusts; the event files are a view of it for
`tensorboard --logdir runs/`. Every start rebuilds them from the (rewound) metrics log and the
epoch pictures on disk, then removes the older files: a run killed and resumed, or an epoch
that `max_steps` cut and a later run finished, shows one clean curve, never the points a
killed run logged past its checkpoint. Per epoch they gain every number of the record as a
scalar at the record's step (`train/elbo`, `test/elbo`, `speed/examples_per_second`, ...), the
epoch's reconstruction, sample and latent grids, and once the config as hparams (TensorBoard's
HPARAMS tab compares the members of a sweep). Each population member is its own run,
`tensorboard/<k>-seed<s>-<weight><value>`, so a β sweep is curve against curve.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import secrets

import numpy as np
from PIL import Image

__all__ = ["EVENTS_DIR", "EventLog", "scalar_tag", "hparams"]

# checkpoint.DETAILS: details of failures the run reports in one line, kept in log.txt.
_DETAILS = logging.getLogger("vae_jax.details")

EVENTS_DIR = "tensorboard"
PICTURES = ("reconstructions", "samples", "latents")
_NOT_SCALARS = ("epoch", "step")


def scalar_tag(name: str) -> str:
    """'train_elbo' -> 'train/elbo': TensorBoard groups a tag's first part into one section."""
    if name in ("train_seconds", "examples_per_second"):
        return f"speed/{name}"
    split, _, rest = name.partition("_")
    return f"{split}/{rest}" if rest else name


def hparams(config: dict) -> dict:
    """The config's fields as TensorBoard holds hparams: numbers, strings and booleans (lists and
    other values as their JSON text)."""
    out = {}
    for name, value in sorted(config.items()):
        if isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


class EventLog:
    """The event files of one run (one model, or one population member).

    Args:
      directory: the run's event directory (created).
      config: the member's resolved config, as a dict, for the hparams.
      images_dir: where the epoch pictures are (`images/<kind>_epoch_NNN.png`), or None.
    """

    def __init__(self, directory: str, config: dict, images_dir: str | None):
        from tensorboardX import SummaryWriter  # the writer only where a run writes events

        self.directory, self.images_dir = directory, images_dir
        os.makedirs(directory, exist_ok=True)
        self._older = set(glob.glob(os.path.join(directory, "events.out.tfevents.*")))
        # tensorboardX names a file by the second and the host only: two writers in one second
        # (a run, then its evaluation) would share a file, and a rebuild would remove its own.
        suffix = f".{os.getpid()}.{secrets.token_hex(4)}"
        self._writer = SummaryWriter(logdir=directory, flush_secs=3600, filename_suffix=suffix)
        self._config = hparams(config)
        self._hparams_written = False

    def rebuild(self, records: list[dict], evaluation: dict | None = None) -> None:
        """Writes the run so far, from its metrics log (and `eval.json`'s figures), and removes
        the older event files."""
        for record in records:
            self.add(record, flush=False)
        if evaluation:
            self.add_evaluation(evaluation, flush=False)
        self._writer.flush()
        for path in self._older:
            os.remove(path)
        self._older = set()

    def add(self, record: dict, flush: bool = True) -> None:
        """One epoch's record and pictures; the hparams with the first."""
        step = int(record["step"])
        for name, value in record.items():
            if name not in _NOT_SCALARS and isinstance(value, (int, float)):
                self._writer.add_scalar(scalar_tag(name), float(value), step)
        self._add_pictures(int(record["epoch"]), step)
        if not self._hparams_written:
            self._add_hparams(record)
        if flush:
            self._writer.flush()

    def add_evaluation(self, evaluation: dict, flush: bool = True) -> None:
        """`python -m vae_jax.evaluate`'s figures (eval.json) as `eval/<name>` scalars at the step
        of the checkpoint it measured."""
        step = int(evaluation.get("checkpoint_step", 0))
        for name, value in sorted(evaluation.get("metrics", {}).items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(f"eval/{name}", float(value), step)
        if flush:
            self._writer.flush()

    def _add_pictures(self, epoch: int, step: int) -> None:
        if self.images_dir is None:
            return
        for kind in PICTURES:
            path = os.path.join(self.images_dir, f"{kind}_epoch_{epoch:03d}.png")
            if os.path.exists(path):
                pixels = np.asarray(Image.open(path).convert("RGB"))
                self._writer.add_image(f"pictures/{kind}", pixels, step, dataformats="HWC")

    def _add_hparams(self, record: dict) -> None:
        from tensorboardX.summary import hparams as hparams_summary

        metrics = {
            scalar_tag(n): 0.0
            for n, v in record.items()
            if n.startswith(("train_", "test_", "valid_"))
        }
        for summary in hparams_summary(self._config, metrics):
            self._writer.file_writer.add_summary(summary)
        self._hparams_written = True

    def close(self) -> None:
        """Closes the files. A last flush that fails (a full disk) is logged, not raised over
        the run's own error: the next start rebuilds the event files from metrics.jsonl."""
        try:
            self._writer.close()
        except OSError as error:
            _DETAILS.warning("TensorBoard event files not flushed when closed: %s", error)
