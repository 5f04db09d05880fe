"""Benchmarks: scripts that measure and write JSON + markdown under bench/results/. Not part of the test suite."""
