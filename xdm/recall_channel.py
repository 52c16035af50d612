"""The one way the project's clients open a channel to the Recall server: TLS and bearer token from config.

`xdm recall` (serving/client.py), the replayer and the closed loop all open their channels here, so a
server switched to TLS and a token is reached by every one of them by config alone: serving.tls_ca (the
CA that signed the server's certificate; set, the channel speaks TLS) and serving.auth_token_file (the
token, sent as `authorization: Bearer ...` on every call). The token travels as gRPC call credentials,
which gRPC attaches only to TLS channels; a token configured without TLS is refused here rather than
sent in the clear.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import grpc

from xdm.client_security import read_secret
from xdm.config import ServingConfig
from xdm.errors import ConfigError

ChannelOptions = Sequence[tuple[str, object]]


def recall_channel(sc: ServingConfig, address: str, options: ChannelOptions = ()) -> grpc.Channel:
    """A blocking channel to `address` with serving's TLS and token settings."""
    credentials = recall_credentials(sc)
    if credentials is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, credentials, options=list(options))


def recall_aio_channel(sc: ServingConfig, address: str, options: ChannelOptions = ()) -> grpc.aio.Channel:
    """`recall_channel` for asyncio callers."""
    credentials = recall_credentials(sc)
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, credentials, options=list(options))


def recall_credentials(sc: ServingConfig) -> grpc.ChannelCredentials | None:
    """TLS against serving.tls_ca, plus the bearer token when one is configured; None for plaintext."""
    if not sc.tls_ca:
        if sc.auth_token_file:
            raise ConfigError("serving.auth_token_file is set but serving.tls_ca is not: the token is only sent "
                              "over TLS; set serving.tls_ca to the CA that signed the server's certificate")
        return None
    try:
        tls = grpc.ssl_channel_credentials(root_certificates=Path(sc.tls_ca).read_bytes())
    except OSError as exc:
        raise ConfigError(f"serving.tls_ca: cannot read {sc.tls_ca}: {exc.strerror or exc}") from None
    if not sc.auth_token_file:
        return tls
    token = read_secret(sc.auth_token_file, "serving.auth_token_file")
    return grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(token))
