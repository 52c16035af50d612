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
    from xdm.setting_text import parse_setting

    assert parse_setting("3", int) == 3 and parse_setting("0.5", float) == 0.5 and parse_setting("x", str) == "x"
    assert parse_setting(" Yes", bool) is True and parse_setting("off", bool) is False
    for text, kind in (("maybe", bool), ("1.5", int), ("", float)):
        with pytest.raises(ValueError):
            parse_setting(text, kind)
    assert parse_grid("model.use_unclicked", "on,false") == ("use_unclicked", [True, False])
    with pytest.raises(TuningError, match="not a valid int"):
        parse_grid("model.embed_dim", "6.5")
    assert WorldConfig().with_settings(["dislike_brands=2"]).dislike_brands == 2.0
