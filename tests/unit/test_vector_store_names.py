"""What a real Milvus accepts, decided before any call: collection and alias names of letters, digits and
underscores (Milvus Lite takes more), and only index types this project builds with their parameters."""

from __future__ import annotations

import re

import pytest

from learner import vector_store
from xdm.config import INDEX_TYPES, MilvusConfig, load_config
from xdm.errors import ConfigError

MILVUS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a real Milvus refuses others (code 1100)


@pytest.mark.parametrize("arm", ["xdm", "xdm-sasrec", "xdm_wo_sym-gru4rec", "A1"])
def test_every_arm_name_gives_names_a_real_milvus_takes(arm):
    cfg = MilvusConfig()
    assert MILVUS_NAME.fullmatch(vector_store.collection_name(cfg, arm, 7))
    assert MILVUS_NAME.fullmatch(vector_store.alias_name(cfg, arm))


def test_a_hyphen_and_an_underscore_name_different_arms_apart():
    cfg = MilvusConfig()
    assert vector_store.collection_name(cfg, "xdm-sasrec", 1) != vector_store.collection_name(cfg, "xdm_sasrec", 1)


@pytest.mark.parametrize("arm", ["", "x y", "arm/1", "ärm"])
def test_an_arm_no_collection_name_can_hold_is_refused_by_name(arm):
    with pytest.raises(ConfigError, match="cannot name a Milvus collection"):
        vector_store.collection_name(MilvusConfig(), arm, 1)


def test_an_index_type_without_build_parameters_is_refused_at_config_load():
    # IVF_FLAT without nlist failed every publish ("nlist out of range"), Milvus Lite and a real Milvus alike
    with pytest.raises(ConfigError, match="index_type"):
        load_config("test", env={}, overrides={"milvus.index_type": "IVF_PQ"})
    assert set(vector_store.INDEX_PARAMS) == set(INDEX_TYPES)
    assert vector_store.INDEX_PARAMS["IVF_FLAT"]["nlist"] > 0
