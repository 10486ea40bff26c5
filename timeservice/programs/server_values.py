"""The values the server's options take, as argparse types: each checks
its text and says what is wrong in the words a usage error prints."""

from __future__ import annotations

import argparse
import socket

from ..clients.targets import split_host_port
from ..policy.access import parse_subnet
from ..wire import ntp


def upstream_address(text: str) -> tuple | None:
    """An argparse type for --upstream: ``HOST[:PORT]`` resolved to an
    address (an IPv6 one in brackets), or ``none``."""
    if text == "none":
        return None
    try:
        host, port = split_host_port(text)
        family, _, _, _, address = socket.getaddrinfo(
            host, port or ntp.DEFAULT_PORT, type=socket.SOCK_DGRAM
        )[0]
    except (ValueError, OSError, UnicodeError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return address


def byte_size(text: str) -> int:
    """An argparse type for a size in bytes: a number, or with K, M or G
    (powers of 1,024)."""
    unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:].upper())
    number = text[:-1] if unit else text
    try:
        size = int(number) * (unit or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r}") from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return size


def reference_id(text: str) -> bytes:
    """An argparse type for --upstream-id: see ntp.reference_id()."""
    try:
        return ntp.reference_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def subnet(text: str) -> str:
    """An argparse type for --allow and --deny: checked here, parsed later."""
    try:
        parse_subnet(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def nts_server(text: str) -> str:
    """An argparse type for --nts-server: ``HOST[:PORT]``, checked here."""
    try:
        split_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return text
