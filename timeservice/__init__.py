"""timeservice: a small TCP time service.

A client sends ``send time``, the server answers with an RFC 3339 timestamp.
The protocol lives in ``timeservice.protocol``, the server in
``timeservice.server``, the client in ``timeservice.client``.
"""

import sys

# Read by the older Pythons this check is for, before a module they cannot read.
if sys.version_info < (3, 11):  # noqa: UP036
    raise SystemExit(
        f"timeservice needs Python 3.11 or newer; this is {sys.version.split()[0]}"
    )

__version__ = "2.0.0"
