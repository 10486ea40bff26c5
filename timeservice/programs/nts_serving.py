"""The server program's NTS: the cookie keys and the TLS context made from
the command line, the NTP servers told to answer NTS requests, and the Key
Establishment server opened beside them, each problem one line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from ..clients.targets import split_host_port
from ..wire import ntp
from .opening import Opened
from .options import listen

logger = logging.getLogger(__name__)

KEYS_FILE = "nts-cookie-keys"  # in the service's StateDirectory= under systemd


def cookie_keys_path(args: argparse.Namespace) -> str | None:
    """Where the cookie keys are kept: --nts-cookie-keys, or the service's
    state directory under systemd; None: in memory only."""
    if args.nts_cookie_keys is not None:
        return str(args.nts_cookie_keys)
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return os.path.join(state, KEYS_FILE) if state else None


def prepare(prog: str, args: argparse.Namespace) -> tuple[Any, Any] | None:
    """The TLS context and the cookie keys for --nts-ke, read now (before
    any privilege is dropped); None, after one line on stderr, if NTS cannot
    run here or its files cannot be read."""
    from ..nts import Unavailable, require

    try:
        require()
    except Unavailable as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None
    from ..nts import tls
    from ..nts.cookies import CookieKeys

    path = cookie_keys_path(args)
    try:
        context, keys = read_material(args)
        keys = keys or CookieKeys.new(rotate=args.nts_rotate)
    except (OSError, ValueError, tls.TlsError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        where = getattr(exc, "filename", None)
        said = f"{where}: {reason}" if where else reason
        print(f"{prog}: cannot serve NTS: {said}", file=sys.stderr)
        return None
    if path is None:
        logger.warning(
            "NTS: the cookie keys are kept in memory only: clients' cookies "
            "will not open after a restart (--nts-cookie-keys FILE keeps them)"
        )
    return context, keys


def open_key_establishment(
    prog: str,
    args: argparse.Namespace,
    context: Any,
    keys: Any,
    opened: Opened,
    access: Any,
) -> bool:
    """The Key Establishment server on --nts-ke, on each address the NTP
    servers listen on, sending clients to their port; False (after one line)
    if it cannot listen."""
    from ..servers.ntp import NtpServer
    from ..servers.ntske import KeServer

    ntp_servers = [
        s for _, _, group in opened for s in group if isinstance(s, NtpServer)
    ]
    port = args.nts_ke
    for ntp_server in ntp_servers:
        host, ntp_port = ntp_server.server_address[:2]

        elsewhere: tuple[str | None, int] = (None, ntp_port)
        if args.nts_server is not None:  # another host's, on its own port or 123
            named, named_port = split_host_port(args.nts_server)
            elsewhere = (named, named_port or ntp.DEFAULT_PORT)

        def make(address: tuple, sent_to: tuple = elsewhere) -> KeServer:
            return KeServer(
                address,
                tls_context=context,
                cookies=keys,
                ntp_server=sent_to[0],
                ntp_port=sent_to[1],
                access=access,
            )

        ke = listen(prog, str(host), port, make)
        if ke is None:
            return False
        port = ke.server_address[1]
        opened.append(("NTS-KE", " (TCP, TLS 1.3)", [ke]))
    return True


def read_material(args: argparse.Namespace) -> tuple[Any, Any]:
    """The TLS context from the certificate and key the arguments name, and
    the cookie keys from their file (None where they are kept in memory
    only), read now (on a reload: as the service's user); TlsError,
    OSError or ValueError if one cannot be read."""
    from ..nts import tls
    from ..nts.cookies import CookieKeys

    context = tls.server_context(args.nts_cert, args.nts_key)
    path = cookie_keys_path(args)
    if path is None:
        return context, None
    return context, CookieKeys.load(path, rotate=args.nts_rotate)
