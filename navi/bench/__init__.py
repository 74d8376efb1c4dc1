"""Benchmark machinery behind `navi bench`: statistics, a multi-process gRPC
load generator, serving and in-process runtime benchmarks, and reporting.

Submodules import heavy dependencies (gRPC, ML frameworks, matplotlib) only
inside the functions that need them.
"""

#: gRPC clients the load generator drives: grpcio's asyncio client, or the raw
#: HTTP/2 one (``navi.bench.h2grpc``, a fraction of the CPU per call)
CLIENTS = ("grpcio", "h2")
