"""Several server processes on the same sockets, as prefork servers run them.

CPython runs Python in one thread at a time per process, so one process
uses about one core. To use more, the parent binds every socket, then forks
workers that each serve all of them (nginx's workers, gunicorn's and
uvicorn's ``--workers``); the kernel hands each new connection or datagram
to one of the workers waiting for it. The parent only supervises: a worker
that dies is logged and replaced, and SIGTERM or SIGINT stop every worker
the usual way (the lines received are answered), then the parent.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

STOPS = {signal.SIGTERM, signal.SIGINT}
STOP_TIMEOUT = 10.0  # seconds the workers have to stop before they are killed
RESTART_PAUSE = 1.0  # a worker that dies this soon after its start waits this long


class Supervisor:
    """Forks `count` workers running `work(number)` and keeps them running.

    `work` returns the worker's exit status; it runs in the child, which
    never returns into the parent's code. POSIX only (os.fork).
    """

    def __init__(self, count: int, work: Callable[[int], int]) -> None:
        self.count, self.work = count, work
        self.workers: dict[int, tuple[int, float]] = {}  # pid: (number, started)
        self.stopping = False
        self.on_stop: Callable[[], None] = lambda: None  # e.g. tell systemd

    def serve(self, ready: Callable[[], None] = lambda: None) -> int:
        """Start the workers, call `ready`, and supervise them until a signal
        stops them all; the exit status is the first worker's that failed."""
        previous = {sig: signal.signal(sig, self._stop) for sig in STOPS}
        previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._kill)
        status = 0
        try:
            for number in range(self.count):
                self._start(number)
            ready()
            while self.workers:
                pid, wait_status = os.waitpid(-1, 0)
                if pid not in self.workers:
                    continue
                number, started = self.workers.pop(pid)
                code = os.waitstatus_to_exitcode(wait_status)
                if self.stopping:
                    status = status or (code if code > 0 else 0)
                    continue
                logger.warning(
                    "worker %d (pid %d) ended with status %d; starting another",
                    number,
                    pid,
                    code,
                )
                if time.monotonic() - started < RESTART_PAUSE:
                    time.sleep(RESTART_PAUSE)  # not a tight loop of failing starts
                if not self.stopping:
                    self._start(number)
        finally:
            signal.alarm(0)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return status

    def _start(self, number: int) -> None:
        # A stop signal between the fork and the worker's own handlers would
        # run the parent's handler in the worker: it is held until then.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
        try:
            pid = os.fork()
            if pid == 0:  # the worker
                code = 1
                try:
                    for sig in (*STOPS, signal.SIGALRM):
                        signal.signal(sig, signal.SIG_DFL)
                    # Held until here, a stop ends a worker that serves nothing yet.
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)
                    code = self.work(number)
                except BaseException:
                    logger.exception("worker %d failed", number)
                finally:
                    logging.shutdown()
                    os._exit(code)
            self.workers[pid] = (number, time.monotonic())
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)
        logger.debug("worker %d started, pid %d", number, pid)

    def _stop(self, signum: int, frame: object) -> None:
        """Pass the stop on to every worker; kill those still there later."""
        if not self.stopping:
            logger.info(
                "%s received, stopping %d worker(s)",
                signal.Signals(signum).name,
                len(self.workers),
            )
            self.on_stop()
        self.stopping = True
        for pid in self.workers:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        signal.alarm(int(STOP_TIMEOUT))

    def _kill(self, signum: int, frame: object) -> None:
        for pid in self.workers:
            logger.warning("worker pid %d did not stop; killing it", pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
