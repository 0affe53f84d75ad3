"""Stop requests: SIGTERM (a scheduler taking the machine back) or SIGINT (Ctrl-C) ask a run to
stop at the next call boundary, where `loop.run` saves a checkpoint of the step reached.
"""

from __future__ import annotations

import signal
import threading

from absl import logging

__all__ = ["StopSignals"]


class StopSignals:
    """Turns SIGTERM and SIGINT into a request to stop at the next call boundary (in the main
    thread; elsewhere signals cannot be caught and nothing changes). A second Ctrl-C does not
    wait."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        del frame
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        logging.warning(
            "Got %s: stopping at the next step boundary with a checkpoint.",
            signal.Signals(signum).name,
        )

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
