"""The server's configuration file, its reload on SIGHUP (with workers, a
connection kept), and the metrics summed across workers."""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import socket
import urllib.request
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    TIMEOUT,
    make_lab,
    needs_nts,
    one_line,
    server_process,
    until,
)

from timeservice.client import TimeClient
from timeservice.programs import server as server_program
from timeservice.programs.config import ENVIRONMENT, actions
from timeservice.programs.server_options import build_parser, parse_arguments


def written(tmp_path, text: str, name: str = "timeservice.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_one_key_for_each_long_option(tmp_path):
    path = written(
        tmp_path,
        'max_per_host = 16\nallow = ["192.0.2.0/24", "127.0.0.1"]\nntp = 0\n'
        'port = 18037\nutc = true\nbind = "::1"\nidle_timeout = 2.5\n',
    )
    args = parse_arguments("server", ["--config", path])
    assert args.max_per_host == 16 and args.idle_timeout == 2.5
    assert args.allow == ["192.0.2.0/24", "127.0.0.1"]
    assert (args.ntp, args.port, args.utc, args.bind) == (0, 18037, True, "::1")
    assert args.config_found


def test_the_command_line_replaces_the_files_values_lists_included(tmp_path):
    path = written(
        tmp_path, 'max_per_host = 16\nallow = ["192.0.2.0/24"]\nverbose = true\n'
    )
    args = parse_arguments(
        "server",
        ["--config", path, "--max-per-host", "3", "--allow", "198.51.100.0/24", "-q"],
    )
    assert args.max_per_host == 3
    assert args.allow == ["198.51.100.0/24"]  # replaced, not added to
    assert args.quiet and not args.verbose  # the command line's one stands
    assert parse_arguments("server", ["--config", path]).allow == ["192.0.2.0/24"]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("max_per_hots = 3\n", "max_per_hots: no such setting"),
        ('max_per_host = "x"\n', "max_per_host: argument --max-per-host: invalid"),
        ("max_per_host = [1]\n", "max_per_host: must be a number or a string"),
        ('allow = "192.0.2.0/24"\n', "allow: must be a list"),
        ('allow = ["192.0.2.0/33"]\n', "allow: argument --allow: not an IPv4"),
        ("utc = 1\n", "utc: must be true or false"),
        ("idle_timeout = -1\n", "idle_timeout: argument --idle-timeout: must be above"),
        ("max_per_host = \n", "not TOML"),
        ("config = 'x'\n", "config: no such setting"),
    ],
)
def test_a_wrong_key_or_value_names_the_file_the_key_and_what_is_wrong(
    tmp_path, capsys, text, problem
):
    path = written(tmp_path, text)
    with pytest.raises(SystemExit) as exited:
        parse_arguments("server", ["--config", path])
    assert exited.value.code == 2
    err = one_line(capsys.readouterr().err)
    assert f"{path}: {problem}" in err, err


def test_a_config_named_must_be_there_the_units_may_be_missing(
    tmp_path, capsys, monkeypatch
):
    missing = str(tmp_path / "missing.toml")
    with pytest.raises(SystemExit) as exited:
        parse_arguments("server", ["--config", missing])
    assert exited.value.code == 2
    assert f"{missing}: no such file" in one_line(capsys.readouterr().err)
    monkeypatch.setenv(ENVIRONMENT, missing)  # as the systemd unit names it
    args = parse_arguments("server", [])
    assert args.config_path == missing and not args.config_found
    with server_process("0", env={ENVIRONMENT: missing}) as (process, _):
        process.terminate()
        assert process.wait(TIMEOUT) == 0
        log = process.stderr.read()
    assert f"no {missing}: the defaults and the command line" in log


def test_check_config_says_whether_the_file_and_options_are_good(tmp_path, capsys):
    good = written(tmp_path, "ntp = 0\nlocal_stratum = 10\n")
    assert server_program.main(["--config", good, "--check-config"]) == 0
    assert f"{good}: the configuration is good" in capsys.readouterr().out
    bad = written(tmp_path, "local_stratum = 10\n", "bad.toml")  # without ntp
    with pytest.raises(SystemExit) as exited:
        server_program.main(["--config", bad, "--check-config"])
    assert exited.value.code == 2
    assert "--local-stratum goes with --ntp" in one_line(capsys.readouterr().err)


