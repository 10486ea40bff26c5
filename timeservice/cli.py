"""Small pieces the command lines share: argument types and how to show an address."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable


def format_address(address: tuple) -> str:
    """``HOST port PORT``, as http.server shows an address."""
    return f"{address[0]} port {address[1]}"


def program_name(module: str) -> str:
    """What the user typed: the console script's name, or ``python -m MODULE``."""
    name = os.path.basename(sys.argv[0])
    return f"python -m {module}" if name.endswith(".py") else name


def positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse type for numbers above zero (and not NaN)."""

    def convert(text: str) -> float:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0: {text}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


def port_number(text: str) -> int:
    """An argparse type for a TCP port; 0 means any free port."""
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0-65535): {text!r}")
    return int(text)
