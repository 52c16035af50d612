"""xdm.client_security: one config, the same TLS and login for every Kafka client library and for Milvus.

Each library's own constructor (or Faust's own translation to aiokafka) checks what the mapping gives
it, without a broker: aiokafka validates its security arguments when a client is built, kafka-python
refuses keywords it does not know, Faust turns its credentials into aiokafka's keywords.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from pymilvus.client.connection_manager import ConnectionConfig

from learner import vector_store
from xdm.client_security import kafka_client_kwargs, milvus_client_kwargs
from xdm.config import KafkaConfig, MilvusConfig, apply_overrides, load_config
from xdm.errors import ConfigError

SECURE = ("SSL", "SASL_PLAINTEXT", "SASL_SSL")


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> Path:
    """A self-signed CA certificate (PEM)."""
    folder = tmp_path_factory.mktemp("ca")
    cert = folder / "ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=xdm-test-ca",
                    "-keyout", str(folder / "ca.key"), "-out", str(cert)], check=True, capture_output=True)
    return cert


@pytest.fixture
def password_file(tmp_path) -> Path:
    path = tmp_path / "kafka-password"
    path.write_text("s3cret\n")  # `echo s3cret > file` leaves the line end
    return path


def secured(protocol: str, ca: Path, password_file: Path) -> KafkaConfig:
    settings = {"kafka.bootstrap": "b1:9093,b2:9093", "kafka.security_protocol": protocol}
    if protocol.startswith("SASL_"):
        settings |= {"kafka.sasl_mechanism": "SCRAM-SHA-512", "kafka.sasl_username": "xdm",
                     "kafka.sasl_password_file": str(password_file)}
    if protocol.endswith("SSL"):
        settings["kafka.ssl_cafile"] = str(ca)
    return apply_overrides(load_config("cluster", env={}), settings).kafka


def assert_checks_against(context: ssl.SSLContext, ca: Path) -> None:
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [dict(c["subject"][0])["commonName"] for c in context.get_ca_certs()] == ["xdm-test-ca"]


def test_plaintext_is_the_bootstrap_list_alone():
    k = KafkaConfig(bootstrap="a:9092,b:9092")
    assert kafka_client_kwargs(k, "kafka-python") == {"bootstrap_servers": "a:9092,b:9092"}
    assert kafka_client_kwargs(k, "aiokafka") == {"bootstrap_servers": "a:9092,b:9092"}
    assert kafka_client_kwargs(k, "faust") == {"broker": "kafka://a:9092;kafka://b:9092", "broker_credentials": None}


@pytest.mark.parametrize("client", ["kafka-python", "aiokafka"])
def test_sasl_ssl_gives_login_and_a_context_that_checks_the_brokers(client, ca, password_file):
    kwargs = kafka_client_kwargs(secured("SASL_SSL", ca, password_file), client)
    context = kwargs.pop("ssl_context")
    assert kwargs == {"bootstrap_servers": "b1:9093,b2:9093", "security_protocol": "SASL_SSL",
                      "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "xdm", "sasl_plain_password": "s3cret"}
    assert_checks_against(context, ca)


@pytest.mark.parametrize("protocol", SECURE)
def test_kafka_python_clients_take_every_keyword(protocol, ca, password_file):
    kwargs = kafka_client_kwargs(secured(protocol, ca, password_file), "kafka-python")
    assert kwargs["security_protocol"] == protocol
    for client in (KafkaConsumer, KafkaProducer, KafkaAdminClient):  # each refuses keywords it does not know
        assert set(kwargs) <= set(client.DEFAULT_CONFIG), client.__name__


@pytest.mark.parametrize("protocol", SECURE)
def test_aiokafka_clients_accept_the_keywords(protocol, ca, password_file):
    kwargs = kafka_client_kwargs(secured(protocol, ca, password_file), "aiokafka")

    async def build() -> None:  # built, not started: aiokafka checks protocol, mechanism, login and context here
        consumer, producer = AIOKafkaConsumer(**kwargs), AIOKafkaProducer(**kwargs)
        assert consumer._client._security_protocol == producer.client._security_protocol == protocol
        await producer.stop()

    asyncio.run(build())


@pytest.mark.parametrize("protocol", SECURE)
def test_faust_hands_aiokafka_the_same_settings(protocol, ca, password_file):
    k = secured(protocol, ca, password_file)
    faust = kafka_client_kwargs(k, "faust")
    assert faust["broker"] == "kafka://b1:9093;kafka://b2:9093"
    assert isinstance(faust["broker_credentials"], SASLCredentials if protocol.startswith("SASL_") else SSLCredentials)
    via_faust = dict(credentials_to_aiokafka_auth(faust["broker_credentials"]))  # what Faust's driver passes aiokafka
    direct = kafka_client_kwargs(k, "aiokafka")
    direct.pop("bootstrap_servers")
    faust_context, direct_context = via_faust.pop("ssl_context"), direct.pop("ssl_context", None)
    assert via_faust == direct
    if protocol.endswith("SSL"):
        assert_checks_against(faust_context, ca)
        assert_checks_against(direct_context, ca)
    else:
        assert faust_context is None and direct_context is None


def test_the_stream_app_is_configured_with_the_credentials(ca, password_file):
    from stream.app import make_app

    cfg = apply_overrides(load_config("test", env={}), {"kafka.security_protocol": "SASL_SSL",
                                                        "kafka.sasl_username": "xdm",
                                                        "kafka.sasl_password_file": str(password_file),
                                                        "kafka.ssl_cafile": str(ca)})
    credentials = make_app(cfg).app.conf.broker_credentials
    assert isinstance(credentials, SASLCredentials)
    assert (credentials.username, credentials.password, credentials.protocol.value) == ("xdm", "s3cret", "SASL_SSL")


def test_a_missing_or_empty_secret_names_its_setting(ca, tmp_path):
    k = secured("SASL_SSL", ca, tmp_path / "absent")
    with pytest.raises(ConfigError, match="kafka.sasl_password_file: cannot read"):
        kafka_client_kwargs(k, "aiokafka")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="kafka.sasl_password_file: .* is empty"):
        kafka_client_kwargs(secured("SASL_SSL", ca, tmp_path / "empty"), "faust")


def test_an_unreadable_ca_is_a_config_error(tmp_path, password_file):
    with pytest.raises(ConfigError, match="kafka.ssl_cafile"):
        kafka_client_kwargs(secured("SSL", tmp_path / "no-ca.pem", password_file), "kafka-python")


def test_milvus_token_and_tls_reach_pymilvus(ca, tmp_path):
    assert milvus_client_kwargs(MilvusConfig()) == {}
    token = tmp_path / "milvus-token"
    token.write_text("root:Milvus\n")
    m = MilvusConfig(uri="http://milvus:19530", token_file=str(token), tls_ca=str(ca))
    kwargs = milvus_client_kwargs(m)
    assert kwargs == {"token": "root:Milvus", "secure": True, "server_pem_path": str(ca)}
    config = ConnectionConfig.from_uri(m.uri, **kwargs)  # what MilvusClient builds its connection from
    assert config.token == "root:Milvus"
    assert dict(config.handler_kwargs) == {"secure": True, "server_pem_path": str(ca)}


def test_milvus_connect_reads_the_token_before_it_dials(tmp_path):
    """A missing token file is a config error at once, not a network failure retried until the timeout."""
    with pytest.raises(ConfigError, match="milvus.token_file"):
        vector_store.connect(MilvusConfig(uri="http://127.0.0.1:1", token_file=str(tmp_path / "absent")),
                             timeout_s=30)
