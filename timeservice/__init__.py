"""timeservice: a time service, from "send time" to NTP.

A client sends ``send time``, the server answers with an RFC 3339 timestamp;
the standard time protocols (Daytime, Time, NTP) are spoken on both sides.
The public faces: ``timeservice.server`` (the servers and the service that
runs them), ``timeservice.client`` (asking, and the offset arithmetic) and
``timeservice.skew`` (many clocks at once). The layers below them are
folders, one concern each (docs/design.md).
"""

import sys

# Read by the older Pythons this check is for, before a module they cannot read.
if sys.version_info < (3, 11):  # noqa: UP036
    raise SystemExit(
        f"timeservice needs Python 3.11 or newer; this is {sys.version.split()[0]}"
    )

__version__ = "3.0.0"
