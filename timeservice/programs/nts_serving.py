"""The server program's NTS: the cookie keys and the TLS context made from
the command line, the NTP servers told to answer NTS requests, and the Key
Establishment server opened beside them, each problem one line."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Callable
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


def serves_nts(args: argparse.Namespace) -> bool:
    """Whether NTP answers NTS requests: with Key Establishment here (on
    --nts-ke, or a socket systemd names nts-ke), or alone, opening what a
    KE server elsewhere sealed with the --nts-cookie-keys secret."""
    return (
        args.nts_ke is not None
        or args.nts_cookie_keys is not None
        or (args.activated and args.nts_cert is not None)
    )


def prepare(prog: str, args: argparse.Namespace) -> tuple[Any, Any] | None:
    """The TLS context (None without a certificate: no Key Establishment
    here) and the cookie keys, read now (before any privilege is dropped);
    None, after one line on stderr, if NTS cannot run here or its files
    cannot be read."""
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


def hand_over(args: argparse.Namespace, uid: int, gid: int) -> None:
    """Give the cookie secret to the account the server becomes, as its
    state: a reload reads it again once root is gone (chronyd's dumps
    are its user's likewise). Where it cannot be given, the reload's one
    line says so."""
    path = cookie_keys_path(args)
    if path is not None and serves_nts(args) and os.path.exists(path):
        try:
            os.chown(path, uid, gid)
        except OSError as exc:
            logger.warning("NTS: cannot give %s to the service's user: %s", path, exc)


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
        settings = ke_settings(args, context, keys, access, ntp_port)

        def make(address: tuple, settings: dict[str, Any] = settings) -> KeServer:
            return KeServer(address, **settings)

        ke = listen(prog, str(host), port, make)
        if ke is None:
            return False
        port = ke.server_address[1]
        opened.append(("NTS-KE", " (TCP, TLS 1.3)", [ke]))
    return True


def inherited_key_establishment(
    args: argparse.Namespace, context: Any, keys: Any, access: Any
) -> Callable[[socket.socket, int], Any] | None:
    """What serves a socket systemd named nts-ke (None without a
    certificate): a KE server sending clients to the NTP port given."""
    if context is None:
        return None
    from ..servers.ntske import KeServer

    def serve(sock: socket.socket, ntp_port: int) -> Any:
        return KeServer.on_socket(
            sock, **ke_settings(args, context, keys, access, ntp_port)
        )

    return serve


def ke_settings(
    args: argparse.Namespace, context: Any, keys: Any, access: Any, ntp_port: int
) -> dict[str, Any]:
    """A KE server's settings: clients sent to --nts-server, or to this
    host's NTP on `ntp_port`."""
    sent_to: tuple[str | None, int] = (None, ntp_port)
    if args.nts_server is not None:  # another host's, on its own port or 123
        named, named_port = split_host_port(args.nts_server)
        sent_to = (named, named_port or ntp.DEFAULT_PORT)
    return {
        "tls_context": context,
        "cookies": keys,
        "ntp_server": sent_to[0],
        "ntp_port": sent_to[1],
        "access": access,
    }


def read_material(args: argparse.Namespace) -> tuple[Any, Any]:
    """The TLS context from the certificate and key the arguments name (None
    without them), and the cookie keys from their file (None where they are
    kept in memory only), both None where NTS is not served; read now (on a
    reload: as the service's user); TlsError, OSError or ValueError if one
    cannot be read."""
    from ..nts import tls
    from ..nts.cookies import CookieKeys

    if not serves_nts(args):
        return None, None
    context = None  # no Key Establishment here: cookies come sealed
    if args.nts_cert is not None:
        context = tls.server_context(args.nts_cert, args.nts_key)
    path = cookie_keys_path(args)
    if path is None:
        return context, None
    return context, CookieKeys.load(path, rotate=args.nts_rotate)
