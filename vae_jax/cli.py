"""What both commands (`vae-jax-train` or `python -m vae_jax.main`, `vae-jax-evaluate` or
`python -m vae_jax.evaluate`) share: flag parsing, one-line errors, and a terminal kept to the
run's own lines.

A problem the user can fix ends a command as `error: <one sentence>` on stderr with exit status 2,
never a traceback. Libraries' chatter (Orbax's per-checkpoint INFO lines, its background threads'
tracebacks when a disk fills up, TensorStore's orphaned callbacks) goes to `<workdir>/log.txt`
when a workdir is known, and not to the terminal.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import signal
import sys
import threading

import tqdm
from absl import flags, logging

from vae_jax.errors import Preempted, VaeJaxError

__all__ = [
    "LOG_FILE",
    "define_workdir_flag",
    "define_plugin_flag",
    "flag_values",
    "import_plugins",
    "fail",
    "one_line",
    "flag_error_message",
    "parse_flags",
    "quiet_library_logs",
    "log_to_workdir",
    "user_errors",
]

LOG_FILE = "log.txt"  # in the workdir: library messages kept off the terminal

FLAGS = flags.FLAGS


def define_workdir_flag(help_text: str) -> None:
    """`--workdir`, required by both commands."""
    flags.DEFINE_string("workdir", None, help_text)
    flags.mark_flag_as_required("workdir")


def define_plugin_flag() -> None:
    """`--plugin`, repeatable; `import_plugins` reads it from argv before any flag is parsed."""
    flags.DEFINE_multi_string(
        "plugin",
        [],
        "A module name or .py path that registers objectives, models or data sets (vae_jax."
        "register_*); imported before the config is read. Repeatable. A workdir remembers its "
        "plugins, so resuming or evaluating it needs none.",
    )


def flag_values(argv: list[str], name: str) -> list[str]:
    """The values given for `--name` in argv (as `--name=value` or `--name value`)."""
    values = []
    for index, argument in enumerate(argv):
        if argument.startswith(f"--{name}="):
            values.append(argument.split("=", 1)[1])
        elif argument == f"--{name}" and index + 1 < len(argv):
            values.append(argv[index + 1])
    return values


def import_plugins(argv: list[str]) -> None:
    """Imports the `--plugin`s of argv, then those the `--workdir`'s run.json records, before
    the config is parsed; a plugin that cannot be imported ends the command in one line."""
    from vae_jax import plugins
    from vae_jax import workdir as workdir_lib
    from vae_jax.errors import ConfigError

    try:
        plugins.import_all(flag_values(argv, "plugin"))
        for workdir in flag_values(argv, "workdir")[-1:]:
            workdir_lib.import_recorded_plugins(os.path.abspath(os.path.expanduser(workdir)))
    except ConfigError as error:
        fail(str(error))


def fail(message: str) -> None:
    """Prints `error: message` and exits with status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def one_line(error: BaseException) -> str:
    """An exception's message on one line; ml_collections packs its message, with repr quotes
    and newlines, into a KeyError."""
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


def flag_error_message(error: BaseException) -> str:
    """The flag and its value (first line) and the cause (last line), without the traceback that
    ml_collections embeds when a config file raises."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"


def parse_flags(argv: list[str]) -> list[str]:
    """Flag errors, an override of a config field that does not exist or has the wrong type,
    and a config file that raises or imports what is not installed all end here as one line
    instead of a traceback."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        fail(flag_error_message(error))
    except ImportError as error:
        fail(f"--config could not be loaded: {one_line(error)}")
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        fail(f"invalid --config override: {one_line(error)}")


def _is_library_record(record: std_logging.LogRecord) -> bool:
    """Orbax's records, JAX's backend probe's and distributed start-up's, and the details of
    failures vae_jax has already reported in one line: never what a user of vae_jax acts on."""
    noisy = (
        f"{os.sep}orbax{os.sep}",
        f"{os.sep}jax{os.sep}_src{os.sep}xla_bridge.py",
        f"{os.sep}jax{os.sep}_src{os.sep}distributed.py",  # joining several processes
    )
    return (
        any(part in record.pathname for part in noisy)
        or record.name.startswith("orbax")
        or record.name == "vae_jax.details"  # checkpoint.DETAILS
    )


