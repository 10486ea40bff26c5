"""Which ports only a privileged process may bind on this host: below
Linux's ``net.ipv4.ip_unprivileged_port_start`` (a setting of each network
namespace, for IPv6 too), 1024 unless changed, and 1024 where it cannot be
read, as on other systems."""

from __future__ import annotations

from . import capabilities

PRIVILEGED_BELOW = 1024
SETTING = "/proc/sys/net/ipv4/ip_unprivileged_port_start"


def unprivileged_port_start() -> int:
    """The lowest port an unprivileged process may bind: every port below
    it needs root or CAP_NET_BIND_SERVICE."""
    if capabilities.PORTABLE:
        return PRIVILEGED_BELOW
    try:
        with open(SETTING) as setting:
            return int(setting.read())
    except (OSError, ValueError):
        return PRIVILEGED_BELOW
