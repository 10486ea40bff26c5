"""What this platform offers a process that forks workers: ending with its
parent (Linux's PR_SET_PDEATHSIG)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from . import capabilities

PR_SET_PDEATHSIG = 1


def _prctl():
    if capabilities.PORTABLE or not hasattr(os, "fork"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except (OSError, TypeError):
        return None
    return getattr(libc, "prctl", None)


_call = _prctl()


def end_with_parent(signum: int, parent: int) -> bool:
    """Have the kernel send `signum` to this process when its parent ends;
    False where it cannot. If the parent `parent` has already ended, the
    signal comes at once."""
    if _call is None or _call(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # it ended before the request was made
        os.kill(os.getpid(), signum)
    return True
