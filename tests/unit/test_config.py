import pytest

from xdm.config import Config, load_config, parse_set_options
from xdm.errors import ConfigError


def test_defaults_then_profile_then_env_then_overrides():
    env = {"XDM_KAFKA__PARTITIONS": "6", "XDM_LEARNER__LR": "0.05"}
    cfg = load_config("test", env=env, overrides={"kafka.partitions": "8"})
    assert cfg.learner.batch_size == 32  # from the test profile
    assert cfg.learner.lr == 0.05  # env beats profile and default
    assert cfg.kafka.partitions == 8  # --set beats env


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match="kafka.nope"):
        load_config(overrides={"kafka.nope": "1"})
    with pytest.raises(ConfigError, match="unknown config section 'nope'"):
        load_config(env={"XDM_NOPE__X": "1"})


def test_bad_type_names_the_key():
    with pytest.raises(ConfigError, match="learner.batch_size expects int"):
        load_config(overrides={"learner.batch_size": "many"})
    with pytest.raises(ConfigError, match="model.use_unclicked expects bool"):
        load_config(overrides={"model.use_unclicked": "perhaps"})


def test_bools_and_floats_parse():
    cfg = load_config(overrides={"model.remove_accidental_hits": "no", "learner.lr": "1"})
    assert cfg.model.remove_accidental_hits is False and cfg.learner.lr == 1.0


def test_inconsistent_section_is_a_config_error():
    with pytest.raises(ConfigError, match="config section model: .*use_unclicked"):
        load_config(overrides={"model.use_unclicked": "false"})


def test_unknown_profile_and_bad_set_option():
    with pytest.raises(ConfigError, match="unknown profile"):
        load_config("prod")
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_set_options(["partitions=3"])


def test_config_is_frozen():
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.kafka.partitions = 3  # type: ignore[misc]


@pytest.mark.parametrize("ms", [0, -1, 1000])
def test_server_rejects_a_gil_switch_interval_out_of_range(ms):
    from serving.server import _set_switch_interval

    with pytest.raises(ConfigError, match="switch_interval_ms"):
        _set_switch_interval(ms)


def test_server_rejects_an_unknown_place_to_compute_or_an_empty_encodings_table():
    from serving.server import _compute_process

    with pytest.raises(ConfigError, match="serving.compute is 'gpu'"):
        _compute_process(load_config(overrides={"serving.compute": "gpu"}))
    with pytest.raises(ConfigError, match="serving.item_encodings_max is 0"):
        _compute_process(load_config(overrides={"serving.item_encodings_max": 0}))


@pytest.mark.parametrize("key, value", [("learner.rehearsal_steps", "-1"), ("learner.rehearsal_window", "0")])
def test_rehearsal_settings_out_of_range_are_a_config_error_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=key.split(".")[1]):
        load_config(overrides={key: value})


def test_one_reader_of_setting_text_serves_config_tune_and_simulate() -> None:
    from learner.tuning import TuningError, parse_grid
    from replay.world import WorldConfig
    from xdm.config import parse_setting

    assert parse_setting("3", int) == 3 and parse_setting("0.5", float) == 0.5 and parse_setting("x", str) == "x"
    assert parse_setting(" Yes", bool) is True and parse_setting("off", bool) is False
    for text, kind in (("maybe", bool), ("1.5", int), ("", float)):
        with pytest.raises(ValueError):
            parse_setting(text, kind)
    assert parse_grid("model.use_unclicked", "on,false") == ("use_unclicked", [True, False])
    with pytest.raises(TuningError, match="not a valid int"):
        parse_grid("model.embed_dim", "6.5")
    assert WorldConfig().with_settings(["dislike_brands=2"]).dislike_brands == 2.0


# ---- access control (issue 25 §5)

def test_reflection_is_served_on_one_machine_and_in_tests_but_not_in_a_cluster():
    assert load_config("local", env={}).serving.reflection
    assert load_config("test", env={}).serving.reflection
    assert not load_config("cluster", env={}).serving.reflection
    assert load_config("cluster", env={"XDM_SERVING__REFLECTION": "true"}).serving.reflection  # deliberately back on


