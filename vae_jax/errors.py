"""Errors that end a run with one clear sentence for the user instead of a traceback.

`main.py` prints these as `error: <message>` and exits with status 2. Anything else that escapes
is a bug and keeps its traceback.
"""


class VaeJaxError(Exception):
    """A problem the user can fix: bad input, an unusable workdir, a run that diverged."""


class ConfigError(VaeJaxError):
    """A config field has a value that is not allowed."""


class DataError(VaeJaxError):
    """A data source cannot be read: a missing or malformed file, inconsistent arrays."""


class WorkdirError(VaeJaxError):
    """The workdir cannot be used: unwritable, or it holds a checkpoint that cannot be resumed."""


class ProcessesError(VaeJaxError):
    """Several processes cannot train together: one did not join, or they were started
    differently."""


class DivergenceError(VaeJaxError):
    """The loss became NaN or infinite."""


class Preempted(Exception):
    """SIGTERM or SIGINT stopped training at a step boundary, after a checkpoint was saved."""

    def __init__(self, signum: int, step: int):
        super().__init__(signum, step)
        self.signum, self.step = signum, step
