"""The clock: the system clock's readings, the kernel's clock state, and
what the NTP service claims of them (stratum, reference ID, leap)."""
