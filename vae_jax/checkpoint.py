"""Orbax checkpoints of the train state, with the config they were trained with.

Each checkpoint `checkpoints/<step>/` holds two items: `state` (the train state; its typed PRNG
key stored as raw key data) and `meta` (JSON: the resolved config). Orbax writes each checkpoint
to a temporary directory and renames it when complete, so a partial write is never listed.

Resuming refuses, with the fields named, a checkpoint whose config differs in anything but
`config.RESUME_SAFE_FIELDS` or settings that neither run's objective reads
(`config.objective_fields()`), and reports a checkpoint it cannot read instead of training over it.
Nothing in the workdir is changed by a refused resume.
"""

from __future__ import annotations

import dataclasses
import logging as std_logging
import os
import time
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from vae_jax import config as config_lib
from vae_jax.errors import WorkdirError

# Failures already reported to the user as one WorkdirError (a save in flight that hit the same
# full disk): their details go to this logger, which the commands write to the workdir's log.txt
# and keep off the terminal (`cli`).
DETAILS = std_logging.getLogger("vae_jax.details")


def to_storable(state):
    """The train state as Orbax stores it: arrays of numbers, the typed key as its raw key data
    (what a checkpoint's `state` item holds)."""
    return state.replace(key=jax.random.key_data(state.key))


def from_storable(stored, like):
    """`to_storable` undone: the key wrapped again with `like`'s key implementation."""
    return stored.replace(
        key=jax.random.wrap_key_data(stored.key, impl=jax.random.key_impl(like.key))
    )


def _path_name(path) -> str:
    """'opt_state/0/mu/params/...': the same whether a node is a dataclass, a namedtuple or the
    dict that Orbax's metadata makes of it."""
    return "/".join(
        str(getattr(entry, "name", getattr(entry, "key", getattr(entry, "idx", entry))))
        for entry in path
    )


def _shapes(tree) -> dict:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {_path_name(path): tuple(getattr(leaf, "shape", ())) for path, leaf in leaves}


def _first_line(error: BaseException, limit: int = 300) -> str:
    """The gist of a storage error: its first line, without TensorStore's spec dump."""
    lines = str(error).strip().splitlines()
    text = (lines[0] if lines else "").split(" [tensorstore_spec")[0]
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}"


