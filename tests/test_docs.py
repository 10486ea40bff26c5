"""The README and docs/ say what is true: the README's commands run as shown
(those that need root, an install or two machines say so and are not run),
the library page's examples run and its names import, every link leads
somewhere, and the README stays short."""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TIMEOUT, readline_within

README = ROOT / "README.md"
DOCS = ROOT / "docs"
NOT_RUN = "not run by the tests"
MOST_LINES = 300


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


def command_of(line: str) -> str:
    """The shell command on a line, its trailing comment dropped, `python`
    the interpreter running the tests."""
    words = shlex.split(line, comments=True)
    if words and words[0] in ("python", "python3"):
        words[0] = sys.executable
    return shlex.join(words)


def runnable(block: list[str]) -> list[str]:
    return [line for line in block if line and NOT_RUN not in line]


README_BLOCKS = [runnable(block) for block in blocks(README, "sh")]


def test_the_readme_is_short_and_names_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= MOST_LINES
    assert "python -m timeservice" in text and "scripts/test" in text


@pytest.mark.slow
@pytest.mark.parametrize(
    "block", [b for b in README_BLOCKS if b], ids=lambda b: b[0][:40]
)
def test_the_readme_commands_run_as_shown(block):
    if any(" nc " in line for line in block) and shutil.which("nc") is None:
        pytest.skip("needs nc (Debian: netcat-openbsd; scripts/test installs it)")
    background = []
    try:
        for line in block:
            if line.split("#")[0].rstrip().endswith("&"):  # a server for the rest
                words = shlex.split(line.split("&")[0])
                words[0] = sys.executable
                process = subprocess.Popen(
                    words,
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
                background.append(process)
                assert readline_within(process.stdout).startswith("Serving ")
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
            assert process.wait(TIMEOUT) == 0
            process.stdout.close()


def test_what_the_readme_does_not_run_says_why():
    skipped = [
        line for block in blocks(README, "sh") for line in block if NOT_RUN in line
    ]
    assert skipped  # sudo, systemctl, installs, two machines, scripts/test
    for line in skipped:
        assert re.search(rf"{NOT_RUN} \(.+\)", line), line


def test_the_library_page_runs_and_its_names_import():
    namespace: dict = {}
    code = "\n\n".join(
        "\n".join(block) for block in blocks(DOCS / "library.md", "python")
    )
    # The examples start servers on loopback, port 0, and stop them.
    exec(compile(code, str(DOCS / "library.md"), "exec"), namespace)
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
