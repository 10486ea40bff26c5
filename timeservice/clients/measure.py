"""How far this clock is from a server's, in any protocol, as one call: the
samples each protocol takes, paced as its servers expect, and the best kept."""

from __future__ import annotations

from ..wire import ntp
from .line import DEFAULT_TIMEOUT, TimeClient
from .nts import ask_nts_once, establish
from .offset import Estimate, Sample, estimate
from .sampling import NTP_SAMPLES, OFFSET_SAMPLES, spacing, take_samples
from .standard import PORTS, ask_daytime, ask_ntp, ask_time


def measure_offset(
    host: str,
    port: int | None = None,
    *,
    protocol: str = "line",
    samples: int | None = None,
    udp: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    burst: bool = False,
    max_distance: float = ntp.MAX_DISTANCE,
    ca: str | None = None,
) -> Estimate:
    """Ask a server `samples` times in `protocol` (line, daytime, time, ntp
    or nts; the port is the protocol's unless given, for NTS the Key
    Establishment's) and keep the sample with the tightest bound.

    The line protocol asks over one connection; NTP asks 4 times, 2 s apart
    as servers expect of a client, unless `burst`, and NTS the same after
    one Key Establishment (its certificate trusted by `ca`, a PEM file, or
    the system's); the others 8 times. The first failure raises if nothing
    was taken; after that it ends the sampling and the samples taken stand
    (a Kiss-o'-Death says stop).
    """
    if protocol not in PORTS:
        raise ValueError(f"unknown protocol {protocol!r} (one of {', '.join(PORTS)})")
    where = (host, PORTS[protocol] if port is None else port)
    if samples is None:
        samples = NTP_SAMPLES if protocol in ("ntp", "nts") else OFFSET_SAMPLES
    if protocol == "line":
        with TimeClient(*where, timeout) as client:
            return client.measure_offset(samples)

    session = None
    if protocol == "nts":
        session = establish(*where, ca=ca, timeout=timeout)

    def ask_once() -> Sample:
        if session is not None:
            return ask_nts_once(session, timeout=timeout, max_distance=max_distance)
        if protocol == "ntp":
            return ask_ntp(*where, timeout=timeout, max_distance=max_distance)
        if protocol == "time":
            return ask_time(*where, udp=udp, timeout=timeout)
        return ask_daytime(*where, udp=udp, timeout=timeout)

    taken, _ = take_samples(ask_once, samples, spacing(protocol, burst))
    return estimate(taken)
