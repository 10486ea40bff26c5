"""The client side: asking each protocol, the offset arithmetic, the pacing
of samples, and the skew check's selection (RFC 5905's intersection). It
reads the wire formats and the clock, and no server code."""
