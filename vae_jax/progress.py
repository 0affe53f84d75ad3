"""What a long evaluation is doing, and for how long: a progress bar with an ETA per phase, and
one log line with the phase's expected duration as soon as its rate is measured.

The rate is taken from the second chunk of work: the first one includes compiling its program.
The bar follows tqdm's rule for the terminal (shown on a TTY, not in a log file or a pipe).
"""

from __future__ import annotations

import time

import tqdm
from absl import logging

__all__ = ["Phase", "duration"]


def duration(seconds: float) -> str:
    """'42 s', '3.5 min', '2.1 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Phase:
    """One phase of `total` units of work (examples, metrics), updated after each chunk.

    Args:
      what: the phase's name in the bar and the log ('IWAE bound, k = 5000').
      total: units of work in the phase.
      unit: what a unit is ('examples').
      clock: seconds (a fake in tests).
    """

    def __init__(self, what: str, total: int, unit: str = "examples", clock=time.perf_counter):
        self.what, self.total, self.unit, self.clock = what, total, unit, clock
        self.done, self.chunks, self.estimate = 0, 0, None
        self.started = self.last = clock()
        self.bar = tqdm.tqdm(total=total, desc=what, unit=unit, disable=None, leave=False)

    def update(self, amount: int) -> None:
        now = self.clock()
        self.done += amount
        self.chunks += 1
        self.bar.update(amount)
        if self.chunks == 2 and self.done < self.total and now > self.last:
            rate = amount / (now - self.last)
            self.estimate = (self.total - self.done) / rate
            logging.info(
                "%s: %d %s, about %s more at the measured %.3g %s/s.",
                self.what,
                self.total,
                self.unit,
                duration(self.estimate),
                rate,
                self.unit,
            )
        self.last = now

    def close(self) -> None:
        self.bar.close()
        logging.info("%s: done in %s.", self.what, duration(self.clock() - self.started))

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
