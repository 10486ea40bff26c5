"""Several server processes on the same sockets, as prefork servers run them,
and the parent that watches them.

CPython runs Python in one thread at a time per process, so one process
uses about one core. To use more, the parent binds every socket, then forks
workers that each serve all of them (nginx's workers, gunicorn's and
uvicorn's ``--workers``); the kernel hands each new connection or datagram
to one of the workers waiting for it. The parent only supervises: each
worker beats on a pipe of its own while its loops turn, and one silent for
longer than `silence` is killed and replaced, as one that dies is; only the
parent tells systemd's watchdog that all is well. SIGTERM or SIGINT stop
every worker the usual way (the lines received are answered), then the
parent; whatever ends the parent ends its workers.

Signal handlers only set a flag (the wake-up byte is the interpreter's own,
signal.set_wakeup_fd()): the loop in serve() does the rest, logs included,
so that no signal can land between a decision and the act it guards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..host.process import end_with_parent
from .gathering import Gathered

logger = logging.getLogger(__name__)

STOPS = {signal.SIGTERM, signal.SIGINT}
HANDLED = STOPS | {signal.SIGHUP, signal.SIGCHLD}
STOP_TIMEOUT = 10.0  # seconds the workers have to stop before they are killed
RESTART_PAUSE = 1.0  # a worker that dies this soon after its start waits this long
SILENCE = 30.0  # seconds a worker may go without a beat, without systemd's watchdog


def reset_signals() -> None:
    """A new worker's signals, blocked since the fork: the parent's handlers
    gone. Its service takes SIGHUP over (stop_on_signals()); until then it
    stays blocked, so a hangup ends no worker and one that comes is held,
    not lost, even before this: a reload asked while the worker starts is
    done once it serves. (Not ignored: ignoring a signal discards it if it
    is pending already.)"""
    for sig in HANDLED:
        signal.signal(sig, signal.SIG_DFL)


@dataclass
class Worker:
    """One worker process as the parent sees it."""

    number: int
    pid: int
    beats: int  # the read end of its pipe
    started: float
    heard: float  # its last beat (or its start)


class Supervisor:
    """Forks `count` workers running `work(number, beat)` and keeps them
    running; `beat()` says, from the worker, that it is alive.

    `work` returns the worker's exit status; it runs in the child, which
    never returns into the parent's code. on_stop() is called once a stop
    signal has come, on_reload() for SIGHUP (by default one log line), and
    watchdog() every `silence` seconds while every worker has beaten within
    it (systemd's WATCHDOG=1). POSIX only (os.fork).
    """

    def __init__(
        self, count: int, work: Callable[[int, Callable[..., None]], int]
    ) -> None:
        self.count, self.work = count, work
        self.workers: dict[int, Worker] = {}  # by pid
        self.silence = SILENCE
        self.on_stop: Callable[[], None] = lambda: None  # e.g. tell systemd
        self.on_reload: Callable[[], object] = lambda: logger.info(
            "SIGHUP received; there is nothing to reload"
        )
        self.watchdog: Callable[[], None] | None = None
        self.gathered: Gathered | None = None  # what the workers count, if kept
        self._signals: list[int] = []  # the handlers' flags, in arrival order
        self.stopping = False
        self.stopped_by: int | None = None  # the signal that stopped them

    def serve(self, ready: Callable[[], None] = lambda: None) -> int:
        """Start the workers, call `ready`, and supervise them until a signal
        stops them all. The exit status is 0, or the first failed worker's
        during the stop, or 1 if one had to be killed."""
        wake_read, wake_write = os.pipe()
        for end in (wake_read, wake_write):
            os.set_blocking(end, False)
        previous = {sig: signal.signal(sig, self._note) for sig in HANDLED}
        previous_fd = signal.set_wakeup_fd(wake_write)
        try:
            for number in range(self.count):
                self._start(number)
            ready()
            return self._supervise(wake_read)
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for worker in self.workers.values():
                os.close(worker.beats)
            os.close(wake_read)
            os.close(wake_write)

    def _note(self, signum: int, frame: object) -> None:
        self._signals.append(signum)  # the loop, woken by the byte, acts

    def _supervise(self, wake: int) -> int:
        status, killed = 0, False
        deadline = None  # when the stopping workers are killed
        restarts: list[tuple[float, int]] = []  # when, which worker number
        notified = time.monotonic()
        while self.workers or (restarts and not self.stopping):
            now = time.monotonic()
            waits = [notified + self.silence / 2, now + self.silence / 4]
            waits += [when for when, _ in restarts]
            if deadline is not None:
                waits.append(deadline)
            pipes = [worker.beats for worker in self.workers.values()]
            ready, _, _ = select.select(
                [wake, *pipes], [], [], max(0, min(waits) - now)
            )
            now = time.monotonic()
            with contextlib.suppress(BlockingIOError):
                os.read(wake, 4096)
            self._hear(ready, now)
            signals, self._signals = self._signals, []
            for signum in signals:
                if signum in STOPS and not self.stopping:
                    self.stopping, self.stopped_by = True, signum
                    deadline = now + STOP_TIMEOUT
                    logger.info(
                        "%s received, stopping %d worker(s)",
                        signal.Signals(signum).name,
                        len(self.workers),
                    )
                    self.on_stop()
                    self._signal_all(signal.SIGTERM)
                elif signum == signal.SIGHUP:
                    self.on_reload()
            for worker, code in self._reap():
                if self.stopping:  # ended by its SIGTERM, or else a failure
                    if code < 0 and code != -signal.SIGTERM:
                        killed = True
                    status = status or max(code, 0)
                    continue
                logger.warning(
                    "worker %d (pid %d) ended with status %d; starting another",
                    worker.number,
                    worker.pid,
                    code,
                )
                restarts.append(
                    (max(now, worker.started + RESTART_PAUSE), worker.number)
                )
            if self.stopping:
                if deadline is not None and now >= deadline and self.workers:
                    for worker in self.workers.values():
                        logger.warning(
                            "worker pid %d did not stop; killing it", worker.pid
                        )
                    self._signal_all(signal.SIGKILL)
                    killed, deadline = True, None
                continue
            due = [entry for entry in restarts if entry[0] <= now]
            for entry in due:
                restarts.remove(entry)
                self._start(entry[1])
            self._replace_the_silent(now)
            if self.watchdog is not None and now - notified >= self.silence / 2:
                notified = now
                self.watchdog()
        return status or (1 if killed else 0)  # a worker killed: not a clean stop

    def _hear(self, ready: list, now: float) -> None:
        """Take the beats that have come."""
        for worker in self.workers.values():
            if worker.beats in ready:
                with contextlib.suppress(BlockingIOError):
                    data = os.read(worker.beats, 4096)
                    if data:
                        worker.heard = now
                        if self.gathered is not None:
                            counted = self.gathered.heard(worker.number, data)
                            if counted is not None:
                                logger.debug(
                                    "worker %d reported %d requests",
                                    worker.number,
                                    counted,
                                )

    def _replace_the_silent(self, now: float) -> None:
        for worker in self.workers.values():
            quiet = now - worker.heard
            if quiet > self.silence:
                logger.warning(
                    "worker %d (pid %d) silent for %.0f s; killing it to start another",
                    worker.number,
                    worker.pid,
                    quiet,
                )
                worker.heard = now  # once: it is ended and reaped next
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)

    def _reap(self) -> list[tuple[Worker, int]]:
        """The workers that have ended since the last look, with their status."""
        ended = []
        while self.workers:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            os.close(worker.beats)
            if self.gathered is not None:
                self.gathered.ended(worker.number)
            ended.append((worker, os.waitstatus_to_exitcode(wait_status)))
        return ended

    def signal_workers(self, signum: int) -> None:
        """Send `signum` to every worker (a reload: SIGHUP)."""
        self._signal_all(signum)

    def _signal_all(self, signum: int) -> None:
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _start(self, number: int) -> None:
        beats_read, beats_write = os.pipe()
        os.set_blocking(beats_read, False)
        os.set_blocking(beats_write, False)
        parent = os.getpid()
        # A signal between the fork and the worker's own handlers would run
        # the parent's handler in the worker: it is held until then.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            pid = os.fork()
            if pid == 0:  # the worker
                self._in_worker(number, parent, beats_read, beats_write)
            os.close(beats_write)
            now = time.monotonic()
            self.workers[pid] = Worker(number, pid, beats_read, now, now)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
        logger.debug("worker %d started, pid %d", number, pid)

    def _in_worker(self, number: int, parent: int, unused: int, beats: int) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)  # the parent's pipe is the parent's
            os.close(unused)
            for worker in self.workers.values():
                os.close(worker.beats)
            reset_signals()
            end_with_parent(signal.SIGTERM, parent)
            # Held until here, a stop ends a worker that serves nothing yet.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED - {signal.SIGHUP})

            def beat(message: bytes = b".") -> None:
                try:
                    os.write(beats, message)
                except BrokenPipeError:
                    # The parent has ended: stop as its death signal would.
                    os.kill(os.getpid(), signal.SIGTERM)
                except OSError:  # a full pipe: the parent has beats to read already
                    pass

            code = self.work(number, beat)
        except BaseException:
            logger.exception("worker %d failed", number)
        finally:
            logging.shutdown()
            os._exit(code)
