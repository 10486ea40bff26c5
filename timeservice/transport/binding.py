"""Binding any address in either family, or serving a socket bound
elsewhere (systemd's socket activation)."""

from __future__ import annotations

import socket
import socketserver
from typing import Any, cast


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