def test_every_option_is_a_key_and_the_docs_list_each_with_its_reload(tmp_path):
    """The documentation's table of keys is the parser's: each key, and
    whether it may change on a reload, as the option declares it."""
    parser = build_parser("server")
    page = (ROOT / "docs" / "operating.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| (yes|restart) \|", page, re.MULTILINE))
    keys = actions(parser)
    assert set(rows) == set(keys)
    for key in keys:
        assert rows[key] == ("yes" if key in parser.reloadable else "restart"), key


def test_the_fleet_example_in_the_docs_is_a_good_configuration(tmp_path, capsys):
    page = (ROOT / "docs" / "operating.md").read_text()
    example = re.search(r"```toml\n(.*?)```", page, re.DOTALL)
    assert example, "no fleet example"
    # The user the example names is the fleet's; this machine's stands in.
    me = pwd.getpwuid(os.geteuid()).pw_name
    text, named = re.subn(r'^user = "\w+"', f'user = "{me}"', example[1], flags=re.M)
    assert named == 1
    path = written(tmp_path, text)
    assert server_program.main(["--config", path, "--check-config"]) == 0
    args = parse_arguments("server", ["--config", path])
    assert (args.ntp, args.workers, args.deny) == (123, 2, ["10.20.30.40"])
    missing = written(tmp_path, 'user = "no-such-user-here"\n', "missing.toml")
    assert server_program.main(["--config", missing, "--check-config"]) == 2
    assert "no such user: 'no-such-user-here'" in capsys.readouterr().err


# Reloading, with workers, over real connections


def new_client_answer(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"send time\n")
        return sock.makefile("rb").readline().decode()


@pytest.mark.slow
def test_a_reload_changes_the_access_list_for_new_clients_and_keeps_the_open(tmp_path):
    path = written(tmp_path, 'allow = ["127.0.0.0/8"]\n')
    options = ("0", "-v", "--workers", "2", "--config", path)
    with server_process(*options) as (process, port):
        for _ in range(2):  # both workers have started
            until(process.stderr, re.compile(r"worker \d started"))
        with TimeClient("127.0.0.1", port) as kept:  # open before, and after
            kept.get_time()
            with open(path, "w") as config:
                config.write('deny = ["127.0.0.0/8"]\n')
            process.send_signal(signal.SIGHUP)
            reloaded = re.compile(r"(worker reloaded|SIGHUP received; reloaded) ")
            for _ in range(3):  # the parent's line, and each worker's
                until(process.stderr, reloaded, lines=200)
            for _ in range(4):  # whichever worker takes it
                assert new_client_answer(port) == "ERR not allowed\n"
            kept.get_time()  # its connection stays, on the rules it came with
            with open(path, "w") as config:
                config.write("allow = [\n")  # not TOML
            process.send_signal(signal.SIGHUP)
            until(
                process.stderr, re.compile("reload failed; the configuration in force")
            )
            assert new_client_answer(port) == "ERR not allowed\n"  # still in force
            kept.get_time()
        process.terminate()
        assert process.wait(TIMEOUT) == 0


