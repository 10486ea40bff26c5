"""How many samples, how far apart: NTP requests are paced as servers
expect of a client, and the first failure ends a sampling but keeps what
it has."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from ..wire.errors import ReplyError

OFFSET_SAMPLES = 8


# NTP requests are paced as ntpd's "discard minimum" expects of a client,
# 2 s apart, as chronyd's iburst sends its first four: a client cannot tell
# whose server it asks. --burst sends them back to back.
NTP_SAMPLES = 4


NTP_SPACING = 2.0  # seconds


T = TypeVar("T")


def spacing(protocol: str, burst: bool) -> float:
    """Seconds between the requests of one sampling: see NTP_SPACING."""
    return NTP_SPACING if protocol in ("ntp", "nts") and not burst else 0.0


def take_samples(
    ask_once: Callable[[], T], count: int, seconds_apart: float = 0.0
) -> tuple[list[T], Exception | None]:
    """Up to `count` answers, `seconds_apart` apart. The first failure ends
    the sampling (a Kiss-o'-Death says stop, and a server that failed once
    is likely to again): it is raised if nothing was taken, else returned
    beside what was, which is kept."""
    taken: list[T] = []
    for number in range(count):
        if number and seconds_apart:
            time.sleep(seconds_apart)  # politeness, not synchronisation
        try:
            taken.append(ask_once())
        except (OSError, ReplyError) as exc:
            if not taken:
                raise
            return taken, exc
    return taken, None
