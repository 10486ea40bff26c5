"""Settings given to one server only: the class variables its parts name,
taken as constructor keywords."""

from __future__ import annotations

import socketserver
from typing import Any


def known_settings(server: object) -> set[str]:
    """The class variables a server's parts name as settings."""
    return {
        name
        for klass in type(server).__mro__
        for name in vars(klass).get("settings", ())
    }


def apply_settings(server: object, settings: dict[str, Any]) -> None:
    """Set, on this server only, the class variables its parts name as settings."""
    known = known_settings(server)
    unknown = sorted(settings.keys() - known)
    if unknown:
        raise TypeError(
            f"unknown setting(s) {', '.join(unknown)}; known: {sorted(known)}"
        )
    # Every setting an instance attribute: read for each request, and an
    # instance's are quicker to read than a class's.
    vars(server).update({name: getattr(server, name) for name in known})
    vars(server).update(settings)


class Reconfigurable(socketserver.BaseServer):
    """The hook every part that keeps state made from a setting extends."""

    def settings_changed(self, names: set[str]) -> None:
        """May be extended (calling super()): settings `names` changed."""


class SettingsMixIn(Reconfigurable):
    """Takes as constructor keywords the class variables its server's parts
    name in `settings`, for this server only; comes first in the bases.
    reconfigure() changes them while it serves: the parts that keep state
    made from them extend settings_changed(), and new connections and
    datagrams get the new values."""

    def __init__(
        self,
        server_address: tuple,
        handler_class: type[socketserver.BaseRequestHandler],
        bind_and_activate: bool = True,
        **settings: Any,
    ) -> None:
        apply_settings(self, settings)
        super().__init__(server_address, handler_class, bind_and_activate)  # type: ignore[call-arg]

    def reconfigure(self, **settings: Any) -> None:
        """Change settings while serving (TypeError for one it has not);
        those that differ are applied, and settings_changed() told."""
        known = known_settings(self)
        unknown = sorted(settings.keys() - known)
        if unknown:
            raise TypeError(f"unknown setting(s) {', '.join(unknown)}")
        changed = {
            name: value
            for name, value in settings.items()
            if getattr(self, name) != value
        }
        vars(self).update(changed)
        if changed:
            self.settings_changed(set(changed))
