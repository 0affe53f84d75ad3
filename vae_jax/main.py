"""Command line: `vae-jax-train` or `python -m vae_jax.main --workdir runs/
[--config=<name> | --config experiments/x.py] [--config.<field>=<value> ...]`.

Thin on purpose: parse flags, hand over to `train.train_and_evaluate` (or
`population.train_population`), and let `cli` turn the errors a user can fix into one line on
stderr and exit status 2 (no traceback). A config file, a config name and every value of the
config are checked before JAX is imported, so a typo is answered at once.
"""

from __future__ import annotations

import errno
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from vae_jax import cli, experiments, launch
from vae_jax import config as config_lib

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.py")

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defined on start, not on import: ml_collections reads the `--config.<field>` overrides
    from sys.argv while defining the flag, and an unknown field raises right there."""
    cli.define_workdir_flag("Directory for config.json, metrics, images, checkpoints.")
    cli.define_plugin_flag()
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
    flags.DEFINE_integer(
        "initialization_timeout_seconds",
        300,
        "Several processes: how long each waits for all of them to join before it gives up.",
    )
    flags.DEFINE_enum(
        "distributed",
        "auto",
        ["auto", "on", "off"],
        "Several processes: 'auto' joins them when the flags above, JAX_COORDINATOR_ADDRESS, or "
        "a SLURM or Open MPI job of several tasks say so; 'on' always asks "
        "jax.distributed.initialize() (a Cloud TPU pod); 'off' trains alone.",
    )
    flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1.")
    flags.DEFINE_integer(
        "heartbeat_timeout_seconds",
        10,
        "Several processes: a process silent this long is declared dead and the others stop.",
    )
    config_flags.DEFINE_config_file(
        "config",
        _DEFAULT_CONFIG,
        "A config file with get_config(), or the name of one that comes with vae_jax ("
        f"experiments/: {', '.join(experiments.names()) or 'none here'}); default: "
        "vae_jax/config.py.",
        lock_config=True,
    )


def _several_processes() -> bool:
    if FLAGS.distributed != "auto":
        return FLAGS.distributed == "on"
    return bool(
        FLAGS.coordinator_address
        or FLAGS.num_processes
        or FLAGS.process_id is not None
        or os.environ.get("JAX_COORDINATOR_ADDRESS")
        or launch.cluster_environment()
    )


def _load_config():
    try:
        config = FLAGS.config
        config.keys()  # a config file that failed to load raises on first use
    except OSError as error:
        cause = cli.one_line(error).split("; ")[-1]  # the last line holds the underlying reason
        cli.fail(f"--config could not be loaded: {cause}")
    return config


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    several = _several_processes()
    if several and not launch.is_worker():  # a watcher that explains a lost peer in one line
        hint = launch.process_count_hint(FLAGS.num_processes)
        sys.exit(launch.supervise(sys.argv, FLAGS.workdir, FLAGS.process_id, hint))
    if not several:
        launch.release_stops()
    else:
        launch.keep_crash_reports_in_log()
    cli.quiet_library_logs()
    # Imported here so that `--help` and flag errors answer before JAX starts.
    from vae_jax import caches, parallel, population, train

    caches.enable_compilation_cache()

    config = _load_config()
    with cli.user_errors():
        if several:  # before any computation: JAX must see every process's devices
            parallel.initialize_distributed(
                FLAGS.coordinator_address,
                FLAGS.num_processes,
                FLAGS.process_id,
                FLAGS.heartbeat_timeout_seconds,
                initialization_timeout_seconds=FLAGS.initialization_timeout_seconds,
            )
            if launch.is_worker():
                launch.pass_on_early_stops()
            parallel.check_processes_agree(config)
        train_fn = (
            population.train_population if config.population_size > 1 else train.train_and_evaluate
        )
        cli.log_to_workdir(FLAGS.workdir)
        train_fn(config, FLAGS.workdir, start_fresh=FLAGS.start_fresh)


def config_file(value: str) -> str:
    """The config file that `--config=value` means. A bare name (no directory, no `.py`) that is
    no file here is the experiments/ file of that name, so that `--config=burda_vae` works from
    any directory and from a wheel; anything else is a path, kept. ml_collections' `:<argument>`
    suffix stays. An unknown name, or a missing file, ends the command in one line (with the
    closest name) before JAX is imported."""
    file, colon, argument = value.partition(":")
    names = experiments.names()
    if file.isidentifier() and not os.path.exists(file):
        if file not in names:
            hint = config_lib.did_you_mean(file, names) or "."
            cli.fail(
                f"--config={file!r} is neither a config file nor the name of one{hint} Choose "
                f"a file or one of: {', '.join(names) or 'none here'}."
            )
        return f"{experiments.path(file)}{colon}{argument}"
    if file and not os.path.exists(file):
        stem = os.path.splitext(os.path.basename(file))[0]
        hint = (
            f"; for the copy that comes with vae_jax, give --config={stem}" if stem in names else ""
        )
        missing = f"[Errno {errno.ENOENT}] {os.strerror(errno.ENOENT)}: {file!r}"
        cli.fail(f"--config could not be loaded: {missing}{hint}")
    return value


def resolve_config_names(argv: list[str]) -> list[str]:
    """argv with each `--config` value (`--config=value` or `--config value`) replaced by
    `config_file(value)`, before the config flag reads it."""
    resolved = list(argv)
    for index, argument in enumerate(argv):
        if argument.startswith("--config="):
            resolved[index] = f"--config={config_file(argument.split('=', 1)[1])}"
        elif argument == "--config" and index + 1 < len(argv):
            resolved[index + 1] = config_file(argv[index + 1])
    return resolved


def _parse_and_check(argv: list[str]) -> list[str]:
    """The flags, then the config's values: a mistyped value (`--config.dataset=binarised_mnist`)
    is refused here, before `main` imports JAX, in the words `train` would refuse it with."""
    remaining = cli.parse_flags(argv)
    with cli.user_errors():
        config_lib.validate_config(_load_config())
    return remaining


def run() -> None:
    """The `vae-jax-train` command (and `python -m vae_jax.main`)."""
    launch.hold_stops()
    if launch.is_worker():
        launch.become_worker()
    cli.import_plugins(sys.argv)  # before the config flag reads its --config.<field> overrides
    sys.argv[:] = resolve_config_names(sys.argv)  # ml_collections reads sys.argv itself
    try:
        _define_flags()
    except flags.Error as error:
        cli.fail(cli.flag_error_message(error))
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        cli.fail(f"invalid --config override: {cli.one_line(error)}")
    app.run(main, flags_parser=_parse_and_check)


if __name__ == "__main__":
    run()
