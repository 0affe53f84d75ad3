"""Command line: `python -m vae_jax.main --workdir runs/ [--config experiments/x.py]
[--config.<field>=<value> ...]`.

Thin on purpose: parse flags, hand over to `train.train_and_evaluate`, and turn the errors a user
can fix into one line on stderr and exit status 2 (no traceback).
"""

from __future__ import annotations

import logging as std_logging
import os
import signal
import sys

import tqdm
from absl import app, flags, logging
from ml_collections import config_flags

from vae_jax.errors import Preempted, VaeJaxError

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.py")

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defined on start, not on import: ml_collections reads the `--config.<field>` overrides
    from sys.argv while defining the flag, and an unknown field raises right there."""
    flags.DEFINE_string("workdir", None, "Directory for config.json, metrics, images, checkpoints.")
    flags.mark_flag_as_required("workdir")
    flags.DEFINE_string(
        "coordinator_address",
        None,
        "host:port of process 0 when several processes (hosts) train together; also read from "
        "JAX_COORDINATOR_ADDRESS.",
    )
    flags.DEFINE_bool(
        "start_fresh",
        False,
        "Move a previous run in --workdir aside (to previous-<time>/) instead of resuming it.",
    )
    flags.DEFINE_integer("num_processes", None, "How many processes train together.")
    flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1.")
    flags.DEFINE_integer(
        "heartbeat_timeout_seconds",
        10,
        "Several processes: a process silent this long is declared dead and the others stop.",
    )
    config_flags.DEFINE_config_file(
        "config",
        _DEFAULT_CONFIG,
        "A config file with get_config(); default: vae_jax/config.py.",
        lock_config=True,
    )


class _QuietLibraries(std_logging.Filter):
    """Drops the INFO chatter of Orbax (a dozen lines per checkpoint) and of JAX's backend probe,
    and asyncio's reports of the orphaned sibling reads of a failed Orbax restore (that failure
    is already reported in one line). Other warnings and errors still show."""

    _NOISY_PATHS = (f"{os.sep}orbax{os.sep}", f"{os.sep}jax{os.sep}_src{os.sep}xla_bridge.py")
    _ORPHANS = ("Task exception was never retrieved", "Future exception was never retrieved")

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.name == "asyncio" and str(record.msg).startswith(self._ORPHANS):
            return False
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


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _one_line(error: BaseException) -> str:
    """ml_collections packs its message, with repr quotes and newlines, into a KeyError."""
    text = str(error.args[0]) if error.args else str(error)
    while (
        isinstance(error, (KeyError, AttributeError))
        and text[:1] in "'\""
        and text[-1:] == text[:1]
    ):
        text = text[1:-1].replace("\\'", "'")
    return "; ".join(
        line.strip() for line in text.replace("\\n", "\n").splitlines() if line.strip()
    )


def _flag_error_message(error: BaseException) -> str:
    """The flag and its value (first line) and the cause (last line), without the traceback that
    ml_collections embeds when a config file raises."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"


def _parse_flags(argv: list[str]) -> list[str]:
    """Flag errors, an override of a config field that does not exist or has the wrong type,
    and a config file that raises all end here as one line instead of a traceback."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        _fail(_flag_error_message(error))
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        _fail(f"invalid --config override: {_one_line(error)}")


def _ignore_closed_event_loop(unraisable) -> None:
    """After a failed Orbax restore, TensorStore's pending callbacks still try to reach the closed
    asyncio loop, and each would print a traceback under the clear error message. Drop exactly
    those; everything else goes to Python's default hook."""
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return
    sys.__unraisablehook__(unraisable)


def quiet_library_logs() -> None:
    """Keeps a command's output to its own lines: see `_QuietLibraries` and
    `_ignore_closed_event_loop`. Also used by `python -m vae_jax.evaluate`."""
    sys.unraisablehook = _ignore_closed_event_loop
    logging.get_absl_handler().addFilter(_QuietLibraries())


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_library_logs()
    absl_handler = logging.get_absl_handler()
    absl_handler.python_handler.stream = _AboveProgressBar()
    # Imported here so that `--help` and flag errors answer before JAX starts.
    from vae_jax import parallel, train

    distributed = (
        FLAGS.coordinator_address
        or FLAGS.num_processes
        or FLAGS.process_id is not None
        or os.environ.get("JAX_COORDINATOR_ADDRESS")
    )
    if distributed:  # before any computation: JAX must see every process's devices
        parallel.initialize_distributed(
            FLAGS.coordinator_address,
            FLAGS.num_processes,
            FLAGS.process_id,
            FLAGS.heartbeat_timeout_seconds,
        )

    try:
        config = FLAGS.config
        config.keys()  # a config file that failed to load raises on first use
    except OSError as error:
        cause = _one_line(error).split("; ")[-1]  # the last line holds the underlying reason
        _fail(f"--config could not be loaded: {cause}")
    try:
        if config.population_size > 1:
            from vae_jax import population  # imports train: only when asked for

            if FLAGS.start_fresh:
                _fail("--start_fresh is not supported for populations yet; use a new --workdir.")
            population.train_population(config, FLAGS.workdir)
        else:
            train.train_and_evaluate(config, FLAGS.workdir, start_fresh=FLAGS.start_fresh)
    except VaeJaxError as error:
        logging.flush()
        _fail(str(error))
    except Preempted as stop:
        logging.flush()
        name = signal.Signals(stop.signum).name
        print(
            f"stopped by {name} at step {stop.step}, with a checkpoint of that step; run the same "
            "command again to continue.",
            file=sys.stderr,
        )
        sys.exit(128 + stop.signum)  # the shell's convention for a signalled process


def run() -> None:
    try:
        _define_flags()
    except flags.Error as error:
        _fail(_flag_error_message(error))
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        _fail(f"invalid --config override: {_one_line(error)}")
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
