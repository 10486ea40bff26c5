"""This machine: what its platform offers beyond portable Python."""
