"""The Recall server's optional bearer-token check (serving.auth_token_file): a server interceptor.

With a token configured every call must carry `authorization: Bearer <token>` (what xdm/recall_channel.py
sends); any other call ends UNAUTHENTICATED before its handler runs. The health service stays open:
the kubelet's gRPC probes and load balancers' health checks cannot send a token, and a health status
tells nothing about users or items. Reflection is not exempt: with a token it describes the API only to
callers that hold one. The token needs TLS (checked at start-up in serving/server.py): over plaintext
anyone on the path could read it. It is read once at start-up; rotating it restarts the servers.
"""

from __future__ import annotations

import hmac
from typing import Awaitable, Callable

import grpc
from grpc_health.v1 import health

from serving.servicer import ERRORS

OPEN_METHOD_PREFIX = f"/{health.SERVICE_NAME}/"


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_METHOD_PREFIX):
            return handler
        if self._holds_token(handler_call_details.invocation_metadata or ()):
            return handler
        return _refusing(handler)

    def _holds_token(self, metadata) -> bool:
        for key, value in metadata:
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._expected)  # no timing hint of how much matched
        return False


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the refused method's own shape that only answers UNAUTHENTICATED."""

    async def refuse(_request, context: grpc.aio.ServicerContext) -> None:
        ERRORS.labels(grpc.StatusCode.UNAUTHENTICATED.name).inc()
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "missing or wrong bearer token: send `authorization: Bearer <serving.auth_token_file>`")

    codec = {"request_deserializer": handler.request_deserializer,
             "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **codec)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **codec)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **codec)
    return grpc.unary_unary_rpc_method_handler(refuse, **codec)
