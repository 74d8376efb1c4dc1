"""Benchmark machinery behind `navi bench`: statistics, a multi-process gRPC
load generator, serving and in-process runtime benchmarks, and reporting.

Submodules import heavy dependencies (gRPC, ML frameworks, matplotlib) only
inside the functions that need them.
"""
