"""The servers: one module per protocol, its handler and its server
together, each composed from the transports' parts."""
