"""Nothing a version announcement or a file in the model store names is executed: towers are read with the
weights-only unpickler from the path (store, arm, version) gives, and every announcement field is checked."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from learner.batch import Vocabulary
from learner.model import XDM
from learner.model_store import (AnnouncementRejected, TowerFileError, VersionInfo, latest_path, load_tower,
                                 read_latest, save_tower, tower_path, tower_payload, validate_announcement)
from xdm.config import MilvusConfig
from xdm.model_config import ModelConfig

MILVUS = MilvusConfig(collection_prefix="xdm")
ARMS = ("xdm", "sdm")


class WritesMarker:
    """Unpickled by a full unpickler, this opens (creates) a file: any code could run in its place."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _info(**changes) -> VersionInfo:
    good = VersionInfo(arm="xdm", version=7, collection="xdm_xdm_v7", tower_uri="/elsewhere/tower.pt",
                       published_ms=1, trained_samples=2, items=3)
    return dataclasses.replace(good, **changes)


def test_a_valid_announcement_passes_whatever_its_tower_uri_says():
    validate_announcement(_info(), ARMS, MILVUS)
    validate_announcement(_info(tower_uri="/etc/passwd"), ARMS, MILVUS)  # never opened: nothing to check


@pytest.mark.parametrize("changes, code", [
    ({"arm": "other", "collection": "xdm_other_v7"}, "unknown_arm"),
    ({"arm": "../xdm", "collection": "xdm_../xdm_v7"}, "unknown_arm"),
    ({"version": 0, "collection": "xdm_xdm_v0"}, "version_out_of_range"),
    ({"version": -3, "collection": "xdm_xdm_v-3"}, "version_out_of_range"),
    ({"version": 2**31, "collection": f"xdm_xdm_v{2**31}"}, "version_out_of_range"),
    ({"collection": "xdm_xdm_v6"}, "wrong_collection"),  # another version's item vectors
    ({"collection": "xdm_sdm_v7"}, "wrong_collection"),  # another arm's
    ({"collection": "other_xdm_v7"}, "wrong_collection"),  # another deployment's
    ({"collection": ""}, "wrong_collection"),
    ({"items": -1}, "negative_count"),
    ({"trained_samples": -1}, "negative_count"),
])
def test_an_announcement_with_a_bad_field_is_rejected_with_its_reason(changes, code):
    with pytest.raises(AnnouncementRejected) as rejected:
        validate_announcement(_info(**changes), ARMS, MILVUS)
    assert rejected.value.code == code and str(rejected.value)


@pytest.mark.parametrize("arm", ["../outside", "a/b", "", ".hidden", "x" * 65])
def test_the_tower_path_of_an_arm_that_is_not_a_plain_name_is_refused(tmp_path, arm):
    with pytest.raises(ValueError):
        tower_path(str(tmp_path), arm, 1)


def _tiny_tower() -> tuple[XDM, Vocabulary]:
    vocab = Vocabulary(())
    vocab.add("item", "i1")
    model = XDM(ModelConfig(embed_dim=8, n_heads=2, n_negatives=4), vocab.sizes())
    return model, vocab


def test_a_tower_comes_back_from_the_store_as_it_was_published(tmp_path):
    model, vocab = _tiny_tower()
    info = _info(version=3, collection="xdm_xdm_v3")
    save_tower(str(tmp_path), "xdm", 3, tower_payload(model, vocab, info, "xdm", ["i1"]))
    tower = load_tower(str(tmp_path), "xdm", 3)
    assert tower.info == info and tower.popular == ["i1"] and tower.vocab.state_dict() == vocab.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(tower.model.state_dict()[name], value), name


def test_a_crafted_pickle_at_the_derived_path_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = tower_path(str(tmp_path), "xdm", 4)
    path.parent.mkdir(parents=True)
    torch.save({"format": 2, "header": WritesMarker(marker)}, path)
    with pytest.raises(TowerFileError, match="not unpickled"):
        load_tower(str(tmp_path), "xdm", 4)
    assert not marker.exists()
    # The file is a real weapon: the full unpickler the store used before runs it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_tower_of_the_old_format_or_of_another_version_is_refused_with_a_message(tmp_path):
    model, vocab = _tiny_tower()
    payload = tower_payload(model, vocab, _info(version=5, collection="xdm_xdm_v5"), "xdm", [])
    save_tower(str(tmp_path), "xdm", 6, payload)  # version 5's tower under version 6's name
    with pytest.raises(TowerFileError, match="holds version 5"):
        load_tower(str(tmp_path), "xdm", 6)
    save_tower(str(tmp_path), "xdm", 5, {**payload, "format": 1})
    with pytest.raises(TowerFileError, match="format 1; this xdm reads format 2"):
        load_tower(str(tmp_path), "xdm", 5)


@pytest.mark.parametrize("text", [
    "not json",
    json.dumps(["xdm", 7]),
    json.dumps({**dataclasses.asdict(_info()), "extra": 1}),
    json.dumps({**dataclasses.asdict(_info()), "version": "7"}),
    json.dumps({**dataclasses.asdict(_info()), "version": True}),
    json.dumps({**dataclasses.asdict(_info()), "arm": "sdm"}),  # another arm's pointer in xdm's folder
])
def test_a_latest_pointer_that_is_not_a_version_record_of_its_arm_is_rejected(tmp_path, text):
    path = latest_path(str(tmp_path), "xdm")
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(AnnouncementRejected):
        read_latest(str(tmp_path), "xdm")
