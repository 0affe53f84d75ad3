"""Stop requests: SIGTERM (a scheduler taking the machine back) or SIGINT (Ctrl-C) ask a run to
stop at the next call boundary, where `loop.run` saves a checkpoint of the step reached.

The loop asks `poll()` once per boundary (and the stream pipeline once per chunk); `requested`
then holds that answer until the next poll, so one boundary never sees two answers (which
would raise `Preempted` without the checkpoint the first answer skipped).

One process catches the signals itself (`StopSignals`). Several processes must all stop at the
same step, or one waits forever in a collective the others never join: `CoordinatedStop` uses
JAX's preemption service, which `jax.distributed.initialize` starts. It catches SIGTERM in
every process, tells the others through the coordination service, and
`reached_preemption_sync_point` answers True in every process at the same call.
"""

from __future__ import annotations

import os
import signal
import threading

from absl import logging

__all__ = ["StopSignals", "CoordinatedStop", "stop_signals", "note_early_stop", "early_stops"]

# Stop signals this process received before a StopSignals watched them (launch.py's start-up
# handlers note them, and pass them on from here): a Ctrl-C that start-up passed on to JAX as a
# SIGTERM still reports SIGINT.
_EARLY_STOPS: list[int] = []


def note_early_stop(signum: int) -> None:
    """Records a SIGTERM or SIGINT that came before the training loop watched for one."""
    _EARLY_STOPS.append(signum)


def early_stops() -> tuple[int, ...]:
    """The signals `note_early_stop` recorded, in order."""
    return tuple(_EARLY_STOPS)


class StopSignals:
    """Turns SIGTERM and SIGINT into a request to stop at the next call boundary (in the main
    thread; elsewhere signals cannot be caught and nothing changes). A second Ctrl-C does not
    wait."""

    def __init__(self):
        self.signum = None
        self._previous = {}
        self._polled = False

    @property
    def requested(self) -> bool:
        """The answer of the last `poll()`."""
        return self._polled

    def poll(self) -> bool:
        """A boundary: has a stop been requested by now?"""
        self._polled = self.signum is not None
        return self._polled

    def _handle(self, signum, frame):
        del frame
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        logging.warning(
            "Got %s: stopping at the next step boundary with a checkpoint.",
            signal.Signals(signum).name,
        )

    def _catch(self, signums) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in signums:
                self._previous[signum] = signal.signal(signum, self._handle)

    def __enter__(self):
        self._catch((signal.SIGTERM, signal.SIGINT))
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _reached_sync_point(count: int) -> bool:
    from jax.experimental import multihost_utils

    return bool(multihost_utils.reached_preemption_sync_point(count))


class CoordinatedStop(StopSignals):
    """Several processes: a SIGTERM to any of them (or to all) stops every one at the same call.

    SIGTERM is left to JAX's handler (a Python handler would replace it). SIGINT, which JAX does
    not watch, is passed on as a SIGTERM to this process, so Ctrl-C stops all processes too.
    Every process polls at the same boundaries in the same order, so the poll count names the
    same step everywhere; the sync point is counted in polls, not steps, because the service
    agrees on "the largest count so far + 1", which a step count that jumps by a call's length
    would never meet.

    Args:
      reached: `count -> bool`, JAX's sync point (a fake in tests).
      early: the signal that came during start-up, if any (`note_early_stop`): it, not the
        SIGTERM it was passed on as, is what this process stops by.
    """

    def __init__(self, reached=_reached_sync_point, early: int | None = None):
        super().__init__()
        self._reached = reached
        self._early = early
        self._count = 0

    def poll(self) -> bool:
        if not self._polled:
            self._polled = self._reached(self._count)
            self._count += 1
            if self._polled:
                self.signum = self.signum or self._early or signal.SIGTERM
                logging.warning(
                    "A stop was requested (SIGTERM or SIGINT to one of the processes): every "
                    "process stops here with a checkpoint of this step."
                )
        return self._polled

    def _handle(self, signum, frame):
        del frame
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        os.kill(os.getpid(), signal.SIGTERM)  # JAX's notifier tells every process

    def __enter__(self):
        self._catch((signal.SIGINT,))
        return self


def stop_signals() -> StopSignals:
    """The stop requests of this run: coordinated when several processes train together."""
    import jax

    if jax.process_count() == 1:
        return StopSignals()
    return CoordinatedStop(early=(*early_stops(), None)[0])
