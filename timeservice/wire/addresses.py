"""Addresses as people write them, and as the logs show them: pure text."""

from __future__ import annotations


def split_host_port(text: str) -> tuple[str, int | None]:
    """``HOST``, ``HOST:PORT``, ``[IPV6]`` or ``[IPV6]:PORT``, as the host and
    the port (None if not given); ValueError for anything else."""
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or not host or (after and not after.startswith(":")):
            raise ValueError("an IPv6 address goes in brackets: [2001:db8::1]:123")
        port_text = after[1:] if after else None
    else:
        host, colon, port_text = text.partition(":")
        if ":" in port_text:
            raise ValueError("an IPv6 address goes in brackets: [2001:db8::1]:123")
        if not colon:
            port_text = None
    if not host:
        raise ValueError("no host")
    if port_text is None:
        return host, None
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"not a port number: {port_text!r}")
    return host, int(port_text)


def format_address(address: tuple) -> str:
    """``HOST port PORT``, as http.server shows an address."""
    return f"{address[0]} port {address[1]}"
