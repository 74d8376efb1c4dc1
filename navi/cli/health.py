"""``navi health``: one grpc.health.v1 Check against a running navi; exit 0 only when SERVING.

The container's HEALTHCHECK and any probe that can run a command use it in
place of the separately downloaded grpc_health_probe binary.
"""
from __future__ import annotations

import sys

import click

#: exit code when the check ran and the answer was not SERVING, or no answer came
EXIT_NOT_SERVING = 1


@click.command("health")
@click.option("--target", default="localhost:8500", show_default=True, help="host:port of navi's gRPC server.")
@click.option("--service", default="", show_default=True,
              help='Health service name: "" = the whole server, or a model name.')
@click.option("--timeout", "timeout_s", default=3.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds to wait for the answer.")
def health(target: str, service: str, timeout_s: float) -> None:
    """Ask navi at TARGET whether SERVICE is SERVING; print the status, exit 0 if so, else 1."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    request = health_pb2.HealthCheckRequest(service=service)
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout_s)
        except grpc.RpcError as error:
            click.echo(f"{target} {service!r}: {error.code().name} {error.details() or ''}".rstrip(), err=True)
            sys.exit(EXIT_NOT_SERVING)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    click.echo(f"{target} {service!r}: {status}")
    sys.exit(0 if response.status == health_pb2.HealthCheckResponse.SERVING else EXIT_NOT_SERVING)
