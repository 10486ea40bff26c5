"""The README and docs/ say what is true: the README's commands run as shown,
on free ports (those that need root, an install or two machines are not run,
for the reasons listed here),
the library page's examples run and its names import, every link leads
somewhere, and the README stays short."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    TIMEOUT,
    free_port,
    readline_within,
    server_process,
    udp_socket,
)

README = ROOT / "README.md"
DOCS = ROOT / "docs"
MOST_LINES = 300
# The README's commands the tests do not run, each with the reason; every
# other one runs as shown, on free ports.
NOT_RUN = {
    "scripts/test": "it is the tests",
    "pip install": "it installs",
    "pipx install": "it installs",
    "-m venv": "it installs",
    "sudo ": "it needs root and changes the machine",
    "192.0.2.10": "it takes two machines",
}
DEFAULT_PORT = 8037  # what the server and the client take when none is given


def blocks(path: Path, language: str) -> list[list[str]]:
    """The lines of each fenced code block in `language`."""
    found, inside = [], None
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if inside is None and stripped == f"```{language}":
            inside = []
        elif inside is not None and stripped == "```":
            found.append(inside)
            inside = None
        elif inside is not None:
            inside.append(stripped if language == "sh" else line)
    return found


def why_not_run(line: str) -> str | None:
    return next((why for part, why in NOT_RUN.items() if part in line), None)


def runnable(block: list[str]) -> list[str]:
    return [line for line in block if line and why_not_run(line) is None]


README_BLOCKS = [runnable(block) for block in blocks(README, "sh")]


def on_free_ports(block: list[str]) -> list[str]:
    """The block with every port it names, and the default one it leaves
    unnamed, moved to a port free now: a server left running on 8037 (from
    the README, say) then fails nothing."""
    numbers = {int(n) for line in block for n in re.findall(r"\b(\d{4,5})\b", line)}
    moved = {port: free_port() for port in numbers | {DEFAULT_PORT}}
    out = []
    for line in block:
        line = re.sub(r"\b(\d{4,5})\b", lambda m: str(moved[int(m[1])]), line)
        words = line.split()
        if "timeservice.server" in words and "--no-line" not in words:
            after = words.index("timeservice.server") + 1
            if after == len(words) or not words[after].isdigit():
                words.insert(after, str(moved[DEFAULT_PORT]))
        elif "timeservice.client" in words and not any(
            re.fullmatch(r"\S+:\d+", word) for word in line.split("#")[0].split()
        ):
            at = words.index("timeservice.client") + 1
            words.insert(at, f"127.0.0.1:{moved[DEFAULT_PORT]}")
        out.append(" ".join(words))
    return out


def command_of(line: str) -> str:
    """The shell command on a line, its trailing comment dropped, `python`
    the interpreter running the tests."""
    words = shlex.split(line, comments=True)
    if words and words[0] in ("python", "python3"):
        words[0] = sys.executable
    return shlex.join(words)


def test_the_readme_is_short_and_names_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= MOST_LINES
    assert "python3 -m timeservice" in text and "scripts/test" in text


@pytest.mark.slow
@pytest.mark.parametrize(
    "block", [b for b in README_BLOCKS if b], ids=lambda b: b[0][:40]
)
def test_the_readme_commands_run_as_shown(block, tmp_path):
    if any(" nc " in line for line in block) and shutil.which("nc") is None:
        pytest.skip("needs nc (Debian: netcat-openbsd; scripts/test installs it)")
    background = []
    try:
        for line in on_free_ports(block):
            line = line.replace("/tmp/", f"{tmp_path}/")  # files of its own
            if line.split("#")[0].rstrip().endswith("&"):  # a server for the rest
                words = shlex.split(line.split("&")[0])
                words[0] = sys.executable
                process = subprocess.Popen(
                    words,
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                background.append(process)
                started = readline_within(process.stdout)
                if not started.startswith("Serving "):
                    process.kill()
                    _, err = process.communicate(timeout=TIMEOUT)
                    raise AssertionError(f"{line}: {started!r}; stderr: {err}")
                continue
            result = subprocess.run(
                ["bash", "-c", command_of(line) if "|" not in line else line],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, (line, result.stdout, result.stderr)
            assert "Traceback" not in result.stderr
    finally:
        for process in background:
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=TIMEOUT)  # closes its pipes
            assert process.returncode == 0, err


def test_what_the_readme_does_not_run_is_known_and_its_notes_speak_to_readers():
    skipped = [
        line for block in blocks(README, "sh") for line in block if why_not_run(line)
    ]
    assert skipped  # installs, root, two machines, scripts/test
    assert "not run by the tests" not in README.read_text()


def test_each_example_of_the_library_page_runs_alone_and_its_names_import():
    examples = blocks(DOCS / "library.md", "python")
    assert len(examples) >= 5
    for block in examples:  # each in a namespace of its own
        # The examples start servers on loopback, port 0, and stop them.
        code = compile("\n".join(block), str(DOCS / "library.md"), "exec")
        exec(code, {"__name__": "example"})
    documented = re.findall(
        r"^\| \w+ \| `(timeservice\.[\w.]+)`", (DOCS / "library.md").read_text(), re.M
    )
    assert documented
    for module in documented:
        __import__(module)


def test_every_link_leads_somewhere():
    for page in [README, *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), (page.name, target)


def test_the_root_dispersion_the_docs_give_is_what_goes_on_the_wire(serving):
    from timeservice.server import NtpServer
    from timeservice.wire import ntp

    server = serving(NtpServer(("127.0.0.1", 0), local_stratum=10, upstream=None))
    with udp_socket() as sock:
        sock.sendto(ntp.request_packet(1), server.server_address)
        reply = ntp.Packet.unpack(sock.recv(512))
    assert reply.root_dispersion == 1  # one unit of 16.16: 2^-16 s
    assert "goes on the wire as 2^-16 s" in (DOCS / "protocols.md").read_text()


@pytest.mark.skipif(
    shutil.which("ntpdig") is None or not hasattr(os, "geteuid") or os.geteuid(),
    reason="needs ntpdig (Debian: ntpsec-ntpdig) and root, for port 123",
)
def test_what_the_readme_says_ntpdig_prints_for_an_unsynchronised_server():
    with server_process("0", "--ntp", "123", "--upstream", "none", "-q"):
        result = subprocess.run(
            ["ntpdig", "-t", "2", "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    quoted = "Response dropped: stratum 0, probable KOD packet"
    assert quoted in result.stdout + result.stderr
    assert f"ntpdig prints\n  `{quoted}`" in README.read_text()


def test_the_readme_tells_a_newcomer_what_the_first_hour_needs():
    """How long the suite takes and its quick selection, how to stop a server
    started with `&`, what a user sees, and what is proven against what."""
    text = " ".join(README.read_text().split())
    assert "scripts/test --quick" in text and "about five minutes" in text
    assert "kill %1" in text
    assert "Serving time on 127.0.0.1 port 8037 ..." in text
    assert "INFO SIGTERM received, shutting down" in text
    assert "busybox rdate" in text and "Python 3.11 or newer" in text


# The exercise, readable first

EXERCISE = DOCS / "aufgabe.py"


def test_the_exercise_runs_as_shown_in_about_40_lines():
    run = subprocess.run(
        [sys.executable, str(EXERCISE), "0"],  # 0: any free port, not 5000
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert run.returncode == 0, run.stderr
    assert re.fullmatch(
        r"Antwort des Servers: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d\n",
        run.stdout,
    )
    assert len(EXERCISE.read_text().splitlines()) <= 45


def test_the_course_page_starts_with_the_exercise_and_maps_it_to_the_code():
    page = (DOCS / "kurs.md").read_text()
    code = EXERCISE.read_text()
    quoted = ["\n".join(block) for block in blocks(DOCS / "kurs.md", "python")]
    assert quoted and all(block in code for block in quoted)  # the file's own lines
    assert page.index("aufgabe.py") < page.index("## Wo steht der Code?")
    # Every file the table names exists and holds what the row names in it.
    rows = re.findall(r"`(timeservice/[\w/]+\.py)`: ((?:(?!`timeservice/)[^|])+)", page)
    assert len(rows) >= 6
    for path, names in rows:
        source = (ROOT / path).read_text()
        for name in re.findall(r"`(\w+)(?:\.(\w+))?\(\)`", names):
            for part in filter(None, name):
                assert re.search(rf"(def|class) {part}\b", source), (path, part)


def test_a_student_finds_the_exercise_from_the_readme_first_screen():
    first_screen = "\n".join(README.read_text().splitlines()[:30])
    assert "docs/aufgabe.py" in first_screen and "docs/kurs.md" in first_screen
    # The first file a student opens says where the server is.
    face = (ROOT / "timeservice" / "server.py").read_text()
    assert "timeservice/servers/line.py" in face


def test_the_readme_says_python3_throughout():
    """Debian and Ubuntu have no `python` command unless one is installed."""
    for block in blocks(README, "sh"):
        for line in block:
            assert not re.search(r"(^|[\s(])python\s", line), line


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_the_nts_lab_example_runs_as_shown(tmp_path, lab):
    """docs/nts.md's certificate for a lab, made with openssl as shown, serves
    NTS that the client authenticates (`lab`: the nts extra is here)."""
    [block] = blocks(DOCS / "nts.md", "sh")
    background = []
    try:
        for line in on_free_ports(block):
            if line.endswith("&"):
                words = shlex.split(line[:-1])
                words[0] = sys.executable
                process = subprocess.Popen(
                    words, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True,
                )  # fmt: skip
                background.append(process)
                assert readline_within(process.stdout).startswith("Serving NTP")
                continue
            command = line.replace("python3 -m", f"{sys.executable} -m")
            result = subprocess.run(
                ["bash", "-c", command],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, (line, result.stderr)
    finally:
        for process in background:
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=TIMEOUT)
            assert process.returncode == 0, err
    assert "offset" in result.stdout  # the last line: the client's estimate
