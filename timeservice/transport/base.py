"""What every server here is composed with: settings given to one server
only, the access list with the counts of the refused, and binding any
address in either family (or a socket bound elsewhere)."""

from __future__ import annotations

import collections
import socket
import socketserver
import threading
from typing import Any, cast

from ..policy.access import AccessList
from ..policy.logs import RefusalLog
from ..wire.addresses import format_address


def apply_settings(server: object, settings: dict[str, Any]) -> None:
    """Set, on this server only, the class variables its parts name as settings."""
    known = {
        name
        for klass in type(server).__mro__
        for name in vars(klass).get("settings", ())
    }
    unknown = sorted(settings.keys() - known)
    if unknown:
        raise TypeError(
            f"unknown setting(s) {', '.join(unknown)}; known: {sorted(known)}"
        )
    vars(server).update(settings)


class SettingsMixIn(socketserver.BaseServer):
    """Takes as constructor keywords the class variables its server's parts
    name in `settings`, for this server only; comes first in the bases."""

    def __init__(
        self,
        server_address: tuple,
        handler_class: type[socketserver.BaseRequestHandler],
        bind_and_activate: bool = True,
        **settings: Any,
    ) -> None:
        apply_settings(self, settings)
        super().__init__(server_address, handler_class, bind_and_activate)  # type: ignore[call-arg]


class AdmissionMixIn(socketserver.BaseServer):
    """Who may ask: the access list, checked before anything is spent on a
    client, and a count and a summarised log of the clients refused.

    Methods that may be overridden: denied(request, client_address) for a
    client the access list refuses (by default nothing is sent, and a TCP
    connection is closed at once). Subclasses and handlers call
    count_refusal(cause, client_address) and add to `answered`; statistics()
    gives the counts. `turns` counts the turns of serve_forever()'s loop, so
    that a watcher (Service.watch()) can tell a loop that turns from one
    that hangs. Settings: access (an AccessList, None for everyone),
    log_interval (seconds over which refusals are summarised).
    """

    settings: tuple[str, ...] = ("access", "log_interval")
    access: AccessList | None = None
    log_interval = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.answered = 0  # requests answered, as far as the handlers have said
        self.refused: collections.Counter[str] = collections.Counter()
        self.refusals = RefusalLog(self.log_interval)
        self._count_lock = threading.Lock()
        super().__init__(*args, **kwargs)

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

    turns = 0

    def service_actions(self) -> None:
        self.turns += 1
        super().service_actions()
        self.refusals.flush()

    def flush_logs(self) -> None:
        """Log what the summarised logs still hold; a step of server_close()."""
        self.refusals.flush(force=True)


class AnyAddressMixIn(socketserver.TCPServer):
    """Binds what socketserver binds, in either address family.

    The family comes from getaddrinfo(), so a host name, an IPv4 or an IPv6
    address all work; ``""`` means every IPv4 interface, as in socketserver,
    and ``"::"`` every IPv6 and IPv4 one at once, as in http.server. Comes
    before TCPServer or UDPServer in the bases. on_socket() makes a server
    on a socket bound elsewhere (systemd's socket activation); the options
    a server sets on its socket go in socket_options(), for both.
    """

    @classmethod
    def on_socket(cls, sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
        """A server on `sock`, which is already bound (and listening, for TCP)."""
        address = sock.getsockname()
        server = cls(address, *args, bind_and_activate=False, **kwargs)
        server.socket.close()
        server.socket = sock
        server.server_address = address
        server.socket_options()
        return server

    def socket_options(self) -> None:
        """Set options on the listening socket; called before it is bound."""

    def __init__(self, server_address: tuple, *args: Any, **kwargs: Any) -> None:
        host, port = server_address[:2]
        socket_type = getattr(self, "socket_type", socket.SOCK_STREAM)
        family, _, _, _, address = socket.getaddrinfo(
            host or None, port, type=socket_type, flags=socket.AI_PASSIVE
        )[0]
        self.address_family = family
        super().__init__(cast(tuple, address), *args, **kwargs)

    def server_bind(self) -> None:
        self.socket_options()
        if self.address_family == socket.AF_INET6:
            try:  # "::" serves IPv4 too
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:
                pass
        super().server_bind()
