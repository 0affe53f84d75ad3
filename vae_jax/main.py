"""Command line: `python -m vae_jax.main --workdir runs/ [--config experiments/x.py]
[--config.<field>=<value> ...]`.

Thin on purpose: parse flags, hand over to `train.train_and_evaluate`, and turn the errors a user
can fix into one line on stderr and exit status 2 (no traceback).
"""

from __future__ import annotations

import logging as std_logging
import os
import sys

import tqdm
from absl import app, flags, logging
from ml_collections import config_flags

from vae_jax.errors import VaeJaxError

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.py")

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for config.json, metrics, images, checkpoints.")
flags.mark_flag_as_required("workdir")
config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "A config file with get_config(); default: vae_jax/config.py.",
    lock_config=True,
)


class _QuietLibraries(std_logging.Filter):
    """Drops the INFO chatter of Orbax (a dozen lines per checkpoint) and of JAX's backend probe;
    their warnings and errors still show."""

    _NOISY_PATHS = (f"{os.sep}orbax{os.sep}", f"{os.sep}jax{os.sep}_src{os.sep}xla_bridge.py")

    def filter(self, record: std_logging.LogRecord) -> bool:
        noisy = any(part in record.pathname for part in self._NOISY_PATHS)
        return record.levelno >= std_logging.WARNING or not noisy


class _AboveProgressBar:
    """A stream that prints log lines above the progress bar instead of through it."""

    def write(self, text: str) -> None:
        tqdm.tqdm.write(text, end="", file=sys.stderr)

    def flush(self) -> None:
        sys.stderr.flush()

    def close(self) -> None:
        """sys.stderr stays open: logging closes its handlers' streams at exit."""


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    absl_handler = logging.get_absl_handler()
    absl_handler.addFilter(_QuietLibraries())
    absl_handler.python_handler.stream = _AboveProgressBar()
    # Imported here so that `--help` and flag errors answer before JAX starts.
    from vae_jax import train

    try:
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except VaeJaxError as error:
        logging.flush()
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
