"""Whole files written so that a crash never leaves a torn one, with the user's umask.

A file is written under a temporary name in its own directory, flushed to disk and renamed
into place. `tempfile` creates its files with mode 0600 whatever the umask, and a rename keeps
that mode, which breaks a workdir shared with a group, bind-mounted into a container or read by
another user's TensorBoard; here the temporary file is created with mode 0666 less the umask
(0644 under the usual 022), as `open` would create the file itself.
"""

from __future__ import annotations

import contextlib
import os
import secrets

__all__ = ["atomic_write"]


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w"):
    """Yields a file object ('w' text or 'wb' bytes) whose contents replace `path` on success;
    on an exception the temporary file goes and `path` is unchanged."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(descriptor, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