class _TerminalFilter(std_logging.Filter):
    """Keeps library records and asyncio's reports of orphaned Orbax reads off the terminal:
    each failure they describe is reported by vae_jax itself in one line."""

    _ORPHANS = ("Task exception was never retrieved", "Future exception was never retrieved")

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.name == "asyncio" and str(record.msg).startswith(self._ORPHANS):
            return False
        return not _is_library_record(record)


class _LibraryFile(std_logging.FileHandler):
    """The workdir's log.txt: library warnings and errors in full, for a post-mortem. A write
    that fails (the full disk being reported) is dropped silently instead of printing a logging
    error."""

    def __init__(self, path: str):
        super().__init__(path, delay=True)
        self.setLevel(std_logging.WARNING)  # their INFO lines say nothing a post-mortem needs
        self.addFilter(lambda record: _is_library_record(record) or record.name == "asyncio")
        self.setFormatter(std_logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def handleError(self, record) -> None:
        del record


class _AboveProgressBar:
    """A stream that prints log lines above the progress bar instead of through it."""

    def write(self, text: str) -> None:
        tqdm.tqdm.write(text, end="", file=sys.stderr)

    def flush(self) -> None:
        sys.stderr.flush()

    def close(self) -> None:
        """sys.stderr stays open: logging closes its handlers' streams at exit."""


def _quiet_unraisable(unraisable) -> None:
    """After a failed Orbax restore, TensorStore's pending callbacks still try to reach the closed
    asyncio loop, and each would print a traceback under the clear error message: dropped. On a
    full disk tensorboardX's exit hook flushes its event file once more and fails again: logged
    to log.txt. Everything else goes to Python's default hook."""
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return
    in_writer = f"{os.sep}tensorboardX{os.sep}" in _files(unraisable.exc_traceback)
    if isinstance(error, OSError) and in_writer:
        std_logging.getLogger("vae_jax.details").warning("TensorBoard at exit: %s", error)
        return
    sys.__unraisablehook__(unraisable)


def _files(trace) -> str:
    """The source files of a traceback's frames, one per line."""
    names = []
    while trace is not None:
        names.append(trace.tb_frame.f_code.co_filename)
        trace = trace.tb_next
    return "\n".join(names)


def _library_thread_excepthook(args) -> None:
    """An exception that ends one of Orbax's background threads (a save that hit a full disk) is
    re-raised to the main thread by Orbax itself, and tensorboardX's writer thread fails at exit
    after a full disk stopped its file: their tracebacks go to the log, not the terminal. Other
    threads' exceptions print as usual."""
    files = _files(args.exc_traceback)
    if any(f"{os.sep}{library}{os.sep}" in files for library in ("orbax", "tensorboardX")):
        std_logging.getLogger("vae_jax.details").error(
            "Background thread %s failed",
            getattr(args.thread, "name", "?"),
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )
        return
    sys.__excepthook__(args.exc_type, args.exc_value, args.exc_traceback)


def quiet_library_logs() -> None:
    """Keeps a command's terminal output to its own lines (see the module docstring), and prints
    log lines above the progress bar."""
    sys.unraisablehook = _quiet_unraisable
    threading.excepthook = _library_thread_excepthook
    handler = logging.get_absl_handler()
    handler.addFilter(_TerminalFilter())
    handler.python_handler.stream = _AboveProgressBar()
    for name in ("asyncio", "orbax"):
        for existing in std_logging.getLogger(name).handlers:
            existing.addFilter(_TerminalFilter())


def log_to_workdir(workdir: str) -> None:
    """Sends library records to `<workdir>/log.txt`, opened on the first record (by then the
    run has created the workdir; a record it cannot write is dropped)."""
    std_logging.getLogger().addHandler(
        _LibraryFile(os.path.join(os.path.abspath(workdir), LOG_FILE))
    )


@contextlib.contextmanager
def user_errors():
    """Turns a `VaeJaxError` into its one line and exit status 2, and `Preempted` into the line
    that says how to continue and the shell's status for the signal (128 + its number)."""
    try:
        yield
    except VaeJaxError as error:
        logging.flush()
        fail(str(error))
    except Preempted as stop:
        logging.flush()
        name = signal.Signals(stop.signum).name
        print(
            f"stopped by {name} at step {stop.step}, with a checkpoint of that step; run the same "
            "command again to continue.",
            file=sys.stderr,
        )
        sys.exit(128 + stop.signum)
