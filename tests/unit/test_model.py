"""XDM and its ablations (learner/model.py): shapes, masks, equations, gradients, growth, checkpoints."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch

from learner.batch import Vocabulary, collate
from learner.model import VARIANTS, XDM, ConfidenceFusion, UnclickedEncoder, config_for, pick_device
from learner.sampler import LogUniformSampler
from xdm.model_config import ModelConfig

from model_inputs import TINY, item, sample

SAMPLES = [
    sample(short=[1, 2, 3], long=[4, 5], unclicked=[6], labels=[7, 8]),
    sample(short=[], long=[1, 2, 3, 4, 5, 6], unclicked=[], labels=[9]),  # empty session and window
    sample(short=[2], long=[], unclicked=[7, 8, 9, 10], labels=[1, 2, 3, 4, 5], profile=(("age", "40"),)),
]


def build(name: str = "xdm", samples=SAMPLES, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = config_for(name, **{**TINY, **overrides})
    vocab = Vocabulary(cfg.profile_field_names)
    batch = collate(samples, vocab, grow=True)
    return XDM(cfg, vocab.sizes()), vocab, batch


# --- config


def test_variants_follow_tables_2_and_3():
    on_sdm = {name for name, switches in VARIANTS.items() if switches["base"] == "sdm"}
    assert on_sdm == {"sdm", "xdm_wo_conf_metric", "xdm_wo_metric", "xdm_wo_fusion_sym",
                      "xdm_wo_sym", "xdm", "unclk_lab", "lab_clk", "unclk_clk"}  # the other bases: test_bases.py
    sw = lambda n: (lambda c: (c.use_unclicked, c.fusion, c.triplet))(config_for(n))  # noqa: E731
    assert sw("sdm") == (False, "none", "none")
    assert sw("xdm_wo_conf_metric") == (True, "simple", "none")  # eq. 6
    assert sw("xdm_wo_metric") == (True, "confidence", "none")  # eq. 8
    assert sw("xdm_wo_fusion_sym") == (True, "none", "asymmetric")  # eq. 4, z = h
    assert sw("xdm_wo_sym") == (True, "confidence", "asymmetric")
    assert sw("xdm") == (True, "confidence", "symmetric")  # eqs. 5 + 8
    assert sw("unclk_clk") == (True, "confidence", "unclk_clk")
    assert config_for("xdm") == ModelConfig()  # the defaults are the full model
    assert config_for("sdm", embed_dim=16).embed_dim == 16


def test_config_rejects_inconsistent_switches():
    with pytest.raises(ValueError, match="unknown model variant"):
        config_for("sdm++")
    with pytest.raises(ValueError, match="fusion"):
        ModelConfig(fusion="sum")
    with pytest.raises(ValueError, match="triplet"):
        ModelConfig(triplet="quad")
    with pytest.raises(ValueError, match="use_unclicked"):
        ModelConfig(use_unclicked=False, fusion="simple", triplet="none")
    with pytest.raises(ValueError, match="use_unclicked"):
        ModelConfig(use_unclicked=False, fusion="none", triplet="symmetric")
    with pytest.raises(ValueError, match="n_heads"):
        ModelConfig(embed_dim=10, n_heads=4)
    with pytest.raises(ValueError, match="identifier"):
        ModelConfig(profile_fields="a.b")


# --- shapes, masks, equations


def test_forward_shapes_with_ragged_and_empty_windows_are_finite():
    model, vocab, batch = build()
    model.eval()
    out = model(batch)
    for v in out:
        assert v.shape == (3, 8) and torch.isfinite(v).all()
    assert model.user_vector(batch).shape == (3, 8)
    scores = model.full_sort_predict(batch)
    assert scores.shape == (3, vocab.size("item")) == (3, model.n_items)
    assert torch.isneginf(scores[:, 0]).all()
    assert torch.allclose(scores[:, 1:], out.z @ model.item_vectors()[1:].T)


def test_sdm_outputs_have_no_n_and_no_c():
    model, _, batch = build("sdm")
    out = model(batch)
    assert out.n is None and out.c is None and torch.equal(out.z, out.h)


def test_a_users_vector_does_not_depend_on_padding_or_batch_mates():
    model, vocab, batch = build()
    model.eval()
    together = model.user_vector(batch)
    for i, s in enumerate(SAMPLES):
        alone = model.user_vector(collate([s], vocab, grow=False))
        assert torch.allclose(alone[0], together[i], atol=1e-6)


def test_empty_unclicked_window_gives_tanh_of_the_bias():
    model, _, batch = build()
    model.eval()
    out = model(batch)
    assert torch.allclose(out.n[1], torch.tanh(model.unclicked.ffn.bias))


def test_unclicked_encoder_eq3_masked_mean_by_hand():
    enc = UnclickedEncoder(2)
    with torch.no_grad():
        enc.ffn.weight.copy_(torch.eye(2))
        enc.ffn.bias.zero_()
    q = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # third position is padding
    n = enc(q, torch.tensor([[True, True, False]]))
    assert torch.allclose(n, torch.tanh(torch.tensor([[2.0, 3.0]])))


def test_simple_fusion_is_eq6():
    model, _, batch = build("xdm_wo_conf_metric")
    out = model(batch)
    assert torch.allclose(out.z, out.h - out.n)


def test_confidence_fusion_eqs_7_8_by_hand():
    fusion = ConfidenceFusion(2)
    with torch.no_grad():
        fusion.confidence.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]]))
        fusion.confidence.bias.copy_(torch.tensor([0.0, -1.0]))
    h, n = torch.tensor([[2.0, 1.0]]), torch.tensor([[4.0, 0.5]])
    g = torch.sigmoid(torch.tensor([[2.0, 2 * 0.5 - 1.0]]))  # eq. 7 (sigmoid per §4.3)
    assert torch.allclose(fusion(h, n), h - g * n)  # eq. 8
    model, _, batch = build("xdm")
    out = model(batch)
    assert torch.allclose(out.z, model.confidence(out.h, out.n))


def test_gate_bias_shift_moves_only_the_initial_gate_bias():
    torch.manual_seed(3)
    plain = ConfidenceFusion(4)
    torch.manual_seed(3)
    shifted = ConfidenceFusion(4, bias_shift=-4.0)
    assert torch.equal(plain.confidence.weight, shifted.confidence.weight)
    assert torch.allclose(shifted.confidence.bias, plain.confidence.bias - 4.0)
    h, n = torch.randn(3, 4), torch.randn(3, 4)
    # G = sigmoid(W[h; n] + b) near 0: z starts near h instead of near h - n / 2
    assert (shifted(h, n) - h).abs().max() < 0.2 * (plain(h, n) - h).abs().max()


@pytest.mark.parametrize("base", ["sdm", "sasrec", "gru4rec", "hstu"])
def test_a_learned_fusion_gain_scales_the_unclicked_term_and_learns(base):
    variant = "xdm" if base == "sdm" else f"xdm-{base}"
    torch.manual_seed(0)
    plain, _, batch = build(variant)
    gained, _, _ = build(variant, learned_fusion_gain=0.1)
    assert plain.fusion_gain is None
    assert set(gained.state_dict()) - set(plain.state_dict()) == {"fusion_gain"}
    gained.load_state_dict({**plain.state_dict(), "fusion_gain": torch.tensor(0.1)})
    out, ref = gained(batch), plain(batch)
    assert torch.allclose(out.z, ref.h + 0.1 * (ref.z - ref.h), atol=1e-6)  # h - a · G ⊙ n, a = 0.1
    out.z.pow(2).sum().backward()
    assert gained.fusion_gain.grad is not None and gained.fusion_gain.grad.abs() > 0


def test_a_learned_fusion_gain_is_off_without_fusion_and_refuses_negatives():
    model, _, _ = build("xdm_wo_fusion_sym", learned_fusion_gain=0.1)
    assert model.fusion_gain is None
    with pytest.raises(ValueError, match="learned_fusion_gain"):
        config_for("xdm", learned_fusion_gain=-0.1)


def test_without_fusion_the_user_vector_is_h():
    model, _, batch = build("xdm_wo_fusion_sym")
    out = model(batch)
    assert torch.equal(out.z, out.h) and out.n is not None and out.c is not None


def test_sdm_ignores_the_unclicked_window_and_xdm_does_not():
    for name, should_change in (("sdm", False), ("xdm", True), ("xdm_wo_fusion_sym", False)):
        model, vocab, batch = build(name)
        model.eval()
        other = dataclasses.replace(batch, unclicked=batch.labels, unclicked_len=batch.label_len)
        same = torch.allclose(model.user_vector(batch), model.user_vector(other))
        assert same is not should_change, name


def test_user_vector_works_without_labels():
    model, vocab, _ = build()
    model.eval()
    batch = collate([sample(short=[1], unclicked=[2])], vocab, grow=False)
    assert batch.label_len.tolist() == [0]
    z = model.user_vector(batch)
    assert z.shape == (1, 8) and torch.isfinite(z).all()


# --- losses and gradients


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_builds_and_its_loss_and_gradients_are_finite(name):
    model, vocab, batch = build(name, dropout=0.1)
    parts = model.calculate_loss(batch, LogUniformSampler(vocab.counts), torch.Generator().manual_seed(0))
    assert all(torch.isfinite(p) for p in parts)
    assert parts.total.item() == pytest.approx((parts.ce + model.cfg.triplet_weight * parts.triplet).item())
    assert (parts.triplet.item() == 0.0) == (model.cfg.triplet == "none")
    parts.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name, overrides", [
    ("xdm", {}), ("sdm", {}), ("xdm_wo_fusion_sym", {}), ("xdm", {"share_label_encoder": False}),
    ("xdm", {"tie_item_embeddings": True}),
])
def test_gradient_reaches_every_parameter(name, overrides):
    model, vocab, batch = build(name, **overrides)
    assert (model.label_encoder is not None) == (overrides.get("share_label_encoder") is False)
    model.calculate_loss(batch, LogUniformSampler(vocab.counts), torch.Generator().manual_seed(0)).total.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or float(p.grad.abs().sum()) == 0.0]
    assert dead == []
    if name == "sdm":
        assert not any("unclicked" in n or "confidence" in n for n, _ in model.named_parameters())


def test_tied_item_embeddings_are_one_table_that_grows_once():
    model, vocab, batch = build("xdm", tie_item_embeddings=True)
    assert model.item_out is model.embed.tables["item"]
    rows = model.n_items
    model.grow_to({"item": rows + 3})
    assert model.n_items == rows + 3 == model.embed.tables["item"].num_embeddings
    names = [n for n, _ in model.named_parameters()]
    assert "item_out.weight" not in names  # one Parameter, optimised once


def test_triplet_weight_ramps_in_over_the_warmup_steps():
    model, vocab, batch = build("xdm", triplet_weight=10.0, triplet_warmup_steps=4)
    assert [model.triplet_weight_at(s) for s in (0, 1, 3, 10, None)] == [2.5, 5.0, 10.0, 10.0, 10.0]
    parts = model.calculate_loss(batch, LogUniformSampler(vocab.counts), torch.Generator().manual_seed(0), step=0)
    assert parts.total.item() == pytest.approx((parts.ce + 2.5 * parts.triplet).item())
    no_warmup, _, _ = build("xdm", triplet_weight=10.0)
    assert no_warmup.triplet_weight_at(0) == 10.0
    with pytest.raises(ValueError, match="triplet_warmup_steps"):
        config_for("xdm", triplet_warmup_steps=-1)


def test_triplet_ignores_users_without_unclicked_items():
    model, vocab, batch = build("xdm")
    no_unclicked = dataclasses.replace(batch, unclicked_len=torch.zeros_like(batch.unclicked_len))
    parts = model.calculate_loss(no_unclicked, LogUniformSampler(vocab.counts), torch.Generator().manual_seed(0))
    assert parts.triplet.item() == 0.0 and parts.ce.item() > 0.0


def test_loss_survives_a_vocabulary_that_grew_after_the_sampler():
    model, vocab, _ = build("xdm")
    sampler = LogUniformSampler(vocab.counts)
    batch = collate([sample(short=[1], unclicked=[2], labels=[50, 51])], vocab, grow=True)
    model.grow_to(vocab.sizes())
    parts = model.calculate_loss(batch, sampler, torch.Generator().manual_seed(0))
    assert torch.isfinite(parts.total)


def _train(seed: int) -> dict[str, torch.Tensor]:
    model, vocab, batch = build("xdm", seed=seed, dropout=0.1)
    sampler = LogUniformSampler(vocab.counts)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model.calculate_loss(batch, sampler, gen).total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    return model.state_dict()


def test_training_is_deterministic_under_a_seed_on_cpu():
    a, b = _train(11), _train(11)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = _train(12)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# --- growth and checkpoints


def test_growing_keeps_old_rows_and_the_parameter_objects():
    model, vocab, _ = build()
    item_param, out_param = model.embed.tables["item"].weight, model.item_out.weight
    old_items, old_out = item_param.detach().clone(), out_param.detach().clone()
    rows = vocab.size("item")
    collate([sample(short=[100, 101], labels=[102])], vocab, grow=True)
    assert model.grow_to(vocab.sizes()) is True
    assert model.grow_to(vocab.sizes()) is False
    assert model.embed.tables["item"].weight is item_param and model.item_out.weight is out_param
    assert item_param.shape[0] == out_param.shape[0] == model.n_items == rows + 3
    assert model.embed.tables["item"].num_embeddings == rows + 3
    assert torch.equal(item_param[:rows], old_items) and torch.equal(out_param[:rows], old_out)
    assert item_param[rows:].abs().sum().item() > 0 and item_param[0].abs().sum().item() == 0
    model.embed.grow("leaf", 2)
    assert model.embed.tables["leaf"].num_embeddings == vocab.size("leaf") + 2


def test_state_dict_round_trip_into_a_fresh_model_grows_it_first():
    model, vocab, batch = build()
    collate([sample(short=[200], labels=[201])], vocab, grow=True)
    model.grow_to(vocab.sizes())
    model.eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = XDM(model.cfg)  # every table has just the padding row
    fresh.load_state_dict(torch.load(buf))
    fresh.eval()
    assert fresh.n_items == model.n_items
    assert torch.equal(fresh.user_vector(batch), model.user_vector(batch))
    assert torch.equal(fresh.item_vectors(), model.item_vectors())


def test_sizes_must_match_the_configured_profile_fields():
    with pytest.raises(ValueError, match="profile_fields"):
        XDM(config_for("xdm", **{**TINY, "profile_fields": "age"}), {"profile:gender": 3})


def test_pick_device_prefers_cuda_only_when_present():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == expected
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")