@pytest.mark.parametrize("profile", ["local", "test"])
def test_the_embedded_stack_stays_plaintext_on_loopback(profile):
    cfg = load_config(profile, env={})
    k, m, s = cfg.kafka, cfg.milvus, cfg.serving
    assert k.security_protocol == "PLAINTEXT" and not (k.sasl_username or k.sasl_password_file or k.ssl_cafile)
    assert not (m.token_file or m.tls_ca) and m.uri.startswith("http://127.0.0.1:")
    assert not (s.tls_cert or s.tls_ca or s.auth_token_file) and s.host == "127.0.0.1"
    assert s.max_request_bytes == 65_536


def test_kafka_security_resolves_from_the_environment():
    env = {"XDM_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "XDM_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
           "XDM_KAFKA__SASL_USERNAME": "xdm", "XDM_KAFKA__SASL_PASSWORD_FILE": "/run/secrets/kafka/password",
           "XDM_KAFKA__SSL_CAFILE": "/run/secrets/kafka-ca/ca.crt"}
    k = load_config("cluster", env=env).kafka
    assert (k.security_protocol, k.sasl_mechanism, k.sasl_username) == ("SASL_SSL", "SCRAM-SHA-512", "xdm")
    assert k.sasl_password_file == "/run/secrets/kafka/password" and k.ssl_cafile == "/run/secrets/kafka-ca/ca.crt"


@pytest.mark.parametrize("settings, fragment", [
    ({"kafka.security_protocol": "TLS"}, "kafka.security_protocol is 'TLS'"),
    ({"kafka.security_protocol": "SASL_SSL", "kafka.sasl_username": "xdm"}, "needs kafka.sasl_username and"),
    ({"kafka.security_protocol": "SASL_SSL", "kafka.sasl_mechanism": "GSSAPI", "kafka.sasl_username": "xdm",
      "kafka.sasl_password_file": "/p"}, "kafka.sasl_mechanism is 'GSSAPI'"),
    ({"kafka.sasl_username": "xdm", "kafka.sasl_password_file": "/p"}, "security_protocol is PLAINTEXT"),
    ({"kafka.security_protocol": "SASL_PLAINTEXT", "kafka.sasl_username": "xdm", "kafka.sasl_password_file": "/p",
      "kafka.ssl_cafile": "/ca"}, "kafka.ssl_\\* files are set"),
    ({"kafka.security_protocol": "SSL", "kafka.ssl_certfile": "/c"}, "ssl_certfile and kafka.ssl_keyfile go together"),
])
def test_a_kafka_security_setting_that_would_be_ignored_is_refused(settings, fragment):
    with pytest.raises(ConfigError, match=f"config section kafka: .*{fragment}"):
        load_config("cluster", env={}, overrides=settings)


def test_a_bearer_token_is_never_sent_or_asked_for_over_plaintext(tmp_path):
    from serving.server import _interceptors
    from xdm.recall_channel import recall_credentials

    token = tmp_path / "token"
    token.write_text("t0k3n\n")
    serving = load_config(env={}, overrides={"serving.auth_token_file": str(token)}).serving
    with pytest.raises(ConfigError, match="serving.auth_token_file is set but serving.tls_cert is not"):
        _interceptors(serving)
    with pytest.raises(ConfigError, match="serving.auth_token_file is set but serving.tls_ca is not"):
        recall_credentials(serving)


def test_the_request_size_limit_reaches_grpc_and_cannot_starve_valid_requests():
    from serving.server import _request_limit

    assert _request_limit(load_config(env={}).serving) == [("grpc.max_receive_message_length", 65_536)]
    with pytest.raises(ConfigError, match="serving.max_request_bytes is 100"):
        _request_limit(load_config(env={}, overrides={"serving.max_request_bytes": 100}).serving)
