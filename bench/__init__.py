"""Benchmark: orderstream against the classic designs it replaces."""
