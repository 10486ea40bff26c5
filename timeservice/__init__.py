"""timeservice: a small TCP time service.

A client sends ``send time``, the server answers with an RFC 3339 timestamp.
The protocol lives in ``timeservice.protocol``, the server in
``timeservice.server``, the client in ``timeservice.client``.
"""

__version__ = "1.0.0"
