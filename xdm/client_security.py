"""How every Kafka and Milvus client of the project reaches a cluster that asks for TLS or a login.

One mapping from the config to each client library's keyword arguments, so the stream worker (Faust),
the aiokafka readers (serving, topic mirrors, replay) and the kafka-python clients (learners, producers,
topic admin) cannot drift apart: a cluster switched to SASL_SSL is reached by all of them or by none.
TLS is one `ssl.SSLContext` built here for all three Kafka libraries (aiokafka takes no file names), so
certificate and host name checks are the same everywhere: the default context's, which verifies both.

Secrets (the SASL password, the Milvus token, the Recall bearer token) are read from files, a mounted
Kubernetes Secret, never from config values: they stay out of the environment, argv, `xdm config show`
and crash reports. The embedded stack (`local`, `test` profiles) sets none of this: plaintext on loopback.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from xdm.config import KafkaConfig, MilvusConfig
from xdm.errors import ConfigError

KafkaClient = Literal["kafka-python", "aiokafka", "faust"]
KAFKA_CLIENTS: tuple[KafkaClient, ...] = ("kafka-python", "aiokafka", "faust")


def kafka_client_kwargs(k: KafkaConfig, client: KafkaClient) -> dict[str, Any]:
    """Where the brokers are and how to reach them, as `client`'s constructor keywords.

    kafka-python (KafkaConsumer / KafkaProducer / KafkaAdminClient) and aiokafka (AIOKafkaConsumer /
    AIOKafkaProducer): bootstrap_servers, security_protocol, sasl_* and ssl_context. faust (App settings):
    broker and broker_credentials, which Faust's driver turns into the same aiokafka keywords.
    """
    if client not in KAFKA_CLIENTS:
        raise ValueError(f"unknown Kafka client {client!r}; one of {', '.join(KAFKA_CLIENTS)}")
    if client == "faust":
        return {"broker": ";".join(f"kafka://{host}" for host in k.bootstrap.split(",")),
                "broker_credentials": _faust_credentials(k)}
    kwargs: dict[str, Any] = {"bootstrap_servers": k.bootstrap}
    if k.security_protocol == "PLAINTEXT":
        return kwargs
    kwargs["security_protocol"] = k.security_protocol
    if k.security_protocol.startswith("SASL_"):
        kwargs.update(sasl_mechanism=k.sasl_mechanism, sasl_plain_username=k.sasl_username,
                      sasl_plain_password=read_secret(k.sasl_password_file, "kafka.sasl_password_file"))
    if k.security_protocol.endswith("SSL"):
        kwargs["ssl_context"] = kafka_ssl_context(k)
    return kwargs


def kafka_ssl_context(k: KafkaConfig) -> ssl.SSLContext:
    """The brokers' certificates checked against kafka.ssl_cafile (else the system's CAs), host names too."""
    try:
        context = ssl.create_default_context(cafile=k.ssl_cafile or None)
        if k.ssl_certfile:
            context.load_cert_chain(k.ssl_certfile, k.ssl_keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"kafka.ssl_cafile / ssl_certfile / ssl_keyfile: cannot load them: {exc}") from None
    return context


def _faust_credentials(k: KafkaConfig) -> Any:
    if k.security_protocol == "PLAINTEXT":
        return None
    from faust.auth import SASLCredentials, SSLCredentials  # here: the Recall server loads this module without Faust

    context = kafka_ssl_context(k) if k.security_protocol.endswith("SSL") else None
    if not k.security_protocol.startswith("SASL_"):
        return SSLCredentials(context)
    # Faust reads SASL_SSL from a context being present, SASL_PLAINTEXT from its absence
    return SASLCredentials(username=k.sasl_username, mechanism=k.sasl_mechanism, ssl_context=context,
                           password=read_secret(k.sasl_password_file, "kafka.sasl_password_file"))


def milvus_client_kwargs(m: MilvusConfig) -> dict[str, Any]:
    """MilvusClient keywords beyond the URI: the token and, with milvus.tls_ca, TLS checked against that CA."""
    kwargs: dict[str, Any] = {}
    if m.token_file:
        kwargs["token"] = read_secret(m.token_file, "milvus.token_file")
    if m.tls_ca:
        if not Path(m.tls_ca).is_file():
            raise ConfigError(f"milvus.tls_ca: no such file {m.tls_ca}")
        kwargs.update(secure=True, server_pem_path=m.tls_ca)
    return kwargs


def read_secret(path: str, key: str) -> str:
    """The secret a file holds, without the line end an editor or `echo` leaves; `key` names the setting."""
    try:
        secret = Path(path).read_text().strip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    if not secret:
        raise ConfigError(f"{key}: {path} is empty")
    return secret
