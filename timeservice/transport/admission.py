"""Who may ask: the access list, checked before anything is spent on a
client, with the count and a summarised log of the clients refused."""

from __future__ import annotations

import collections
import threading
from typing import Any

from ..policy.access import AccessList
from ..policy.logs import RefusalLog, format_address
from .settings import Reconfigurable


class AdmissionMixIn(Reconfigurable):
    """Who may ask: the access list, checked before anything is spent on a
    client, and a count and a summarised log of the clients refused.

    Methods that may be overridden: denied(request, client_address) for a
    client the access list refuses (by default nothing is sent, and a TCP
    connection is closed at once). Subclasses and handlers call
    count_refusal(cause, client_address) and add to `answered`; statistics()
    gives the counts. Settings: access (an AccessList, None for everyone),
    log_interval (seconds over which refusals are summarised).
    """

    settings: tuple[str, ...] = ("access", "log_interval")
    access: AccessList | None = None
    log_interval = 60.0
    summaries: list[Any]  # the loop's (LoopMixIn)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.answered = 0  # requests answered, as far as the handlers have said
        self.refused: collections.Counter[str] = collections.Counter()
        self.refusals = RefusalLog(self.log_interval)
        self._count_lock = threading.Lock()
        super().__init__(*args, **kwargs)
        self.summaries.append(self.refusals)  # the loop's, which flushes it

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self.access is None or self.access.allows(client_address[0]):
            return super().verify_request(request, client_address)
        self.count_refusal("denied", client_address)
        self.denied(request, client_address)
        return False

    def denied(self, request: Any, client_address: Any) -> None:
        """A client the access list refuses; the server then drops or closes it."""

    def count_refusal(self, cause: str, client_address: Any) -> None:
        """Count a refused client, and log it (in a summary if there are many)."""
        with self._count_lock:
            self.refused[cause] += 1
        self.refusals.note(cause, format_address(client_address))

    def statistics(self) -> dict[str, Any]:
        """Counts for the metrics: requests answered, clients refused by cause."""
        with self._count_lock:
            return {"requests": self.answered, "refused": dict(self.refused)}
