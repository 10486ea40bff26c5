"""The CPU the serving threads are kept on: one, where there are several and
a GIL, since threads on two CPUs hand the GIL to each other across them."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from ..host import capabilities

logger = logging.getLogger(__name__)


def choose_cpu(choice: str | int) -> int | None:
    """The CPU to keep the server's threads on, or None to let them roam.

    ``auto`` keeps them on the CPU the kernel started the process on, when
    there are several CPUs and a GIL: threads on two CPUs hand the GIL to
    each other across them, and under load that costs more than the
    requests. Without a GIL they run in parallel, so they roam.
    """
    if choice == "off":
        return None
    if choice == "auto":
        cpus = capabilities.allowed_cpus()
        if len(cpus) < 2 or not capabilities.gil_enabled():
            return None
        current = capabilities.current_cpu()
        return current if current in cpus else min(cpus)
    return int(choice)


@contextlib.contextmanager
def kept_on_cpu(cpu: int | None) -> Iterator[None]:
    """Keep this thread, and the threads it starts, on `cpu` while in the block.

    Only ever a speed-up: where the platform cannot, or the kernel refuses,
    the block runs anyway, on every CPU, after one warning.
    """
    before = capabilities.allowed_cpus()
    try:
        if cpu is not None:
            if not capabilities.CPU_AFFINITY:
                raise OSError("this platform has no CPU affinity")
            os.sched_setaffinity(0, {cpu})
            logger.debug("serving on CPU %d", cpu)
    except OSError as exc:
        why = exc.strerror or exc
        logger.warning("cannot keep to CPU %d (%s); using every CPU", cpu, why)
        cpu = None
    try:
        yield
    finally:
        if cpu is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, before)


def worker_cpus(choice: str | int, count: int) -> list[int | None]:
    """The CPU of each worker: with ``auto``, one each in turn where there
    are several CPUs and a GIL; with ``off``, none."""
    if choose_cpu(choice) is None:  # off, or nothing to gain from keeping
        return [None] * count
    cpus = sorted(capabilities.allowed_cpus())
    return [cpus[number % len(cpus)] for number in range(count)]
