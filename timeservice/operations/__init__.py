"""Operating the servers: a service of several watched together, workers,
systemd's protocols, metrics, dropping privileges, the CPU."""
