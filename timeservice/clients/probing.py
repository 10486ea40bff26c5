"""Targets probed as an exporter probes them, one scrape at a time: one
sample each (a scrape comes every 15 s or so, and a server that limits its
clients must never see a burst), within the time the scrape allows, at most
`most` probes at once across every scrape, and a Kiss-o'-Death obeyed: the
target that sent one is not asked again for a while (64 s, doubling to
1024 s while it keeps sending them), however often it is scraped.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..wire import ntp
from .selection import Failure, Reading, Target
from .targets import TARGET_ERRORS, Asking, ask_target, failure_of

BACK_OFF = 64.0  # seconds a kissing target is left alone, at first
MOST_BACK_OFF = 1024.0  # and at most, as RFC 5905's longest poll


@dataclass(frozen=True)
class Probe:
    """What one probe found: a Reading or a Failure, how long it took, and
    for NTP what the server said of itself."""

    result: Reading | Failure
    seconds: float
    stratum: int | None = None
    root_distance: float | None = None

    @property
    def success(self) -> bool:
        """Whether the target gave a reading."""
        return isinstance(self.result, Reading)


class Prober:
    """Probes targets as `asking` says, one sample each, `most` at once."""

    def __init__(
        self,
        asking: Asking,
        most: int = 16,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.asking = dataclasses.replace(asking, samples=1)
        self.clock = clock
        self._slots = threading.BoundedSemaphore(most)
        self._lock = threading.Lock()
        self._kissed: dict[tuple, tuple[float, float]] = {}  # until, back-off
        self.probes: dict[tuple[str, bool], int] = {}  # by protocol, success
        self.running = 0

    def probe(self, target: Target, seconds: float) -> Probe:
        """Ask `target` once, within `seconds` in all; never raises."""
        start = self.clock()
        key = (target.protocol, target.host.lower(), target.port)
        with self._lock:
            until, _ = self._kissed.get(key, (0.0, 0.0))
        if until > start:
            reason = (
                f"backing off after a Kiss-o'-Death: not asked for "
                f"{until - start:.0f} s more"
            )
            return self._done(Probe(Failure(target, "refused", reason), 0.0))
        if not self._slots.acquire(timeout=max(0.0, seconds)):
            failure = Failure(target, "refused", "too many probes at once")
            return self._done(Probe(failure, self.clock() - start))
        try:
            with self._lock:
                self.running += 1
            found = self._ask(target, start, seconds)
        finally:
            with self._lock:
                self.running -= 1
            self._slots.release()
        return self._done(found)

    def _ask(self, target: Target, start: float, seconds: float) -> Probe:
        # NTS has two exchanges (its Key Establishment, then NTP): each
        # gets half of what is left, and no more than asking's timeout.
        left = seconds - (self.clock() - start)
        share = left / 2 if target.protocol == "nts" else left
        timeout = max(0.001, min(self.asking.timeout, share))
        asking = dataclasses.replace(self.asking, timeout=timeout)
        key = (target.protocol, target.host.lower(), target.port)
        try:
            best = ask_target(target, asking)
        except TARGET_ERRORS as exc:
            if isinstance(exc, ntp.KissOfDeath):
                with self._lock:
                    _, last = self._kissed.get(key, (0.0, 0.0))
                    back_off = min(MOST_BACK_OFF, last * 2 or BACK_OFF)
                    self._kissed[key] = (self.clock() + back_off, back_off)
            failure = failure_of(target, exc, timeout)
            return Probe(failure, self.clock() - start)
        with self._lock:
            self._kissed.pop(key, None)
        reading = Reading(target, best.offset, best.error, best.delay)
        sample = best.best
        if target.protocol not in ("ntp", "nts"):
            return Probe(reading, self.clock() - start)
        return Probe(
            reading, self.clock() - start, sample.stratum, sample.root_distance
        )

    def _done(self, found: Probe) -> Probe:
        with self._lock:
            key = (found.result.target.protocol, found.success)
            self.probes[key] = self.probes.get(key, 0) + 1
        return found

    def probe_all(self, targets: Sequence[Target], seconds: float) -> list[Probe]:
        """Every target, at once as far as the slots allow, in the order given."""
        found: list[Probe | None] = [None] * len(targets)

        def work(index: int) -> None:
            found[index] = self.probe(targets[index], seconds)

        threads = [
            threading.Thread(target=work, args=(index,), daemon=True)
            for index in range(len(targets))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return [probe for probe in found if probe is not None]