@pytest.mark.slow
@needs_nts
def test_a_reload_reads_the_nts_certificate_and_cookie_keys_again(tmp_path, lab):
    from timeservice.clients.nts import ask_nts_once, establish
    from timeservice.nts import TlsError
    from timeservice.nts.cookies import save
    from timeservice.wire.nts import NtsError

    (tmp_path / "second").mkdir()
    second = make_lab(tmp_path / "second")  # another CA, another certificate
    keys, ready = tmp_path / "keys", tmp_path / "ready.json"
    path = written(
        tmp_path,
        f"no_line = true\nntp = 0\nlocal_stratum = 10\nnts_ke = 0\n"
        f'nts_cert = "{lab.cert}"\nnts_key = "{lab.key}"\n'
        f'nts_cookie_keys = "{keys}"\nready_file = "{ready}"\n',
    )
    options = ("-v", "--workers", "2", "--config", path)
    with server_process(*options) as (process, _):
        for _ in range(2):
            until(process.stderr, re.compile(r"worker \d started"))
        served = json.loads(ready.read_text())["serving"]
        ke = next(entry["port"] for entry in served if entry["protocol"] == "nts-ke")
        before = establish("127.0.0.1", ke, ca=lab.ca, timeout=TIMEOUT)
        ask_nts_once(before, timeout=TIMEOUT)
        # New material: the second lab's certificate, and a key file whose
        # one key is new, so that cookies sealed before no longer open.
        text = Path(path).read_text()
        text = text.replace(lab.cert, second.cert).replace(lab.key, second.key)
        Path(path).write_text(text)
        save(str(keys), os.urandom(32))
        process.send_signal(signal.SIGHUP)
        reloaded = re.compile(r"(worker reloaded|SIGHUP received; reloaded) ")
        for _ in range(3):
            until(process.stderr, reloaded, lines=200)
        with pytest.raises(TlsError):  # the first lab's CA no longer vouches
            establish("127.0.0.1", ke, ca=lab.ca, timeout=TIMEOUT)
        after = establish("127.0.0.1", ke, ca=second.ca, timeout=TIMEOUT)
        for _ in range(4):  # whichever worker takes each datagram
            ask_nts_once(after, timeout=TIMEOUT)
        with pytest.raises(NtsError, match="NAK"):  # sealed with a key now gone
            ask_nts_once(before, timeout=TIMEOUT)
        # A key file that cannot be read changes nothing.
        keys.write_text("not keys")
        process.send_signal(signal.SIGHUP)
        until(process.stderr, re.compile("reload failed; the configuration in force"))
        ask_nts_once(after, timeout=TIMEOUT)
        process.terminate()
        assert process.wait(TIMEOUT) == 0


def scrape(port: int) -> str:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT
    ) as r:
        return r.read().decode()


def requests_counted(text: str) -> int:
    found = re.search(r'timeservice_requests_total\{protocol="line".*\} (\d+)', text)
    assert found, text
    return int(found[1])


@pytest.mark.slow
def test_metrics_sum_the_workers_and_never_go_back_when_one_is_replaced():
    options = ("0", "-v", "--workers", "2", "--metrics", "0")
    with server_process(*options) as (process, port):
        started = re.compile(r"worker (\d) started, pid (\d+)")
        pids = {}
        for _ in range(2):
            found = until(process.stderr, started)
            pids[int(found[1])] = int(found[2])
        metrics = int(
            until(process.stdout, re.compile(r"metrics on \S+ port (\d+)"))[1]
        )
        with TimeClient("127.0.0.1", port) as asking:  # one connection: one worker
            for _ in range(7):
                asking.get_time()
            reported = re.compile(r"worker (\d) reported (\d+) requests")
            heard: dict[int, int] = {}  # each worker's latest report
            for _ in range(20):  # each report that changed, until both are in
                found = until(process.stderr, reported, lines=500)
                heard[int(found[1])] = int(found[2])
                if sorted(heard.values()) == [0, 7]:
                    break
            assert sorted(heard.values()) == [0, 7], heard
        counted = next(slot for slot, count in heard.items() if count == 7)
        text = scrape(metrics)
        assert requests_counted(text) == 7
        assert re.search(r'timeservice_threads\{worker="parent"\} \d+', text)
        assert len(re.findall(r'timeservice_threads\{worker="\d"\}', text)) == 2
        # The worker that counted them dies; another takes its place, and
        # what it counted stays counted.
        os.kill(pids[counted], signal.SIGKILL)
        until(process.stderr, re.compile(rf"worker {counted} started, pid"), lines=500)
        assert requests_counted(scrape(metrics)) == 7
        process.terminate()
        assert process.wait(TIMEOUT) == 0
