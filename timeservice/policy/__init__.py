"""Policy: who may ask, how much, and how refusals are logged. It decides
and never sends: the transports act on its verdicts."""
