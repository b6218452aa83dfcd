"""Keeping PyBullet's native chatter off stdout.

PyBullet's C++ prints to the process's stdout: its build time on import, "argv[0]=" on
every connection, a line per merged link on every URDF load. Printed from C, it bypasses
sys.stdout and would bury training progress and the CLI's own output.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from collections.abc import Iterator


@functools.cache
def _libc() -> ctypes.CDLL:
    # Opened once: a grasp env loads a new cube every episode.
    return ctypes.CDLL(None)


@contextlib.contextmanager
def quiet_native_stdout(descriptors: tuple[int, ...] = (1,)) -> Iterator[None]:
    """Send file descriptors (default: stdout) to /dev/null for the duration, C-level
    writes included."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = [os.dup(fd) for fd in descriptors]
    except OSError:  # no real descriptor (some test runners): nothing to silence
        yield
        return
    libc = _libc()
    with open(os.devnull, "w") as devnull:
        for fd in descriptors:
            os.dup2(devnull.fileno(), fd)
        try:
            yield
        finally:
            libc.fflush(None)
            for fd, copy in zip(descriptors, saved):
                os.dup2(copy, fd)
                os.close(copy)
