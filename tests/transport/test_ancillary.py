"""Kernel receive times, used only where they come from the same clock."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, faketime

from timeservice.host import capabilities
from timeservice.transport import datagram


def test_kernel_receive_times_are_used_only_on_the_same_clock():
    if not capabilities.RECEIVE_TIMESTAMPS:
        pytest.skip("no kernel receive times on this platform")
    assert datagram.kernel_stamps_agree()
    if shutil.which("faketime") is None:
        pytest.skip("needs faketime (Debian: faketime) for a shifted clock")
    for shift in ("+0.003s", "-0.002s", "+5s"):
        shifted = subprocess.run(
            [*faketime(shift), sys.executable, "-c",
             "from timeservice.transport import ancillary;"
             " print(ancillary.kernel_stamps_agree())"],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert shifted.stdout == "False\n", (shift, shifted.stderr)
