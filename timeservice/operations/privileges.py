"""Serving without root: the account to become once every socket is bound,
checked before anything listens, and the drop itself, for good."""

from __future__ import annotations

import os
from typing import NamedTuple


class Account(NamedTuple):
    """Who a server serves as once its sockets are bound."""

    user: str
    uid: int
    group: str
    gid: int


def find_account(user: str, group: str | None = None) -> Account:
    """The account `user` names, in `group` or the user's own, that this
    process can become; else LookupError.

    Checked before anything listens, so that a typo costs no half-started
    server. Only root can become another user.
    """
    account = look_up(user, group)
    if os.geteuid() != 0 and (os.geteuid(), os.getegid()) != (
        account.uid,
        account.gid,
    ):
        raise LookupError(f"only root can serve as another user or group ({user})")
    return account


def look_up(user: str, group: str | None = None) -> Account:
    """The account `user` names, in `group` or the user's own; else
    LookupError: what a configuration names, whoever checks it."""
    try:
        import grp
        import pwd
    except ImportError:
        raise LookupError("--user needs a POSIX system") from None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise LookupError(f"no such user: {user!r}") from None
    try:
        found = grp.getgrgid(entry.pw_gid) if group is None else grp.getgrnam(group)
    except KeyError:
        raise LookupError(f"no such group: {group or entry.pw_gid!r}") from None
    return Account(entry.pw_name, entry.pw_uid, found.gr_name, found.gr_gid)


def become(account: Account) -> None:
    """Drop to the account for good: its group alone, then its user.

    The supplementary groups go first and the user last, because each step
    needs the privileges the next one gives up.
    """
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(account.gid)
    os.setuid(account.uid)


def running_as_root() -> bool:
    """Whether the process runs as root (never on Windows)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0
