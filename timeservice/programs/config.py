"""A server's configuration file (the time server's, the exporter's):
TOML, one key for each of its long options (``max_per_host = 64``, ``allow
= ["192.0.2.0/24"]``, ``ntp = 123``, ``port = 8037``), checked by the very
declarations the command line is (programs/server_options.py, skew.py), so
the two cannot drift apart. An option given on the command line replaces
the file's value, lists included.

A key that is no option, or a value its option refuses, is one line naming
the file, the key and what is wrong. A file named by ``--config`` must be
there; the one the systemd units name (TIMESERVICE_CONFIG) may be missing,
which means the defaults.
"""

from __future__ import annotations

import argparse
import copy
import os
import tomllib
from collections.abc import Sequence
from typing import Any, NoReturn

from .options import Parser, UsageError

ENVIRONMENT = "TIMESERVICE_CONFIG"  # the units' file, which may be missing
NOT_KEYS = {"help", "version", "config", "check_config"}


class ConfigError(UsageError):
    """A configuration file that cannot be used; the message is one line."""


class Checking(argparse.ArgumentParser):
    """The parser's declarations, raising ConfigError instead of exiting."""

    def error(self, message: str) -> NoReturn:
        """Raise instead of printing usage and exiting."""
        raise ConfigError(message)


def actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's options by key: each one's dest, the file's key."""
    return {
        action.dest: action
        for action in parser._actions  # argparse's one list of its declarations
        if action.dest not in NOT_KEYS
        and action.dest != argparse.SUPPRESS
        and not (not action.option_strings and action.nargs in ("*", "+"))
    }  # a list of positionals (the skew check's targets) is the command line's


def as_arguments(key: str, value: Any, action: argparse.Action) -> list[str]:
    """A key's value as the command line would give it; ConfigError for a
    value of the wrong kind."""
    if action.nargs == 0:  # a flag: store_true
        if not isinstance(value, bool):
            raise ConfigError("must be true or false")
        return [action.option_strings[-1]] if value else []
    if isinstance(action, ReplacedList):  # --allow, given many times
        if not isinstance(value, list):
            raise ConfigError('must be a list, such as ["192.0.2.0/24"]')
        words = []
        for item in value:
            if isinstance(item, (bool, list, dict)):
                raise ConfigError(f"{item!r} is no value of it")
            words += [action.option_strings[-1], str(item)]
        return words
    if isinstance(value, (bool, list, dict)):
        raise ConfigError("must be a number or a string")
    if not action.option_strings:  # the positional port
        return [str(value)]
    return [action.option_strings[-1], str(value)]


def read(
    parser: argparse.ArgumentParser, path: str, must_exist: bool = True
) -> argparse.Namespace | None:
    """The values the file at `path` gives, checked key by key by the
    parser's own declarations; None for a missing file that may be missing;
    ConfigError, naming the file and the key, for anything wrong."""
    try:
        with open(path, "rb") as file:
            content = tomllib.load(file)
    except FileNotFoundError:
        if must_exist:
            raise ConfigError(f"{path}: no such file") from None
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not TOML: {exc}") from None
    known = actions(parser)
    values = argparse.Namespace()
    for key, value in content.items():
        action = known.get(key)
        if action is None:
            raise ConfigError(f"{path}: {key}: no such setting")
        try:
            words = as_arguments(key, value, action)
            checking = Checking(add_help=False)
            checking._add_action(copy.copy(action))  # the same declaration
            parsed = checking.parse_args(words)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {key}: {exc}") from None
        setattr(values, key, getattr(parsed, key))
    values.given_in_file = set(vars(values))
    return values


class ReplacedList(argparse.Action):
    """An option that may be given many times (--allow), each value added
    to a list; on the command line, its values replace the file's instead
    of adding to them."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        """Start the list afresh the first time, then add to it."""
        started: set[str] = getattr(namespace, "lists_from_command_line", set())
        items = [] if self.dest not in started else list(getattr(namespace, self.dest))
        items.append(values)
        setattr(namespace, self.dest, items)
        namespace.lists_from_command_line = started | {self.dest}


def parse(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    path: str | None,
    environment: str | None = ENVIRONMENT,
) -> argparse.Namespace:
    """The command line over the file's values: what the file at `path`
    gives (None: the file `environment` names, if there is one), then `argv`."""
    if path is None:
        path = None if environment is None else os.environ.get(environment)
        must_exist = False
    else:
        must_exist = True
    start = None if path is None else read(parser, path, must_exist)
    namespace = argparse.Namespace() if start is None else start
    from_file = set(getattr(namespace, "given_in_file", ()))
    # argparse gives a positional that is not on the command line its
    # default, over what the namespace holds: the file's value is that default.
    positionals = [
        action
        for action in parser._actions  # argparse's one list of its declarations
        if not action.option_strings and action.dest in from_file
    ]
    defaults = [action.default for action in positionals]
    for action in positionals:
        action.default = getattr(namespace, action.dest)
    try:
        args = parser.parse_args(argv, namespace=namespace)
    finally:
        for action, default in zip(positionals, defaults, strict=True):
            action.default = default
    if getattr(args, "verbose", False) and getattr(args, "quiet", False):
        # Each file's and the command line's: the command line's one stands.
        setattr(args, "verbose" if "verbose" in from_file else "quiet", False)
    args.config_path = path
    args.config_found = start is not None
    return args


class Declared:
    """An argument group whose options are declared once: argparse's
    add_argument() (the option, its check and help, which make the
    configuration file's key and the documentation's row too), and with
    `reload=True`, that it may change when the server reloads (its dest
    added to the parser's `reloadable`)."""

    def __init__(self, parser: Parser, title: str) -> None:
        self.parser, self.group = parser, parser.add_argument_group(title)

    def __call__(self, *names: str, reload: bool = False, **kwargs: Any) -> Any:
        """Add the option to the group; note it as reloadable if it is."""
        action = self.group.add_argument(*names, **kwargs)
        if reload:
            self.parser.reloadable.add(action.dest)
        return action


def config_file(argv: Sequence[str]) -> str | None:
    """The --config FILE that `argv` names, before the file is read; None."""
    finding = argparse.ArgumentParser(add_help=False)
    finding.add_argument("--config")
    known, _ = finding.parse_known_args(argv)
    return known.config
