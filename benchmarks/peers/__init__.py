"""Peer implementations of the reference model, used only by the benchmarks."""
