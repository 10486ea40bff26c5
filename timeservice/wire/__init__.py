"""Wire formats, pure: bytes in, values out, no sockets, threads or clock.

line (this project's protocol), daytime (RFC 867), rfc868 (RFC 868), ntp
(RFC 5905's packets) and addresses (HOST[:PORT] as people write it). Every
other layer may read these; these read nothing of the others.
"""