class CheckpointStore:
    """Saves and restores train states under `directory` (created on first save)."""

    def __init__(self, directory: str, max_to_keep: int):
        self.directory = os.path.abspath(directory)
        self.max_to_keep = max_to_keep
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=False),
            # Named up front so that metadata can be read before anything is restored or saved.
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def complete_steps(self) -> list[int]:
        """The steps of the checkpoints complete on disk, oldest first, once any save in flight
        has finished or failed: Orbax gives a checkpoint its plain step name only once every
        file of it is written."""
        self.settle()
        if not os.path.isdir(self.directory):
            return []
        return sorted(int(name) for name in os.listdir(self.directory) if name.isdigit())

    def _read(self, step: int, initial_state, config) -> tuple[Any, dict]:
        """Restores checkpoint `step`; OSError-like failures surface as `_Unreadable`."""
        where = os.path.join(self.directory, str(step))
        try:
            meta = self._manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            ).meta
            saved_config = meta["config"]
        except Exception as error:
            raise _Unreadable(step, error) from error
        differences = config_lib.resume_incompatibilities(saved_config, config)
        if differences:
            raise WorkdirError(
                f"the workdir's checkpoint {where} was trained with another config, so it cannot be "
                f"resumed: {'; '.join(differences)}. Use a new --workdir, the checkpoint's values, "
                "or --start_fresh to move the old run aside."
            )
        target = to_storable(initial_state)
        try:
            saved_tree = self._manager.item_metadata(step)["state"].tree
            saved_shapes = _shapes(saved_tree)
        except Exception:  # noqa: BLE001 - a courtesy check; the restore below decides
            saved_tree = saved_shapes = None
        if saved_shapes is not None and saved_shapes != _shapes(target):
            raise WorkdirError(
                f"the checkpoint {where} holds a model of another shape than this code builds from "
                "the same config; it was left untouched. Use a new --workdir."
            )
        # Checkpoints written before train states had a `critic` field lack it; a run without a
        # critic restores them into the same tree less that field.
        legacy = target.critic is None and saved_tree is not None and "critic" not in saved_tree
        if legacy:
            target_tree = {
                field.name: getattr(target, field.name)
                for field in dataclasses.fields(target)
                if field.name != "critic"
            }
        else:
            target_tree = target
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target_tree))
            ).state
        except Exception as error:
            raise _Unreadable(step, error) from error
        if legacy:
            restored = target.replace(**restored)
        return from_storable(restored, initial_state), meta.get("extra", {})

    def restore_latest(self, initial_state, config: ml_collections.ConfigDict):
        """The newest readable checkpoint's state, or `initial_state` if there is none.

        A checkpoint that cannot be read (truncated, corrupted) is passed over for the one before
        it; once an older one is restored, the unreadable ones are renamed
        `<step>.unreadable-<time>` (kept, never deleted) so that training can write those steps
        again.

        Args:
          initial_state: a freshly initialised train state; gives the structure, shapes, dtypes
            and shardings to restore into.
          config: the current config; must agree with the checkpoint's (see module docstring).

        Returns:
          (state, step, extra): step is 0 when nothing was restored; extra is what `save` was
          given with the state (e.g. the metrics of an unfinished epoch).

        Raises:
          WorkdirError: the newest checkpoint was trained with another config or model shape, or
            no checkpoint can be read. Nothing in the workdir is changed.
        """
        unreadable = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                state, extra = self._read(step, initial_state, config)
            except _Unreadable as error:
                unreadable.append(error)
                continue
            for bad in unreadable:
                self._move_aside(bad, fallback=step)
            if unreadable:
                self._manager.close()
                self._manager = self._open()
            return state, step, extra
        if not unreadable:
            return initial_state, 0, {}
        reasons = "; ".join(
            f"{os.path.join(self.directory, str(bad.step))} ({_first_line(bad.error)})"
            for bad in unreadable
        )
        raise WorkdirError(
            f"no checkpoint can be read: {reasons}. They were left untouched. Move them away to "
            "start again, or use a new --workdir."
            if len(unreadable) > 1
            else f"the checkpoint {reasons.replace(' (', ' cannot be read (', 1)}; it was left "
            "untouched. Move it away to resume from an earlier one, or use a new --workdir."
        )

    def _move_aside(self, bad: _Unreadable, fallback: int) -> None:
        source = os.path.join(self.directory, str(bad.step))
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        destination = f"{source}.unreadable-{stamp}"
        os.rename(source, destination)
        logging.warning(
            "The checkpoint %s cannot be read (%s); resuming from step %d instead. It was kept "
            "as %s.",
            source,
            _first_line(bad.error),
            fallback,
            destination,
        )

    def save(self, step: int, state, config: ml_collections.ConfigDict, extra=None) -> None:
        """Starts an asynchronous save; the arrays are copied before this returns, so the caller
        may donate `state` to the next step right away. `extra` (JSON) comes back on restore."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(to_storable(state)),
                meta=ocp.args.JsonSave(
                    {"config": config_lib.config_to_dict(config), "extra": extra or {}}
                ),
            ),
            force=True,
        )

    def wait(self) -> None:
        """Waits for the last save to be complete on disk; raises if it failed."""
        self._manager.wait_until_finished()

    def settle(self) -> BaseException | None:
        """Waits for the save in flight, if any; returns its failure instead of raising it.

        For error paths: a run that stops for one write failure (say a full disk while writing
        a picture) reports that one, and the save still in flight usually fails for the same
        reason."""
        if self._manager is None:
            return None
        try:
            self._manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001 - reported by the caller's own error
            DETAILS.warning("The checkpoint save in flight failed: %s", _first_line(error))
            return error
        return None

    def close(self, raise_errors: bool = True) -> None:
        """Waits for the last save, then releases the manager (again: nothing). A failed save
        is raised, or with `raise_errors` False only logged; the manager is released either
        way."""
        if self._manager is None:
            return
        manager, self._manager = self._manager, None
        failure = None
        for finish in (manager.wait_until_finished, manager.close):
            try:
                finish()
            except Exception as error:  # noqa: BLE001 - raised or logged below
                failure = failure or error
        if failure is not None:
            if raise_errors:
                raise failure
            DETAILS.warning("Closing the checkpoints: %s", _first_line(failure))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        # Leaving on an error: that error is the one to report, not a save it interrupted.
        self.close(raise_errors=exc_type is None)


def restore_params(directory: str, abstract_params) -> tuple[Any, int]:
    """The model parameters alone, from the newest readable checkpoint under `directory`.

    Reads nothing else of the state (no optimizer state, no critic), so it needs neither an
    optimizer nor an objective to build a restore target, and changes nothing on disk: an
    unreadable checkpoint is passed over, never moved.

    Args:
      directory: a workdir's checkpoints/ folder.
      abstract_params: the parameters' structure, shapes and dtypes (`jax.ShapeDtypeStruct`
        leaves, e.g. from `jax.eval_shape` of the model's init).

    Returns:
      (params on the default device, step).

    Raises:
      WorkdirError: no checkpoint, or none that can be read.
    """
    directory = os.path.abspath(directory)
    steps = (
        sorted((int(n) for n in os.listdir(directory) if n.isdigit()), reverse=True)
        if os.path.isdir(directory)
        else []
    )
    if not steps:
        raise WorkdirError(f"{directory} holds no checkpoint yet; train the workdir first.")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), abstract_params)
    manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(create=False),
        item_handlers={"state": ocp.PyTreeCheckpointHandler()},
    )
    failures = []
    try:
        for step in steps:
            args = ocp.args.PyTreeRestore(
                {"params": abstract_params},
                restore_args={"params": restore_args},
                partial_restore=True,
            )
            try:
                state = manager.restore(step, args=ocp.args.Composite(state=args)).state
            except Exception as error:  # noqa: BLE001 - reported below if no step can be read
                failures.append(f"{os.path.join(directory, str(step))} ({_first_line(error)})")
                continue
            if failures:
                logging.warning("Passed over unreadable checkpoints: %s", "; ".join(failures))
            return state["params"], step
    finally:
        manager.close()
    raise WorkdirError(f"no checkpoint can be read: {'; '.join(failures)}.")


class _Unreadable(Exception):
    def __init__(self, step: int, error: BaseException):
        super().__init__(step, error)
        self.step, self.error = step, error
