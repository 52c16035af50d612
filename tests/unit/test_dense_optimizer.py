"""learner.dense_optimizer: Adam on the layers besides the vocabulary tables, per base under "auto"."""

from __future__ import annotations

import pytest
import torch

from learner.model import config_for
from learner.offline import TrainSettings
from learner.run_pool import _settings_record
from learner.trainer import Trainer, dense_optimizer_for
from tests.unit.test_trainer import MODEL, _batches, _stream
from xdm.config import load_config
from xdm.errors import ConfigError


def _trainer(variant: str, choice: str = "auto") -> Trainer:
    return Trainer(config_for(variant, **MODEL), seed=3, device="cpu", lr_warmup_steps=4, dense_optimizer=choice)


@pytest.mark.parametrize("base,kind", [("sdm", "adagrad"), ("gru4rec", "adagrad"), ("sasrec", "adam"), ("hstu", "adam")])
def test_auto_gives_each_base_its_papers_optimiser(base, kind):
    assert dense_optimizer_for("auto", base) == kind
    assert dense_optimizer_for("adagrad", base) == "adagrad" and dense_optimizer_for("adam", base) == "adam"


def test_an_unknown_choice_is_refused_by_the_config_and_the_trainer():
    with pytest.raises(ValueError, match="dense_optimizer"):
        dense_optimizer_for("sgd", "sdm")
    with pytest.raises(ConfigError, match="dense_optimizer"):
        load_config(env={"XDM_LEARNER__DENSE_OPTIMIZER": "sgd"})


def test_adam_takes_the_dense_layers_and_adagrad_keeps_the_tables_as_they_grow():
    trainer = _trainer("hstu")
    tables = {id(t.weight) for t in trainer.model.vocabulary_tables()}
    adagrad = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    adam = {id(p) for g in trainer.dense_optimizer.param_groups for p in g["params"]}
    assert adagrad == tables and adam and not adam & adagrad
    assert adam | adagrad == {id(p) for p in trainer.model.parameters()}
    dense = [p for p in trainer.model.parameters() if id(p) in adam]
    before = [p.detach().clone() for p in dense]
    trainer.step(_stream(8))
    trainer.step(_stream(8, offset=300))  # new items: the tables and AdaGrad's sums grow, Adam's state does not
    assert any(not torch.equal(a, p) for a, p in zip(before, dense))
    item = trainer.model.item_out.weight
    assert trainer.optimizer.state[item]["sum"].shape == item.shape
    assert trainer.dense_optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-3)  # warm-up: 2 of 4 steps


def test_the_sdm_base_trains_as_before_under_auto():
    trained = []
    for choice in ("auto", "adagrad"):  # one after the other: dropout draws from torch's global generator
        trainer = _trainer("xdm", choice)
        for batch in _batches(_stream(24)):
            trainer.step(batch)
        trained.append(trainer)
    auto, adagrad = trained
    assert auto.dense_optimizer is None
    for a, b in zip(auto.model.parameters(), adagrad.model.parameters()):
        assert torch.equal(a, b)


def test_training_resumed_from_a_checkpoint_equals_training_straight_through_with_adam():
    batches = _batches(_stream(40))
    straight = _trainer("xdm-sasrec")
    for batch in batches:
        straight.step(batch)
    first = _trainer("xdm-sasrec")
    for batch in batches[:2]:
        first.step(batch)
    state = first.state_dict()  # before the next Trainer reseeds torch's generator, which the state holds
    resumed = _trainer("xdm-sasrec")
    resumed.load_state_dict(state)
    for batch in batches[2:]:
        resumed.step(batch)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_checkpoint_from_before_the_setting_loads_as_adagrad_everywhere():
    old = _trainer("hstu", "adagrad")
    old.step(_stream(8))
    state = old.state_dict()
    del state["dense_optimizer"], state["dense_optimizer_kind"]
    restored = _trainer("hstu")  # auto would give Adam; the checkpoint's model goes on as it was trained
    restored.load_state_dict(state)
    assert restored.dense_optimizer is None and restored.dense_optimizer_kind == "adagrad"
    restored.step(_stream(8, offset=50))


def test_a_rows_record_names_adam_only_where_the_row_trains_with_it():
    settings = TrainSettings()
    sdm = _settings_record(settings, "sdm")
    hstu = _settings_record(settings, "hstu")
    peer = _settings_record(settings, None)
    assert "dense_optimizer" not in sdm and "dense_optimizer" not in peer  # as rows recorded before the setting
    assert hstu["dense_optimizer"] == "adam" and hstu["adam_lr"] == settings.adam_lr
    assert "dense_optimizer" not in _settings_record(TrainSettings(dense_optimizer="adagrad"), "hstu")
