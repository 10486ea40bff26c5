"""Settings given to one server only: the class variables its parts name,
taken as constructor keywords."""

from __future__ import annotations

import socketserver
from typing import Any


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
