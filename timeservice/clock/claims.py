"""What the NTP service claims of its clock, as chrony's reference.c decides
it: from the kernel's state, the local stratum, and the server the kernel's
clock follows."""

from __future__ import annotations

from ..wire.ntp import (
    LEAP_NONE,
    LEAP_UNSYNCHRONISED,
    MAX_STRATUM,
    NO_REFERENCE,
    ServerState,
    Upstream,
)
from .kernel import KernelState

UNKNOWN_STRATUM = MAX_STRATUM  # see server_state()


LOCAL_REFERENCE = bytes([127, 127, 1, 1])  # chrony's reference ID for its local clock


PHI = 15e-6  # RFC 5905: the frequency tolerance, how fast dispersion grows (s/s)


def server_state(
    kernel: KernelState | None,
    local_stratum: int | None,
    precision: int,
    upstream: Upstream | None = None,
    age: float = 0.0,
) -> ServerState:
    """Never claim a synchronisation the machine does not have, nor a source
    the server does not know.

    - The kernel says synchronised, and `upstream` says what the server it
      follows claims (read `age` seconds ago): one stratum more, its
      reference ID and time, leap indicator and root delay, and its root
      dispersion grown by RFC 5905's PHI since it was read. Behind a
      stratum-1 server, whose reference ID is a reference clock's code
      (GPS, PPS), the claim names that server by its address instead
      (`source_id`): RFC 5905 gives stratum 2 and above an address there,
      which clients compare with their own to detect loops.
    - The kernel says synchronised, with no upstream known: stratum 15 (the
      least a client still takes), no reference ID (RFC 5905 uses it to
      detect loops, so a made-up one is worse than none), and a root
      dispersion of the kernel's maximum error.
    - Otherwise, with `local_stratum` (chrony's ``local stratum``, which
      only ever applies while the clock is unsynchronised): serve this
      clock as a reference at that stratum, leap indicator 0, "LOCL" at
      stratum 1 (RFC 5905's uncalibrated local clock) and 127.127.1.1
      above it (chrony's local reference).
    - Otherwise (unsynchronised, or no kernel state on this platform):
      leap indicator 3, stratum 16 (0 on the wire), "INIT" and no reference
      time, so that clients ignore the server.
    """
    floor = 2.0**precision
    if kernel is not None and kernel.synchronised:
        if upstream is not None:
            named = upstream.reference_id
            if upstream.stratum == 1 and upstream.source_id != NO_REFERENCE:
                named = upstream.source_id
            return ServerState(
                upstream.leap,
                min(upstream.stratum + 1, MAX_STRATUM),
                named,
                precision,
                upstream.root_dispersion + floor + PHI * age,
                upstream.root_delay,
                upstream.reference,
            )
        return ServerState(
            kernel.leap,
            UNKNOWN_STRATUM,
            NO_REFERENCE,
            precision,
            max(kernel.max_error, floor),
        )
    if local_stratum is not None:
        reference_id = b"LOCL" if local_stratum == 1 else LOCAL_REFERENCE
        return ServerState(LEAP_NONE, local_stratum, reference_id, precision, floor)
    max_error = kernel.max_error if kernel is not None else 16.0
    return ServerState(
        LEAP_UNSYNCHRONISED, 0, b"INIT", precision, max_error, reference=0
    )
