"""Registering gRPC services whose handlers receive the request's raw bytes.

grpcio's generated registration hands each method a ``request_deserializer``;
when it fails (a truncated message, a string field that is not UTF-8), grpcio
answers INTERNAL "Exception deserializing request!" and, measured with grpcio
1.7x, leaks about 16 KB of memory per such request (a bare grpcio server does
the same, and not when its handler takes raw bytes). So every service navi
serves is registered here, from its descriptor: the handler receives bytes,
parses them itself (``codec.parse_message``) and answers an undecodable request
INVALID_ARGUMENT naming the message type. A method listed in ``raw_methods``
gets the bytes unparsed (Predict lifts its string values out of them; a
request that will be refused can be refused before it is parsed). Answers may
be messages or their serialized bytes.

A call whose gRPC deadline has already passed when a thread picks it up is
answered DEADLINE_EXCEEDED, and one its pool refused (too many waiting for a
handler thread: ``threads.refusal``) RESOURCE_EXHAUSTED, without being parsed.
"""
from __future__ import annotations

from concurrent import futures
from typing import Any, Callable, Iterable, Mapping

import grpc
from google.protobuf import message_factory
from grpc_reflection.v1alpha import reflection, reflection_pb2

from navi.codec import parse_message
from navi.errors import DeadlineExceeded, Overloaded
from navi.server.status import status_of
from navi.server.threads import refusal


def _serialize(response: Any) -> bytes:
    if isinstance(response, (bytes, bytearray)):
        return bytes(response)
    return response.SerializeToString()


def check_deadline(context) -> None:
    """Raise ``DeadlineExceeded`` when the call's deadline has already passed."""
    remaining_s = context.time_remaining()
    if remaining_s is not None and remaining_s <= 0:
        raise DeadlineExceeded("the call's deadline passed before it could run")


def raw_handler(behavior: Callable, request_type, name: str,
                pool: futures.ThreadPoolExecutor | None = None) -> Callable:
    """``behavior(request, context, ...)`` as a handler of ``(raw bytes, context, ...)``.

    ``request_type`` None passes the bytes on unparsed. The behaviour's own
    grpcio attributes (``experimental_non_blocking``, as the health service's
    Watch has) are kept; ``pool`` names the thread pool grpcio runs it on.
    """

    def handler(raw, context, *args, **kwargs):
        try:
            refused = refusal()
            if refused is not None:
                raise Overloaded(refused)
            check_deadline(context)
            request = raw if request_type is None else parse_message(request_type, raw)
        except Exception as error:  # noqa: BLE001 - the edge: every error gets a status
            code, details = status_of(error, name)
        else:
            return behavior(request, context, *args, **kwargs)
        context.abort(code, details)

    handler.__name__ = name
    handler.__doc__ = getattr(behavior, "__doc__", None)
    if getattr(behavior, "experimental_non_blocking", False):
        handler.experimental_non_blocking = True
    chosen = pool if pool is not None else getattr(behavior, "experimental_thread_pool", None)
    if chosen is not None:
        handler.experimental_thread_pool = chosen
    return handler


def add_raw_service(server: grpc.Server, service, servicer: Any, *,
                    pools: Mapping[str, futures.ThreadPoolExecutor] | None = None,
                    raw_methods: Iterable[str] = ()) -> dict[str, grpc.RpcMethodHandler]:
    """Register every method of ``service`` (a ServiceDescriptor) on ``server`` with raw-bytes handlers.

    ``servicer.<Method>`` implements each; ``pools`` maps method names to the
    thread pool they run on (default: the server's); ``raw_methods`` receive
    the request's bytes unparsed. Client or bidirectional streaming methods
    are not supported (none of navi's services has one). Returns the handlers.
    """
    pools = dict(pools or {})
    raw_methods = frozenset(raw_methods)
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        if method.client_streaming:
            raise ValueError(f"{service.full_name}.{method.name} is client-streaming")
        request_type = None if method.name in raw_methods else message_factory.GetMessageClass(method.input_type)
        handler = raw_handler(getattr(servicer, method.name), request_type, method.name, pools.get(method.name))
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(handler, request_deserializer=None, response_serializer=_serialize)
    unknown = (set(pools) | raw_methods) - set(handlers)
    if unknown:
        raise ValueError(f"{service.full_name} has no method {sorted(unknown)}")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
    return handlers


def add_reflection_service(server: grpc.Server, service_names: Iterable[str], descriptor_pool,
                           pool: futures.ThreadPoolExecutor) -> None:
    """Serve gRPC server reflection (grpcio-reflection's servicer) on threads of its own, ``pool``.

    A reflection call is a bidirectional stream that holds its thread for as
    long as the client keeps it open (grpcurl closes it at once; a client
    need not). On the control threads a few open streams would leave health
    checks and metadata calls waiting, and a Kubernetes probe failing; on a
    pool of their own, a stream that ``pool`` refuses (``threads.refusal``)
    is answered RESOURCE_EXHAUSTED before it reads anything.
    """
    servicer = reflection.ReflectionServicer(tuple(service_names), pool=descriptor_pool)

    def handler(request_iterator, context):
        refused = refusal()
        if refused is not None:
            context.abort(*status_of(Overloaded(refused), "ServerReflectionInfo"))
        yield from servicer.ServerReflectionInfo(request_iterator, context)

    handler.experimental_thread_pool = pool
    handlers = {"ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
        handler, request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(reflection.SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(reflection.SERVICE_NAME, handlers)


__all__ = ["add_raw_service", "add_reflection_service", "check_deadline", "raw_handler"]
